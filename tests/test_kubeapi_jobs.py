"""The test server's JobController: Jobs whose pods run their real commands on this host.

Everything goes through the official client (BatchV1Api/CoreV1Api, watches, log follow); the
host side is checked through the directories PVCs are mapped to and the processes' PIDs.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client import ApiClient

from tests.kubeapi import JobController, KubeAPIServer, kube_api_server
from tests.kubeapi.jobs import format_indexes
from tests.kubeapi.kubelet import expand, isolation_mode

NS = "tenant-media"
Obj = dict[str, Any]
Claims = dict[tuple[str, str], Path]
MANAGED = {"app.kubernetes.io/managed-by": "migrator"}
needs_namespaces = pytest.mark.skipif(
    isolation_mode() != "namespace", reason="needs root with CAP_SYS_ADMIN for mount namespaces"
)


# --- builders ------------------------------------------------------------------------------------


def node(name: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def claim_volume(name: str, claim: str, read_only: bool = False) -> Obj:
    source: Obj = {"claimName": claim, **({"readOnly": True} if read_only else {})}
    return {"name": name, "persistentVolumeClaim": source}


def mount(name: str, path: str, read_only: bool = False) -> Obj:
    return {"name": name, "mountPath": path, **({"readOnly": True} if read_only else {})}


def job(
    name: str,
    script: str,
    *,
    volumes: list[Obj] | None = None,
    mounts: list[Obj] | None = None,
    env: list[Obj] | None = None,
    container: Obj | None = None,
    pod: Obj | None = None,
    **spec: Any,
) -> Obj:
    """A Job whose single container runs ``sh -c script``; backoffLimit 0 unless given.

    The script is a container command: the kubelet turns ``$$`` into ``$`` (``$$$$`` is the
    shell's PID) and expands ``$(VAR)`` from the container's env.
    """
    main = {
        "name": "main",
        "image": "ghcr.io/example/agent:1.0",
        "command": ["sh", "-c", script],
        "env": env or [],
        "volumeMounts": mounts or [],
        **(container or {}),
    }
    template = {
        "metadata": {"labels": MANAGED},
        "spec": {
            "restartPolicy": "Never",
            "containers": [main],
            "volumes": volumes or [],
            **(pod or {}),
        },
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": MANAGED},
        "spec": {"backoffLimit": 0, **spec, "template": template},
    }


# --- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture
def claims() -> Claims:
    return {}


@pytest.fixture
def controller(claims: Claims) -> JobController:
    return JobController(claims)


@pytest.fixture
def api(tmp_path: Path, controller: JobController) -> Iterator[KubeAPIServer]:
    with kube_api_server(tmp_path / "api") as server:
        server.seed(
            [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
                node("worker-1"),
                node("worker-2"),
            ]
        )
        server.add_controller(controller)
        yield server


@pytest.fixture
def k8s(api: KubeAPIServer) -> Iterator[ApiClient]:
    api_client = api.api_client()
    yield api_client
    api_client.close()


@pytest.fixture
def batch(k8s: ApiClient) -> client.BatchV1Api:
    return client.BatchV1Api(k8s)


@pytest.fixture
def core(k8s: ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(k8s)


def add_claim(
    claims: Claims,
    tmp_path: Path,
    name: str,
    files: dict[str, str] | None = None,
    namespace: str = NS,
) -> Path:
    """Map claim ``name`` to a new directory holding ``files``."""
    directory = tmp_path / "claims" / name
    directory.mkdir(parents=True)
    for relative, text in (files or {}).items():
        (directory / relative).write_text(text)
    claims[(namespace, name)] = directory
    return directory


def finished(job_object: Any) -> str | None:
    conditions = job_object.status.conditions or []
    return next(
        (c.type for c in conditions if c.type in ("Complete", "Failed") and c.status == "True"),
        None,
    )


def wait_for_job(batch: client.BatchV1Api, name: str, timeout: int = 15) -> Any:
    """Watch the Job until it is Complete or Failed; returns it."""
    stream = watch.Watch()
    for event in stream.stream(
        batch.list_namespaced_job,
        NS,
        timeout_seconds=timeout,
        field_selector=f"metadata.name={name}",
    ):
        if finished(event["object"]):
            stream.stop()
            return event["object"]
    pytest.fail(f"Job {name} did not finish within {timeout}s")


def pods_of(core: client.CoreV1Api, name: str) -> list[Any]:
    pods = core.list_namespaced_pod(NS, label_selector=f"job-name={name}").items
    return sorted(pods, key=lambda p: (p.metadata.creation_timestamp, p.metadata.name))


def log_of(core: client.CoreV1Api, pod: Any) -> str:
    text: str = core.read_namespaced_pod_log(pod.metadata.name, NS)
    return text


def condition_types(job_object: Any) -> list[tuple[str, str, str]]:
    return [(c.type, c.status, c.reason) for c in job_object.status.conditions]


def stored_pods(api: KubeAPIServer, job_name: str) -> list[Obj]:
    """The Job's pods straight from the store: ``api.wait_for`` predicates run under the store
    lock, so they must not go through HTTP."""
    return [
        p
        for p in api.list_objects("v1", "Pod", NS)
        if p["metadata"]["labels"].get("job-name") == job_name
    ]


def wait_for_log(api: KubeAPIServer, core: client.CoreV1Api, job_name: str, text: str) -> Any:
    """The Job's first pod, once ``text`` appeared in its log."""
    api.wait_for(
        lambda: any(
            text in (api.store.read_log(NS, p["metadata"]["name"], "main") or "")
            for p in stored_pods(api, job_name)
        )
    )
    return pods_of(core, job_name)[0]


def wait_until_gone(pid: int, timeout: float = 10.0) -> bool:
    """Wait for process ``pid`` to exit (a pidfd becomes readable); True if it did."""
    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([descriptor], [], [], timeout)[0])
    finally:
        os.close(descriptor)


# --- the happy path: volumes, pod shape, status ---------------------------------------------------


def test_job_copies_a_mapped_claim_through_an_empty_dir(
    api: KubeAPIServer,
    claims: Claims,
    batch: client.BatchV1Api,
    core: client.CoreV1Api,
    tmp_path: Path,
) -> None:
    add_claim(claims, tmp_path, "sonarr-config", {"config.xml": "<ApiKey>abc</ApiKey>\n"})
    dest = add_claim(claims, tmp_path, "sonarr-copy")
    host_had_mnt_source = Path("/mnt/source").exists()
    script = (
        "cp /mnt/source/config.xml /scratch/ && cat /scratch/config.xml && "
        "cp /scratch/config.xml /mnt/dest/copied.xml && echo copied"
    )
    batch.create_namespaced_job(
        NS,
        job(
            "copy-config",
            script,
            volumes=[
                claim_volume("source", "sonarr-config", read_only=True),
                claim_volume("dest", "sonarr-copy"),
                {"name": "scratch", "emptyDir": {}},
            ],
            mounts=[
                mount("source", "/mnt/source", read_only=True),
                mount("dest", "/mnt/dest"),
                mount("scratch", "/scratch"),
            ],
        ),
    )

    done = wait_for_job(batch, "copy-config")

    assert finished(done) == "Complete"
    assert condition_types(done) == [
        ("SuccessCriteriaMet", "True", "CompletionsReached"),
        ("Complete", "True", "CompletionsReached"),
    ]
    assert (done.status.succeeded, done.status.failed, done.status.active) == (1, None, None)
    assert done.status.start_time and done.status.completion_time
    [pod] = pods_of(core, "copy-config")
    assert pod.metadata.name.startswith("copy-config-") and len(pod.metadata.name) == 17
    assert (
        pod.metadata.labels["job-name"]
        == pod.metadata.labels["batch.kubernetes.io/job-name"]
        == "copy-config"
    )
    assert pod.metadata.labels["controller-uid"] == done.metadata.uid
    assert pod.metadata.labels["app.kubernetes.io/managed-by"] == "migrator"
    [owner] = pod.metadata.owner_references
    assert (owner.kind, owner.name, owner.controller) == ("Job", "copy-config", True)
    assert pod.spec.node_name == "worker-1"
    assert pod.status.phase == "Succeeded"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert log_of(core, pod) == "<ApiKey>abc</ApiKey>\ncopied\n"
    assert (dest / "copied.xml").read_text() == "<ApiKey>abc</ApiKey>\n"
    assert Path("/mnt/source").exists() == host_had_mnt_source


def test_containers_see_only_their_own_environment(
    api: KubeAPIServer,
    batch: client.BatchV1Api,
    core: client.CoreV1Api,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-the-test-process")
    monkeypatch.setenv("RCLONE_CONFIG_DEST_TYPE", "s3")
    batch.create_namespaced_job(NS, job("show-env", "env | sort"))

    assert finished(wait_for_job(batch, "show-env")) == "Complete"
    [pod] = pods_of(core, "show-env")
    env = dict(line.split("=", 1) for line in log_of(core, pod).splitlines())
    assert not [k for k in env if k.startswith(("AWS_", "RCLONE_", "PYTHON", "PYTEST"))]
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert (env["HOME"], env["LANG"], env["HOSTNAME"]) == ("/root", "C.UTF-8", pod.metadata.name)


def test_env_from_secrets_fields_and_expansion(
    api: KubeAPIServer, batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    core.create_namespaced_secret(
        NS, {"metadata": {"name": "bucket-media-creds"}, "stringData": {"accessKey": "AKIA123"}}
    )
    core.create_namespaced_config_map(
        NS, {"metadata": {"name": "settings"}, "data": {"region": "eu-1"}}
    )
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {
                                "key": "kubernetes.io/hostname",
                                "operator": "In",
                                "values": ["worker-2"],
                            }
                        ]
                    }
                ]
            }
        }
    }
    env = [
        {
            "name": "ACCESS",
            "valueFrom": {"secretKeyRef": {"name": "bucket-media-creds", "key": "accessKey"}},
        },
        {"name": "REGION", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "region"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "GREETING", "value": "hello-$(POD)-$(LATER)"},
        {"name": "LATER", "value": "defined-after"},
    ]
    container = {
        "command": ["printf", "%s\\n"],
        "args": [
            "$(ACCESS)",
            "$(REGION)",
            "$(NAMESPACE)",
            "$(NODE)",
            "$(GREETING)",
            "$$(POD)",
            "$(UNKNOWN)",
            "cost: $5",
        ],
    }
    batch.create_namespaced_job(
        NS, job("show-values", "", env=env, container=container, pod={"affinity": affinity})
    )

    assert finished(wait_for_job(batch, "show-values")) == "Complete"
    [pod] = pods_of(core, "show-values")
    assert pod.spec.node_name == "worker-2"
    assert log_of(core, pod).splitlines() == [
        "AKIA123",
        "eu-1",
        NS,
        "worker-2",
        f"hello-{pod.metadata.name}-$(LATER)",
        "$(POD)",
        "$(UNKNOWN)",
        "cost: $5",
    ]


@pytest.mark.parametrize(
    ("text", "expanded"),
    [
        ("$(A)/$(B)", "1/2"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$1"),
        ("$(MISSING)", "$(MISSING)"),
        ("$(A", "$(A"),
        ("a$", "a$"),
        ("$x$(A)", "$x1"),
        ("$()", "$()"),
    ],
)
def test_expand_matches_the_kubelet(text: str, expanded: str) -> None:
    assert expand(text, {"A": "1", "B": "2"}) == expanded


@pytest.mark.parametrize(
    ("case", "container", "reason", "message"),
    [
        (
            "missing-command",
            {"command": ["no-such-agent"]},
            "StartError",
            'exec: "no-such-agent": executable file not found in $PATH',
        ),
    ],
)
def test_a_container_that_cannot_start_fails_its_pod_clearly(
    api: KubeAPIServer,
    batch: client.BatchV1Api,
    core: client.CoreV1Api,
    case: str,
    container: Obj,
    reason: str,
    message: str,
) -> None:
    batch.create_namespaced_job(NS, job(case, "true", container=container))

    done = wait_for_job(batch, case)

    assert finished(done) == "Failed" and done.status.failed == 1
    [pod] = pods_of(core, case)
    terminated = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, terminated.reason, terminated.exit_code) == ("Failed", reason, 128)
    assert message in terminated.message
    assert log_of(core, pod) == f"Error: {message}\n"


def test_a_missing_env_secret_keeps_the_pod_waiting_in_create_container_config_error(
    api: KubeAPIServer, batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    ref = {"secretKeyRef": {"name": "bucket-gone", "key": "accessKey"}}
    container = {"env": [{"name": "KEY", "valueFrom": ref}]}
    batch.create_namespaced_job(NS, job("missing-secret", "true", container=container))

    def waiting() -> Obj:
        pods = stored_pods(api, "missing-secret")
        statuses = (pods[0].get("status") or {}).get("containerStatuses") if pods else None
        return dict(((statuses or [{}])[0].get("state") or {}).get("waiting") or {})

    api.wait_for(lambda: waiting().get("reason") == "CreateContainerConfigError", timeout=15)
    assert waiting()["message"] == 'secret "bucket-gone" not found'
    [pod] = pods_of(core, "missing-secret")
    assert pod.status.phase == "Pending"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bucket-gone"},
              "stringData": {"accessKey": "k"}}  # fmt: skip
    core.create_namespaced_secret(NS, secret)
    assert finished(wait_for_job(batch, "missing-secret")) == "Complete"


# --- mounts ---------------------------------------------------------------------------------------


@needs_namespaces
def test_read_only_mounts_refuse_writes(
    api: KubeAPIServer,
    claims: Claims,
    batch: client.BatchV1Api,
    core: client.CoreV1Api,
    tmp_path: Path,
) -> None:
    by_mount = add_claim(claims, tmp_path, "by-mount", {"keep": "1"})
    by_claim = add_claim(claims, tmp_path, "by-claim", {"keep": "1"})
    writable = add_claim(claims, tmp_path, "writable")
    marker = f"kubeapi-jobs-{os.getpid()}-marker"
    script = (
        "for dir in /mnt/by-mount /mnt/by-claim /mnt/writable /tmp; do "
        f'touch $dir/{marker} 2>/dev/null; echo "$dir $?"; done'
    )
    batch.create_namespaced_job(
        NS,
        job(
            "read-only",
            script,
            volumes=[
                claim_volume("by-mount", "by-mount"),
                claim_volume("by-claim", "by-claim", True),
                claim_volume("writable", "writable"),
                {"name": "tmp", "emptyDir": {}},
            ],
            mounts=[
                mount("by-mount", "/mnt/by-mount", read_only=True),
                mount("by-claim", "/mnt/by-claim"),
                mount("writable", "/mnt/writable"),
                mount("tmp", "/tmp"),
            ],
        ),
    )

    assert finished(wait_for_job(batch, "read-only")) == "Complete"
    [pod] = pods_of(core, "read-only")
    assert log_of(core, pod).splitlines() == [
        "/mnt/by-mount 1",
        "/mnt/by-claim 1",
        "/mnt/writable 0",
        "/tmp 0",
    ]
    assert [p.name for p in by_mount.iterdir()] == [p.name for p in by_claim.iterdir()] == ["keep"]
    assert (writable / marker).exists()
    assert not (Path("/tmp") / marker).exists()  # the container's /tmp was its own emptyDir


@needs_namespaces
def test_a_volume_nested_in_another_gets_its_mountpoint_off_the_host(
    api: KubeAPIServer,
    claims: Claims,
    batch: client.BatchV1Api,
    core: client.CoreV1Api,
    tmp_path: Path,
) -> None:
    outer = add_claim(claims, tmp_path, "outer", {"kept": "1"})
    script = "echo cached > /data/cache/file && ls /data && ls /data/cache"
    batch.create_namespaced_job(
        NS,
        job(
            "nested",
            script,
            volumes=[
                claim_volume("data", "outer", read_only=True),
                {"name": "cache", "emptyDir": {}},
            ],
            mounts=[mount("cache", "/data/cache"), mount("data", "/data")],
        ),
    )

    assert finished(wait_for_job(batch, "nested")) == "Complete"
    [pod] = pods_of(core, "nested")
    assert log_of(core, pod).splitlines() == ["cache", "kept", "file"]
    assert [p.name for p in outer.iterdir()] == ["kept"]


@needs_namespaces
def test_read_only_root_filesystem_leaves_only_volumes_writable(
    api: KubeAPIServer, batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    # /scratch does not exist on the host: "/" gets a tmpfs shadow, which must be read-only too.
    script = (
        'touch /etc/kubeapi-x 2>/dev/null; echo "etc $?"; touch /tmp/x 2>/dev/null; '
        'echo "tmp $?"; touch /x 2>/dev/null; echo "root $?"; touch /scratch/x; '
        'echo "scratch $?"'
    )
    batch.create_namespaced_job(
        NS,
        job(
            "read-only-root",
            script,
            volumes=[{"name": "scratch", "emptyDir": {}}],
            mounts=[mount("scratch", "/scratch")],
            container={"securityContext": {"readOnlyRootFilesystem": True}},
        ),
    )

    assert finished(wait_for_job(batch, "read-only-root")) == "Complete"
    [pod] = pods_of(core, "read-only-root")
    assert log_of(core, pod).splitlines() == ["etc 1", "tmp 1", "root 1", "scratch 0"]


@needs_namespaces
def test_venv_entry_points_run_under_the_products_container_settings(
    api: KubeAPIServer, batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    # What migrator renders: a read-only root and an emptyDir at /tmp. The venv's scripts (and
    # the interpreter their shebang names, wherever it lives on the host) must still run.
    security = {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
    batch.create_namespaced_job(
        NS,
        job(
            "agent-help",
            "",
            container={"command": ["migrator", "--help"], "securityContext": security},
            volumes=[{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
            mounts=[mount("tmp", "/tmp")],
        ),
    )

    assert finished(wait_for_job(batch, "agent-help")) == "Complete"
    [pod] = pods_of(core, "agent-help")
    assert "Usage: migrator" in log_of(core, pod)


@needs_namespaces
def test_prepended_tools_stay_visible_under_a_tmp_mount(claims: Claims, tmp_path: Path) -> None:
    tools = tmp_path / "bin"  # under /tmp, which the container's emptyDir hides
    tools.mkdir()
    (tools / "fake-rclone").write_text("#!/bin/sh\necho fake rclone $1\n")
    (tools / "fake-rclone").chmod(0o755)
    with kube_api_server(tmp_path / "api") as api:
        api.seed([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}])
        api.add_controller(JobController(claims, path_prepend=[str(tools)]))
        batch = client.BatchV1Api(api.api_client())
        batch.create_namespaced_job(
            NS,
            job(
                "fake-tool",
                "fake-rclone version && touch /tmp/scratch",
                volumes=[{"name": "tmp", "emptyDir": {}}],
                mounts=[mount("tmp", "/tmp")],
            ),
        )
        assert finished(wait_for_job(batch, "fake-tool")) == "Complete"
        [pod] = api.list_objects("v1", "Pod", NS)
        assert api.store.read_log(NS, pod["metadata"]["name"], "main") == "fake rclone version\n"


def test_rewrite_mode_maps_paths_to_host_directories(claims: Claims, tmp_path: Path) -> None:
    source = add_claim(claims, tmp_path, "source", {"a.txt": "data\n"})
    dest = add_claim(claims, tmp_path, "dest")
    with kube_api_server(tmp_path / "api") as api:
        api.seed([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}])
        api.add_controller(JobController(claims, isolation="rewrite"))
        batch = client.BatchV1Api(api.api_client())
        # Only whole arguments and env values starting with a mount path are rewritten.
        batch.create_namespaced_job(
            NS,
            job(
                "rewrite",
                'cp "$1" "$TARGET" && echo "$TARGET"',
                container={"args": ["sh", "/mnt/source/a.txt"]},
                env=[{"name": "TARGET", "value": "/mnt/dest/b.txt"}],
                volumes=[claim_volume("source", "source"), claim_volume("dest", "dest")],
                mounts=[mount("source", "/mnt/source"), mount("dest", "/mnt/dest")],
            ),
        )
        assert finished(wait_for_job(batch, "rewrite")) == "Complete"
        [pod] = api.list_objects("v1", "Pod", NS)
        assert api.store.read_log(NS, pod["metadata"]["name"], "main") == f"{dest}/b.txt\n"
    assert (dest / "b.txt").read_text() == (source / "a.txt").read_text()


def test_an_unmapped_claim_keeps_the_pod_pending_until_it_is_mapped(
    api: KubeAPIServer,
    claims: Claims,
    batch: client.BatchV1Api,
    core: client.CoreV1Api,
    tmp_path: Path,
) -> None:
    batch.create_namespaced_job(
        NS,
        job(
            "late-claim",
            "cat /data/hello",
            volumes=[claim_volume("data", "radarr-config")],
            mounts=[mount("data", "/data")],
        ),
    )
    api.wait_for(
        lambda: any(e["reason"] == "FailedMount" for e in api.list_objects("v1", "Event", NS))
    )
    [pod] = pods_of(core, "late-claim")
    assert pod.status.phase == "Pending"
    assert pod.status.container_statuses[0].state.waiting.reason == "ContainerCreating"
    [event] = [e for e in core.list_namespaced_event(NS).items if e.reason == "FailedMount"]
    assert "radarr-config" in event.message and event.involved_object.name == pod.metadata.name

    add_claim(claims, tmp_path, "radarr-config", {"hello": "mounted late\n"})

    assert finished(wait_for_job(batch, "late-claim")) == "Complete"
    assert log_of(core, pod) == "mounted late\n"


# --- Job semantics --------------------------------------------------------------------------------


def test_indexed_job_runs_each_index_once_with_bounded_parallelism(
    api: KubeAPIServer,
    claims: Claims,
    batch: client.BatchV1Api,
    core: client.CoreV1Api,
    tmp_path: Path,
) -> None:
    out = add_claim(claims, tmp_path, "shards")
    # Indexes 0 and 1 wait for each other: the Job only finishes if two pods run at once.
    script = (
        'touch /out/started-$JOB_COMPLETION_INDEX; if [ "$JOB_COMPLETION_INDEX" -lt 2 ]; '
        "then while [ $(ls /out | grep -c started) -lt 2 ]; do sleep 0.02; done; fi; "
        'echo "shard $(JOB_COMPLETION_INDEX)/$(SHARDS)" > /out/$JOB_COMPLETION_INDEX'
    )
    batch.create_namespaced_job(
        NS,
        job(
            "copy-shards",
            script,
            completions=3,
            parallelism=2,
            completionMode="Indexed",
            volumes=[claim_volume("out", "shards")],
            mounts=[mount("out", "/out")],
            env=[{"name": "SHARDS", "value": "3"}],
        ),
    )

    active_seen = []
    stream = watch.Watch()
    for event in stream.stream(batch.list_namespaced_job, NS, timeout_seconds=15):
        active_seen.append(event["object"].status.active or 0)
        if finished(event["object"]):
            stream.stop()
            done = event["object"]
            break
    else:
        pytest.fail("the Indexed Job did not finish")

    assert finished(done) == "Complete"
    assert (done.status.completed_indexes, done.status.succeeded) == ("0-2", 3)
    assert max(active_seen) == 2
    assert {p.name: p.read_text() for p in out.iterdir() if p.name.isdigit()} == {
        str(i): f"shard {i}/3\n" for i in range(3)
    }
    pods = pods_of(core, "copy-shards")
    indexes = sorted(
        p.metadata.annotations["batch.kubernetes.io/job-completion-index"] for p in pods
    )
    assert indexes == ["0", "1", "2"]
    for pod in pods:
        index = pod.metadata.annotations["batch.kubernetes.io/job-completion-index"]
        assert pod.metadata.name.startswith(f"copy-shards-{index}-")
        assert pod.spec.hostname == f"copy-shards-{index}"
        assert "JOB_COMPLETION_INDEX" in [e.name for e in pod.spec.containers[0].env]


def test_completed_indexes_format() -> None:
    assert format_indexes([5, 0, 2, 1, 7, 8]) == "0-2,5,7-8"
    assert format_indexes([]) == ""


def test_backoff_limit_fails_the_job_after_limit_plus_one_failed_pods(
    api: KubeAPIServer, batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    batch.create_namespaced_job(NS, job("always-fails", "echo attempt; exit 3", backoffLimit=1))

    done = wait_for_job(batch, "always-fails")

    assert finished(done) == "Failed"
    assert condition_types(done) == [
        ("FailureTarget", "True", "BackoffLimitExceeded"),
        ("Failed", "True", "BackoffLimitExceeded"),
    ]
    assert (done.status.failed, done.status.succeeded, done.status.completion_time) == (
        2,
        None,
        None,
    )
    pods = pods_of(core, "always-fails")
    assert [p.status.container_statuses[0].state.terminated.exit_code for p in pods] == [3, 3]
    assert [log_of(core, p) for p in pods] == ["attempt\n", "attempt\n"]


def test_on_failure_restarts_the_container_in_the_same_pod(
    api: KubeAPIServer,
    claims: Claims,
    batch: client.BatchV1Api,
    core: client.CoreV1Api,
    tmp_path: Path,
) -> None:
    add_claim(claims, tmp_path, "state")
    script = "if [ -e /state/tried ]; then echo second try; else touch /state/tried; exit 1; fi"
    batch.create_namespaced_job(
        NS,
        job(
            "retry-in-place",
            script,
            backoffLimit=2,
            pod={"restartPolicy": "OnFailure"},
            volumes=[claim_volume("state", "state")],
            mounts=[mount("state", "/state")],
        ),
    )

    done = wait_for_job(batch, "retry-in-place")

    assert finished(done) == "Complete" and done.status.failed is None
    [pod] = pods_of(core, "retry-in-place")
    assert pod.status.container_statuses[0].restart_count == 1
    assert log_of(core, pod) == "second try\n"


def test_active_deadline_fails_the_job_and_kills_its_pods(
    api: KubeAPIServer,
    claims: Claims,
    batch: client.BatchV1Api,
    core: client.CoreV1Api,
    tmp_path: Path,
) -> None:
    data = add_claim(claims, tmp_path, "data")
    batch.create_namespaced_job(
        NS,
        job(
            "too-slow",
            "echo $$$$ > /data/pid; exec sleep 60",
            activeDeadlineSeconds=1,
            volumes=[claim_volume("data", "data")],
            mounts=[mount("data", "/data")],
        ),
    )

    done = wait_for_job(batch, "too-slow")

    assert condition_types(done) == [
        ("FailureTarget", "True", "DeadlineExceeded"),
        ("Failed", "True", "DeadlineExceeded"),
    ]
    assert pods_of(core, "too-slow") == []
    assert wait_until_gone(int((data / "pid").read_text()), timeout=0)


def test_suspended_job_starts_when_resumed(
    api: KubeAPIServer, batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    batch.create_namespaced_job(NS, job("later", "echo resumed", suspend=True))
    api.settle()
    suspended = batch.read_namespaced_job_status("later", NS)
    assert condition_types(suspended) == [("Suspended", "True", "JobSuspended")]
    assert pods_of(core, "later") == [] and suspended.status.start_time is None

    batch.patch_namespaced_job("later", NS, {"spec": {"suspend": False}})

    done = wait_for_job(batch, "later")
    assert condition_types(done)[0] == ("Suspended", "False", "JobResumed")
    assert finished(done) == "Complete"


def test_a_pod_no_node_fits_stays_unschedulable(
    api: KubeAPIServer, batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    batch.create_namespaced_job(
        NS, job("pinned", "true", pod={"nodeSelector": {"kubernetes.io/hostname": "worker-9"}})
    )
    api.settle()
    [pod] = pods_of(core, "pinned")
    assert pod.spec.node_name is None and pod.status.phase == "Pending"
    [scheduled] = pod.status.conditions
    assert (scheduled.type, scheduled.status, scheduled.reason) == (
        "PodScheduled",
        "False",
        "Unschedulable",
    )
    assert batch.read_namespaced_job_status("pinned", NS).status.active == 1


def app_pod(name: str, node_name: str, labels: Obj, claim: str | None = None) -> Obj:
    """A running pod of some app on ``node_name`` (not the Job controller's)."""
    spec: Obj = {"nodeName": node_name, "containers": [{"name": "app", "image": "app:1"}]}
    if claim:
        spec["volumes"] = [claim_volume("data", claim)]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": spec,
        "status": {"phase": "Running"},
    }


def affinity(kind: str, labels: Obj) -> Obj:
    term = {"labelSelector": {"matchLabels": labels}, "topologyKey": "kubernetes.io/hostname"}
    if kind == "preferred":
        return {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": term}]}}  # fmt: skip
    return {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}


def test_pod_affinity_places_pods_like_the_scheduler(
    api: KubeAPIServer, batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    api.seed([app_pod("sonarr-0", "worker-2", {"app": "sonarr"})])
    cases = {
        "preferred": (affinity("preferred", {"app": "sonarr"}), "worker-2"),
        "preferred-none": (affinity("preferred", {"app": "radarr"}), "worker-1"),  # any node
        "required": (affinity("required", {"app": "sonarr"}), "worker-2"),
        # no pod matches anywhere, and this one does not match itself: never schedulable
        "required-none": (affinity("required", {"app": "radarr"}), None),
        # ... unless it matches its own term (the first pod of a group)
        "required-self": (affinity("required", MANAGED), "worker-1"),
    }
    for name, (rule, _) in cases.items():
        batch.create_namespaced_job(NS, job(name, "true", pod={"affinity": rule}))
    api.settle()
    for name, (_, expected) in cases.items():
        [pod] = pods_of(core, name)
        assert pod.spec.node_name == expected, name
    [pending] = pods_of(core, "required-none")
    assert pending.status.conditions[0].reason == "Unschedulable"


def test_an_rwo_claim_used_on_another_node_waits_on_multi_attach(
    api: KubeAPIServer, claims: Claims, tmp_path: Path, batch: client.BatchV1Api,
    core: client.CoreV1Api,
) -> None:  # fmt: skip
    add_claim(claims, tmp_path, "config", {"config.xml": "<Config/>"})
    api.seed([
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": "config", "namespace": NS},
         "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pvc-config",
                  "resources": {"requests": {"storage": "1Gi"}}}},
        app_pod("sonarr-0", "worker-2", {"app": "sonarr"}, claim="config"),
    ])  # fmt: skip
    pinned = {"nodeSelector": {"kubernetes.io/hostname": "worker-1"}}
    batch.create_namespaced_job(NS, job(
        "backup", "cat /config/config.xml", pod=pinned,
        volumes=[claim_volume("config", "config", read_only=True)],
        mounts=[mount("config", "/config", read_only=True)],
    ))  # fmt: skip

    def multi_attach() -> bool:
        return any(
            e.get("reason") == "FailedAttachVolume"
            and 'Multi-Attach error for volume "pvc-config"' in e.get("message", "")
            and "used by pod(s) sonarr-0" in e.get("message", "")
            for e in api.list_objects("v1", "Event", NS)
        )

    api.wait_for(multi_attach, timeout=30)
    [pod] = pods_of(core, "backup")
    assert pod.status.phase == "Pending"
    core.delete_namespaced_pod("sonarr-0", NS)  # the app is gone: its volume detaches
    assert finished(wait_for_job(batch, "backup", timeout=30)) == "Complete"
    assert log_of(core, pods_of(core, "backup")[0]) == "<Config/>"


# --- deletion, logs and cleanup -------------------------------------------------------------------


def test_deleting_a_running_pod_kills_it_and_a_replacement_completes(
    api: KubeAPIServer,
    claims: Claims,
    batch: client.BatchV1Api,
    core: client.CoreV1Api,
    tmp_path: Path,
) -> None:
    data = add_claim(claims, tmp_path, "data")
    script = (
        "if [ -e /data/pid ]; then echo replacement; "
        "else echo $$$$ > /data/pid; echo first; exec sleep 60; fi"
    )
    batch.create_namespaced_job(
        NS,
        job(
            "interrupted",
            script,
            backoffLimit=2,
            volumes=[claim_volume("data", "data")],
            mounts=[mount("data", "/data")],
        ),
    )
    wait_for_log(api, core, "interrupted", "first")
    # As with a real kubelet, the log can show up before the Running status is written.
    api.wait_for(
        lambda: (
            [(p.get("status") or {}).get("phase") for p in stored_pods(api, "interrupted")]
            == ["Running"]
        )
    )
    first = pods_of(core, "interrupted")[0]
    assert first.status.phase == "Running"

    core.delete_namespaced_pod(first.metadata.name, NS)

    done = wait_for_job(batch, "interrupted")
    assert finished(done) == "Complete"
    assert (done.status.succeeded, done.status.failed) == (1, 1)
    [replacement] = pods_of(core, "interrupted")
    assert replacement.metadata.name != first.metadata.name
    assert log_of(core, replacement) == "replacement\n"
    assert wait_until_gone(int((data / "pid").read_text()), timeout=0)


@pytest.mark.parametrize("propagation", ["Background", "Foreground"])
def test_deleting_a_job_kills_and_removes_its_pods(
    api: KubeAPIServer,
    claims: Claims,
    batch: client.BatchV1Api,
    core: client.CoreV1Api,
    tmp_path: Path,
    propagation: str,
) -> None:
    data = add_claim(claims, tmp_path, "data")
    batch.create_namespaced_job(
        NS,
        job(
            "doomed",
            "echo $$$$ > /data/pid; echo started; exec sleep 60",
            volumes=[claim_volume("data", "data")],
            mounts=[mount("data", "/data")],
        ),
    )
    wait_for_log(api, core, "doomed", "started")

    batch.delete_namespaced_job("doomed", NS, propagation_policy=propagation)

    assert pods_of(core, "doomed") == []
    assert wait_until_gone(int((data / "pid").read_text()))


def test_pod_log_follows_output_as_it_is_produced(
    api: KubeAPIServer,
    claims: Claims,
    batch: client.BatchV1Api,
    core: client.CoreV1Api,
    tmp_path: Path,
) -> None:
    data = add_claim(claims, tmp_path, "data")
    batch.create_namespaced_job(
        NS,
        job(
            "chatty",
            "echo one; while [ ! -e /data/go ]; do sleep 0.02; done; echo two",
            volumes=[claim_volume("data", "data")],
            mounts=[mount("data", "/data")],
        ),
    )
    api.wait_for(lambda: [p["status"]["phase"] for p in stored_pods(api, "chatty")] == ["Running"])
    [pod] = pods_of(core, "chatty")

    response = core.read_namespaced_pod_log(
        pod.metadata.name, NS, follow=True, _preload_content=False, _request_timeout=15
    )
    lines = []
    with contextlib.closing(response):
        for line in response:
            lines.append(line.decode())
            if line == b"one\n":
                (data / "go").touch()  # the command only goes on once "one" was streamed
    assert lines == ["one\n", "two\n"]
    assert finished(wait_for_job(batch, "chatty")) == "Complete"


def test_stopping_the_server_kills_every_process(claims: Claims, tmp_path: Path) -> None:
    data = add_claim(claims, tmp_path, "data")
    controller = JobController(claims)
    stubborn = (
        "trap '' TERM; echo $$$$ > /data/stubborn; echo started; while :; do sleep 0.05; done"
    )
    with kube_api_server(tmp_path / "api") as api:
        api.seed([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}])
        api.add_controller(controller)
        batch = client.BatchV1Api(api.api_client())
        for name, script, grace in (
            (
                "family",
                "sleep 60 & echo $! > /data/child; echo $$$$ > /data/parent; echo started; wait",
                30,
            ),
            ("stubborn", stubborn, 1),
        ):
            batch.create_namespaced_job(
                NS,
                job(
                    name,
                    script,
                    volumes=[claim_volume("data", "data")],
                    mounts=[mount("data", "/data")],
                    pod={"terminationGracePeriodSeconds": grace},
                ),
            )
        for name in ("family", "stubborn"):  # "started" is logged once the PIDs are written
            wait_for_log(api, client.CoreV1Api(api.api_client()), name, "started")
        pids = [int((data / f).read_text()) for f in ("child", "parent", "stubborn")]
        assert sorted(controller.processes()) == sorted(pids[1:])

    assert all(wait_until_gone(pid) for pid in pids)
    assert controller.processes() == []
    assert not controller.workdir.exists()
