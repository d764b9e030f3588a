"""The process kubelet on the real control plane: pods the real scheduler binds run as local
processes, the real Job controller sees them finish, and the API server's log proxy (``kubectl
logs``, follow included) reads their output."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.controlplane.cluster import Cluster

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


def test_a_followed_log_streams_while_the_container_runs(cluster: Cluster) -> None:
    body = job("ticker", "for i in 1 2 3; do echo tick $i; sleep 1; done")
    body["metadata"]["namespace"] = cluster.namespace
    cluster.seed([body])
    cluster.wait_for(
        lambda: any(p["status"].get("phase") == "Running" for p in pods_of(cluster, "ticker")),
        30,
        "ticker running",
    )
    started = time.monotonic()
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
    first = follow.stdout.readline()
    first_at = time.monotonic() - started
    rest = follow.stdout.read()
    assert follow.wait(timeout=30) == 0
    assert first == "tick 1\n"
    assert rest.splitlines() == ["tick 2", "tick 3"]
    assert first_at < time.monotonic() - started  # the first line came before the end


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
