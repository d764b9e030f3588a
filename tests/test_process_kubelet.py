"""The process kubelet on the real control plane: pods the real scheduler binds run as local
processes, the real Job controller sees them finish, and the API server's log proxy (``kubectl
logs``, follow included) reads their output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.controlplane.cluster import Cluster
from tests.helpers import unavailable
from tests.kubelet.pods import expand, isolation_mode
from tests.kubelet.process import Node, ProcessKubelet


@pytest.fixture
def mount_namespaces() -> None:
    """Per-pod mounts need mount namespaces (root with CAP_SYS_ADMIN): without them the test
    skips, except under CI=true, where that is a failure (as a missing control plane is)."""
    if isolation_mode() == "namespace":
        return
    why = "needs root with CAP_SYS_ADMIN (mount namespaces) for per-pod mounts"
    unavailable(why)


needs_namespaces = pytest.mark.usefixtures("mount_namespaces")

Obj = dict[str, Any]
KUBECTL = shutil.which("kubectl") or "kubectl"


def job(name: str, script: str, **spec: Any) -> Obj:
    container = {"name": "main", "image": "busybox:1.36", "command": ["/bin/sh", "-c", script]}
    container.update(spec.pop("container", {}))
    pod_spec: Obj = {"restartPolicy": "Never", "containers": [container], **spec}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": pod_spec}},
    }


def run_job(cluster: Cluster, body: Obj, timeout: float = 60.0) -> Obj:
    body["metadata"]["namespace"] = cluster.namespace
    cluster.seed([body])
    name = body["metadata"]["name"]

    def finished() -> bool:
        found = cluster.get_object("batch/v1", "Job", cluster.namespace, name) or {}
        kinds = {
            c["type"]
            for c in (found.get("status") or {}).get("conditions") or []
            if c["status"] == "True"
        }
        return bool(kinds & {"Complete", "Failed"})

    cluster.wait_for(finished, timeout, f"Job {name} finished")
    return cluster.get_object("batch/v1", "Job", cluster.namespace, name) or {}


def pods_of(cluster: Cluster, job_name: str) -> list[Obj]:
    return cluster.list_objects("v1", "Pod", cluster.namespace, f"job-name={job_name}")


def claim(cluster: Cluster, name: str, storage_class: str = "nfs") -> Obj:
    """A new claim (the kubelet's provisioner gives it a volume)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": cluster.namespace},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": storage_class,
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }


def kubectl(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            KUBECTL,
            "--kubeconfig",
            str(cluster.admin_kubeconfig_path),
            "-n",
            cluster.namespace,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_nodes_are_registered_ready_with_their_hostname_labels(cluster: Cluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in cluster.list_objects("v1", "Node")}
    assert {"worker-1", "worker-2", "worker-3"} <= set(nodes)
    for name in ("worker-1", "worker-2", "worker-3"):
        node = nodes[name]
        assert node["metadata"]["labels"]["kubernetes.io/hostname"] == name
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready[0]["status"] == "True"


def test_the_seeded_apps_run_on_the_nodes(cluster: Cluster) -> None:
    pods = cluster.list_objects("v1", "Pod", cluster.namespace)
    running = {
        p["metadata"]["labels"].get("app.kubernetes.io/name"): p
        for p in pods
        if p["status"]["phase"] == "Running"
    }
    assert {"sonarr", "radarr", "prowlarr"} <= set(running)
    assert running["sonarr"]["spec"]["nodeName"] in ("worker-1", "worker-2", "worker-3")


def test_a_job_completes_with_env_from_a_secret_and_its_log_is_served(cluster: Cluster) -> None:
    cluster.seed(
        [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "creds", "namespace": cluster.namespace},
                "stringData": {"USER": "ada", "token": "s3cr3t"},
            }
        ]
    )
    body = job(
        "hello",
        'echo "user=$USER key=$KEY pod=$POD"',
        container={
            "envFrom": [{"secretRef": {"name": "creds"}}],
            "env": [
                {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ],
        },
    )
    finished = run_job(cluster, body)
    assert finished["status"].get("succeeded") == 1, finished["status"]
    (pod,) = pods_of(cluster, "hello")
    assert pod["status"]["phase"] == "Succeeded"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0
    logs = kubectl(cluster, "logs", "job/hello")
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == f"user=ada key=s3cr3t pod={pod['metadata']['name']}\n"


def test_a_failing_container_reports_its_exit_code_and_fails_the_job(cluster: Cluster) -> None:
    finished = run_job(cluster, job("broken", "echo oops >&2; exit 3"))
    assert finished["status"].get("failed") == 1
    (pod,) = pods_of(cluster, "broken")
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (3, "Error")
    assert kubectl(cluster, "logs", pod["metadata"]["name"]).stdout == "oops\n"


def test_claims_are_host_directories_and_read_only_mounts_refuse_writes(
    cluster: Cluster, tmp_path: Path
) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    target.mkdir()
    (source / "library.txt").write_text("books\n")
    cluster.kubelet.add_claim(cluster.namespace, "media", source)
    cluster.kubelet.add_claim(cluster.namespace, "media-new", target)
    cluster.seed([claim(cluster, "media-new")])
    script = (
        "cp /src/library.txt /dst/ && if touch /src/x 2>/dev/null; then echo writable; "
        "else echo read-only; fi"
    )
    body = job(
        "copy",
        script,
        container={
            "volumeMounts": [
                {"name": "src", "mountPath": "/src", "readOnly": True},
                {"name": "dst", "mountPath": "/dst"},
            ]
        },
        volumes=[
            {"name": "src", "persistentVolumeClaim": {"claimName": "media", "readOnly": True}},
            {"name": "dst", "persistentVolumeClaim": {"claimName": "media-new"}},
        ],
    )
    finished = run_job(cluster, body)
    assert finished["status"].get("succeeded") == 1, finished["status"]
    assert (target / "library.txt").read_text() == "books\n"
    assert sorted(p.name for p in source.iterdir()) == ["library.txt"]
    assert kubectl(cluster, "logs", "job/copy").stdout == "read-only\n"


def test_a_followed_log_streams_while_the_container_runs(cluster: Cluster, tmp_path: Path) -> None:
    """The container prints a line, then waits for a file that the test makes only once it has
    read that line through ``kubectl logs -f``: the line can only have come while it ran."""
    gate = backed_claim(cluster, tmp_path, "gate")
    script = (
        'echo waiting; i=0; while [ ! -e "$GATE" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1));'
        ' done; if [ -e "$GATE" ]; then echo released; else echo gave up; fi'
    )
    container = {
        "env": [{"name": "GATE", "value": "/gate/open"}],
        "volumeMounts": [mount("gate", "/gate")],
    }
    body = job("ticker", script, container=container, volumes=[claim_volume("gate", "gate")])
    body["metadata"]["namespace"] = cluster.namespace
    cluster.seed([body])
    cluster.wait_for(
        lambda: any(p["status"].get("phase") == "Running" for p in pods_of(cluster, "ticker")),
        30,
        "ticker running",
    )
    follow = subprocess.Popen(
        [
            KUBECTL,
            "--kubeconfig",
            str(cluster.admin_kubeconfig_path),
            "-n",
            cluster.namespace,
            "logs",
            "-f",
            "job/ticker",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert follow.stdout is not None
    assert follow.stdout.readline() == "waiting\n"
    (gate / "open").touch()  # only now can the container go on
    assert follow.stdout.read() == "released\n"
    assert follow.wait(timeout=30) == 0


def test_deleting_a_pod_stops_its_process_with_sigterm(cluster: Cluster, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    marker.mkdir()
    cluster.kubelet.add_claim(cluster.namespace, "marker", marker)
    cluster.seed([claim(cluster, "marker", "replicated")])  # WaitForFirstConsumer
    script = "trap 'echo term > /m/got; exit 0' TERM; while true; do sleep 0.1; done"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sleeper", "namespace": cluster.namespace},
        "spec": {
            "terminationGracePeriodSeconds": 30,
            "containers": [
                {
                    "name": "main",
                    "image": "busybox:1.36",
                    "command": ["/bin/sh", "-c", script],
                    "volumeMounts": [{"name": "m", "mountPath": "/m"}],
                }
            ],
            "volumes": [{"name": "m", "persistentVolumeClaim": {"claimName": "marker"}}],
        },
    }
    cluster.seed([pod])
    cluster.wait_for(
        lambda: (
            (cluster.get_object("v1", "Pod", cluster.namespace, "sleeper") or {})
            .get("status", {})
            .get("phase")
            == "Running"
        ),
        30,
        "sleeper running",
    )
    cluster.core.delete_namespaced_pod("sleeper", cluster.namespace)
    cluster.wait_for(
        lambda: cluster.get_object("v1", "Pod", cluster.namespace, "sleeper") is None,
        30,
        "sleeper gone",
    )
    assert (marker / "got").read_text() == "term\n"


# --- what a container sees ------------------------------------------------------------------------


def claim_volume(name: str, claim_name: str, read_only: bool = False) -> Obj:
    source: Obj = {"claimName": claim_name, **({"readOnly": True} if read_only else {})}
    return {"name": name, "persistentVolumeClaim": source}


def mount(name: str, path: str, read_only: bool = False) -> Obj:
    return {"name": name, "mountPath": path, **({"readOnly": True} if read_only else {})}


def backed_claim(
    cluster: Cluster, tmp_path: Path, name: str, files: dict[str, str] | None = None
) -> Path:
    """A new claim backed by a host directory holding ``files``."""
    directory = tmp_path / "claims" / name
    directory.mkdir(parents=True)
    for path, text in (files or {}).items():
        (directory / path).write_text(text)
    cluster.kubelet.add_claim(cluster.namespace, name, directory)
    cluster.seed([claim(cluster, name)])
    return directory


def log_of(cluster: Cluster, pod: Obj) -> str:
    return str(cluster.core.read_namespaced_pod_log(pod["metadata"]["name"], cluster.namespace))


def test_containers_see_only_their_own_environment(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-the-test-process")
    monkeypatch.setenv("RCLONE_CONFIG_DEST_TYPE", "s3")
    assert run_job(cluster, job("show-env", "env | sort"))["status"].get("succeeded") == 1
    [pod] = pods_of(cluster, "show-env")
    env = dict(line.split("=", 1) for line in log_of(cluster, pod).splitlines())
    # Nothing of the test process leaks in; ServiceAccount admission's token is mounted, not set.
    assert not [k for k in env if k.startswith(("AWS_", "RCLONE_", "PYTHON", "PYTEST"))]
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert (env["HOME"], env["HOSTNAME"]) == ("/root", pod["metadata"]["name"])


def test_env_from_config_maps_fields_and_expansion_on_the_node_the_scheduler_chose(
    cluster: Cluster,
) -> None:
    cluster.seed(
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "settings", "namespace": cluster.namespace},
                "data": {"region": "eu-1"},
            }
        ]
    )
    term = {
        "matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["worker-2"]}
        ]
    }
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
        }
    }
    env = [
        {"name": "REGION", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "region"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "GREETING", "value": "hello-$(POD)-$(LATER)"},
        {"name": "LATER", "value": "defined-after"},
    ]
    args = [
        "$(REGION)",
        "$(NAMESPACE)",
        "$(NODE)",
        "$(GREETING)",
        "$$(POD)",
        "$(UNKNOWN)",
        "cost: $5",
    ]
    body = job(
        "show-values",
        "",
        container={"command": ["printf", "%s\\n"], "args": args, "env": env},
        affinity=affinity,
    )
    assert run_job(cluster, body)["status"].get("succeeded") == 1
    [pod] = pods_of(cluster, "show-values")
    assert pod["spec"]["nodeName"] == "worker-2"
    assert log_of(cluster, pod).splitlines() == [
        "eu-1",
        cluster.namespace,
        "worker-2",
        f"hello-{pod['metadata']['name']}-$(LATER)",
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


def test_a_container_that_cannot_start_fails_its_pod_clearly(cluster: Cluster) -> None:
    finished = run_job(cluster, job("no-agent", "", container={"command": ["no-such-agent"]}))
    assert finished["status"].get("failed") == 1
    [pod] = pods_of(cluster, "no-agent")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (pod["status"]["phase"], terminated["reason"], terminated["exitCode"]) == (
        "Failed",
        "StartError",
        128,
    )
    message = 'exec: "no-such-agent": executable file not found in $PATH'
    assert message in terminated["message"]
    assert log_of(cluster, pod) == f"Error: {message}\n"


def test_a_missing_env_secret_keeps_the_pod_waiting_in_create_container_config_error(
    cluster: Cluster,
) -> None:
    ref = {"secretKeyRef": {"name": "bucket-gone", "key": "accessKey"}}
    body = job("missing-secret", "true", container={"env": [{"name": "KEY", "valueFrom": ref}]})
    body["metadata"]["namespace"] = cluster.namespace
    cluster.seed([body])

    def waiting() -> Obj:
        pods = pods_of(cluster, "missing-secret")
        statuses = (pods[0].get("status") or {}).get("containerStatuses") if pods else None
        return dict(((statuses or [{}])[0].get("state") or {}).get("waiting") or {})

    cluster.wait_for(lambda: waiting().get("reason") == "CreateContainerConfigError", 30)
    assert waiting()["message"] == 'secret "bucket-gone" not found'
    assert pods_of(cluster, "missing-secret")[0]["status"]["phase"] == "Pending"
    cluster.seed(
        [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "bucket-gone", "namespace": cluster.namespace},
                "stringData": {"accessKey": "k"},
            }
        ]
    )
    cluster.wait_for(
        lambda: (
            (cluster.get_object("batch/v1", "Job", cluster.namespace, "missing-secret") or {})
            .get("status", {})
            .get("succeeded")
            == 1
        ),
        60,
        "missing-secret completes",
    )


@needs_namespaces
def test_mounts_read_only_by_mount_or_by_claim_and_a_private_tmp(
    cluster: Cluster, tmp_path: Path
) -> None:
    by_mount = backed_claim(cluster, tmp_path, "by-mount", {"keep": "1"})
    by_claim = backed_claim(cluster, tmp_path, "by-claim", {"keep": "1"})
    writable = backed_claim(cluster, tmp_path, "writable")
    marker = f"process-kubelet-{os.getpid()}-marker"
    script = (
        "for dir in /mnt/by-mount /mnt/by-claim /mnt/writable /tmp; do "
        f'touch $dir/{marker} 2>/dev/null; echo "$dir $?"; done'
    )
    volumes = [
        claim_volume("by-mount", "by-mount"),
        claim_volume("by-claim", "by-claim", True),
        claim_volume("writable", "writable"),
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts = [
        mount("by-mount", "/mnt/by-mount", True),
        mount("by-claim", "/mnt/by-claim"),
        mount("writable", "/mnt/writable"),
        mount("tmp", "/tmp"),
    ]
    body = job("read-only", script, container={"volumeMounts": mounts}, volumes=volumes)
    assert run_job(cluster, body)["status"].get("succeeded") == 1
    [pod] = pods_of(cluster, "read-only")
    assert log_of(cluster, pod).splitlines() == [
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
    cluster: Cluster, tmp_path: Path
) -> None:
    outer = backed_claim(cluster, tmp_path, "outer", {"kept": "1"})
    body = job(
        "nested",
        "echo cached > /data/cache/file && ls /data && ls /data/cache",
        container={"volumeMounts": [mount("cache", "/data/cache"), mount("data", "/data")]},
        volumes=[claim_volume("data", "outer", True), {"name": "cache", "emptyDir": {}}],
    )
    assert run_job(cluster, body)["status"].get("succeeded") == 1
    [pod] = pods_of(cluster, "nested")
    assert log_of(cluster, pod).splitlines() == ["cache", "kept", "file"]
    assert [p.name for p in outer.iterdir()] == ["kept"]


@needs_namespaces
def test_read_only_root_filesystem_leaves_only_volumes_writable(cluster: Cluster) -> None:
    # /scratch does not exist on the host: "/" gets a tmpfs shadow, which must be read-only too.
    script = (
        'touch /etc/kubelet-x 2>/dev/null; echo "etc $?"; touch /tmp/x 2>/dev/null; '
        'echo "tmp $?"; touch /x 2>/dev/null; echo "root $?"; touch /scratch/x; '
        'echo "scratch $?"'
    )
    body = job(
        "read-only-root",
        script,
        volumes=[{"name": "scratch", "emptyDir": {}}],
        container={
            "volumeMounts": [mount("scratch", "/scratch")],
            "securityContext": {"readOnlyRootFilesystem": True},
        },
    )
    assert run_job(cluster, body)["status"].get("succeeded") == 1
    [pod] = pods_of(cluster, "read-only-root")
    assert log_of(cluster, pod).splitlines() == ["etc 1", "tmp 1", "root 1", "scratch 0"]


@needs_namespaces
def test_venv_entry_points_run_under_the_products_container_settings(cluster: Cluster) -> None:
    # What migrator renders: a read-only root and an emptyDir at /tmp. The venv's scripts (and
    # the interpreter their shebang names, wherever it lives on the host) must still run.
    security = {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
    body = job(
        "agent-help",
        "",
        volumes=[{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
        container={
            "command": ["migrator", "--help"],
            "securityContext": security,
            "volumeMounts": [mount("tmp", "/tmp")],
        },
    )
    assert run_job(cluster, body)["status"].get("succeeded") == 1
    [pod] = pods_of(cluster, "agent-help")
    assert "Usage: migrator" in log_of(cluster, pod)


def test_an_unmountable_claim_keeps_the_pod_creating_until_it_can_be_mounted(
    cluster: Cluster, tmp_path: Path
) -> None:
    data = backed_claim(cluster, tmp_path, "late", {"hello": "mounted late\n"})
    cluster.kubelet.unmountable.add((cluster.namespace, "late"))
    try:
        body = job(
            "late-claim",
            "cat /data/hello",
            volumes=[claim_volume("data", "late")],
            container={"volumeMounts": [mount("data", "/data")]},
        )
        body["metadata"]["namespace"] = cluster.namespace
        cluster.seed([body])

        def failed_mounts() -> list[Obj]:
            events = cluster.list_objects("v1", "Event", cluster.namespace)
            return [e for e in events if e["reason"] == "FailedMount"]

        cluster.wait_for(lambda: bool(failed_mounts()), 30, "a FailedMount event")
        [pod] = pods_of(cluster, "late-claim")
        assert pod["status"]["phase"] == "Pending"
        waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
        assert waiting["reason"] == "ContainerCreating"
        event = failed_mounts()[0]
        assert (
            "late" in event["message"]
            and event["involvedObject"]["name"] == pod["metadata"]["name"]
        )
    finally:
        cluster.kubelet.unmountable.discard((cluster.namespace, "late"))
    cluster.wait_for(
        lambda: bool(pods_of(cluster, "late-claim")[0]["status"].get("phase") == "Succeeded"),
        30,
        "late-claim ran",
    )
    assert log_of(cluster, pods_of(cluster, "late-claim")[0]) == "mounted late\n"
    assert data.is_dir()


def test_on_failure_restarts_the_container_in_the_same_pod(
    cluster: Cluster, tmp_path: Path
) -> None:
    backed_claim(cluster, tmp_path, "state")
    script = "if [ -e /state/tried ]; then echo second try; else touch /state/tried; exit 1; fi"
    body = job(
        "retry-in-place",
        script,
        restartPolicy="OnFailure",
        volumes=[claim_volume("state", "state")],
        container={"volumeMounts": [mount("state", "/state")]},
    )
    body["spec"]["backoffLimit"] = 2
    finished = run_job(cluster, body)
    assert finished["status"].get("succeeded") == 1 and not finished["status"].get("failed")
    [pod] = pods_of(cluster, "retry-in-place")
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 1
    assert log_of(cluster, pod) == "second try\n"


def test_an_rwo_claim_used_on_another_node_waits_on_multi_attach(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The attach/detach controller's refusal (it does not run here: no CSI attacher), which the
    kubelet stands in for: the plan must pin an RWO copy to the app's node."""
    [app] = [
        p
        for p in cluster.list_objects("v1", "Pod", cluster.namespace)
        if p["metadata"]["name"].startswith("sonarr-")
    ]
    elsewhere = next(
        n for n in ("worker-1", "worker-2", "worker-3") if n != app["spec"]["nodeName"]
    )
    body = job(
        "elsewhere",
        "true",
        nodeSelector={"kubernetes.io/hostname": elsewhere},
        volumes=[claim_volume("config", "sonarr-config")],
        container={"volumeMounts": [mount("config", "/config")]},
    )
    body["metadata"]["namespace"] = cluster.namespace
    cluster.seed([body])

    def attach_errors() -> list[Obj]:
        events = cluster.list_objects("v1", "Event", cluster.namespace)
        return [e for e in events if e["reason"] == "FailedAttachVolume"]

    cluster.wait_for(lambda: bool(attach_errors()), 30, "a Multi-Attach error")
    assert "Multi-Attach error" in attach_errors()[0]["message"]
    assert pods_of(cluster, "elsewhere")[0]["status"]["phase"] == "Pending"


SPARE_TAINT = {"key": "migrator.test/spare", "value": "true", "effect": "NoSchedule"}


def spare_pod(cluster: Cluster, name: str, node: str, script: str, **spec: Any) -> Obj:
    """A pod bound straight to ``node`` (a spare kubelet's, tainted so nothing else lands there)."""
    container = {"name": "main", "image": "busybox:1.36", "command": ["/bin/sh", "-c", script]}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": cluster.namespace},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "tolerations": [{"key": SPARE_TAINT["key"], "operator": "Exists"}],
            "containers": [container],
            **spec,
        },
    }


def pod_phase(cluster: Cluster, name: str) -> str | None:
    found = cluster.get_object("v1", "Pod", cluster.namespace, name) or {}
    return (found.get("status") or {}).get("phase")


def test_stopping_the_kubelet_kills_every_process(cluster: Cluster, tmp_path: Path) -> None:
    node = Node(f"spare-{cluster.namespace}", taints=(SPARE_TAINT,))
    spare = ProcessKubelet(cluster.admin_kubeconfig_path, [node], workdir=tmp_path / "spare")
    spare.start()
    try:
        cluster.seed([spare_pod(cluster, "forever", node.name, "exec sleep 600")])
        cluster.wait_for(lambda: pod_phase(cluster, "forever") == "Running", 30, "forever runs")
        [pid] = spare.processes()
    finally:
        spare.stop()
        cluster.core.delete_node(node.name)
    assert spare.processes() == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not spare.errors


def test_rewrite_mode_maps_paths_to_host_directories(cluster: Cluster, tmp_path: Path) -> None:
    """Without mount namespaces (not root), paths under a mount are rewritten to the host's."""
    source = backed_claim(cluster, tmp_path, "source", {"a.txt": "data\n"})
    dest = backed_claim(cluster, tmp_path, "dest")
    node = Node(f"rewrite-{cluster.namespace}", taints=(SPARE_TAINT,))
    spare = ProcessKubelet(
        cluster.admin_kubeconfig_path, [node], workdir=tmp_path / "spare", isolation="rewrite"
    )
    spare.claims = cluster.kubelet.claims
    spare.start()
    try:
        # Only whole arguments and env values starting with a mount path are rewritten.
        pod = spare_pod(
            cluster,
            "rewrite",
            node.name,
            'cp "$1" "$TARGET" && echo "$TARGET"',
            container={
                "args": ["sh", "/mnt/source/a.txt"],
                "env": [{"name": "TARGET", "value": "/mnt/dest/b.txt"}],
                "volumeMounts": [mount("source", "/mnt/source"), mount("dest", "/mnt/dest")],
            },
            volumes=[claim_volume("source", "source"), claim_volume("dest", "dest")],
        )
        cluster.seed([pod])
        cluster.wait_for(lambda: pod_phase(cluster, "rewrite") == "Succeeded", 30, "rewrite ran")
        assert log_of(cluster, pod) == f"{dest}/b.txt\n"
    finally:
        spare.stop()
        cluster.core.delete_node(node.name)
    assert (dest / "b.txt").read_text() == (source / "a.txt").read_text()


@needs_namespaces
def test_prepended_tools_stay_visible_under_a_tmp_mount(cluster: Cluster, tmp_path: Path) -> None:
    """``path_prepend`` directories (the venv's bin, standing in for the image's tools) stay on
    PATH when a ``/tmp`` emptyDir hides where they live (a checkout under /tmp, as in CI)."""
    tools = tmp_path / "bin"  # under /tmp, which the pod's emptyDir hides
    tools.mkdir()
    (tools / "fake-rclone").write_text("#!/bin/sh\necho fake rclone $1\n")
    (tools / "fake-rclone").chmod(0o755)
    node = Node(f"tools-{cluster.namespace}", taints=(SPARE_TAINT,))
    spare = ProcessKubelet(
        cluster.admin_kubeconfig_path,
        [node],
        workdir=tmp_path / "spare",
        path_prepend=[str(tools)],
    )
    spare.start()
    try:
        pod = spare_pod(
            cluster,
            "fake-tool",
            node.name,
            "fake-rclone version && touch /tmp/scratch",
            container={"volumeMounts": [mount("tmp", "/tmp")]},
            volumes=[{"name": "tmp", "emptyDir": {}}],
        )
        cluster.seed([pod])
        cluster.wait_for(lambda: pod_phase(cluster, "fake-tool") == "Succeeded", 30, "tool ran")
        assert log_of(cluster, pod) == "fake rclone version\n"
    finally:
        spare.stop()
        cluster.core.delete_node(node.name)
