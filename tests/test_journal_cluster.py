"""The cluster journal and its lock: the run Lease is held, renewed and given up honestly, and
`migrator status` only reads the journal ConfigMap."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from migrator.errors import LeaseLostError
from migrator.executors.kubernetes import ConfigMapStore, LeaseLock
from migrator.journal import Journal
from migrator.kube import KubeClient
from migrator.plan import load_plan
from tests import tenant_media, test_run_cluster
from tests.helpers import run_cli
from tests.kubeapi import KubeAPIServer

NS = tenant_media.NAMESPACE
LEASE = "coordination.k8s.io/v1"
OTHER = "other-laptop/4242"
WRITES = {"create", "update", "patch", "delete", "deletecollection"}

cozy = test_run_cluster.cozy  # tenant-media whose Jobs really run, with a bucket behind them


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[KubeAPIServer]:
    with KubeAPIServer(tmp_path / "kubeapi") as api:
        api.seed(tenant_media.tenant_media())
        api.settle()
        yield api


def holder(api: KubeAPIServer, name: str) -> str:
    lease = api.get_object(LEASE, "Lease", NS, name) or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def take_over(api: KubeAPIServer, name: str) -> None:
    """What another run does once the Lease looks expired to it: a second client writes itself in."""
    leases = client.CoordinationV1Api(api.api_client())
    lease = leases.read_namespaced_lease(name, NS)
    lease.spec.holder_identity = OTHER
    lease.spec.renew_time = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    leases.replace_namespaced_lease(name, NS, lease)


def migrator_process(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "MIGRATOR_DEBUG"}
    return subprocess.Popen(
        [sys.executable, "-m", "migrator", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


# --- the Lease --------------------------------------------------------------------------------


def test_a_run_whose_lease_was_taken_while_it_slept_stops_and_says_so(
    cozy: tuple[KubeAPIServer, Any],
) -> None:
    api, env = cozy
    plan_path = test_run_cluster.plan(api, env, "--volume", "prowlarr-config")
    name = f"migrator-{load_plan(plan_path).name}"
    run = migrator_process(
        "run", "--plan", str(plan_path), "--kubeconfig", str(api.kubeconfig_path),
        "--phase", "config", "--json",
    )  # fmt: skip
    try:
        api.wait_for(lambda: holder(api, name).endswith(f"/{run.pid}"), timeout=60)
        os.kill(run.pid, signal.SIGSTOP)  # the laptop goes to sleep...
        take_over(api, name)  # ...its Lease expires and another run takes it
        os.kill(run.pid, signal.SIGCONT)
        stdout, stderr = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 3, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    assert f"lost the run Lease {NS}/{name} to {OTHER}" in lines[0]
    assert stdout == ""
    assert holder(api, name) == OTHER  # the new holder's Lease survives
    configmap = api.get_object("v1", "ConfigMap", NS, name) or {}
    journal = json.loads((configmap.get("data") or {}).get("journal.json") or "{}")
    step = journal.get("volumes", {}).get("prowlarr-config", {}).get("preseed", {})
    assert step.get("status") != "done"  # the loser did not record its result


def test_the_renewer_notices_a_takeover_and_release_spares_the_new_holder(
    cluster: KubeAPIServer,
) -> None:
    kube = KubeClient.from_kubeconfig(str(cluster.kubeconfig_path))
    lock = LeaseLock(kube, NS, "demo", renew_every=0.1)
    with pytest.raises(LeaseLostError) as lost, lock:
        assert holder(cluster, "migrator-demo") == lock.identity
        take_over(cluster, "migrator-demo")
        assert lock.lost.wait(timeout=30)  # noticed by the renewer alone
        lock.ensure_held()
    assert f"lost the run Lease {NS}/migrator-demo to {OTHER}" in lost.value.message
    assert holder(cluster, "migrator-demo") == OTHER


def test_a_lease_that_cannot_be_renewed_in_time_is_given_up(cluster: KubeAPIServer) -> None:
    kube = KubeClient.from_kubeconfig(str(cluster.kubeconfig_path))
    lock = LeaseLock(kube, NS, "demo", duration=3, renew_every=0.1)
    with lock:
        rules = [cluster.deny(verb, "leases.coordination.k8s.io") for verb in ("get", "update")]
        assert lock.lost.wait(timeout=30)
        with pytest.raises(LeaseLostError, match="could not renew the run Lease"):
            lock.ensure_held()
        for rule in rules:
            cluster.allow(rule)
    # Another run may hold it by now: a lost Lease is never deleted, only left to expire.
    assert holder(cluster, "migrator-demo") == lock.identity


def test_a_run_releases_its_own_lease(cluster: KubeAPIServer) -> None:
    kube = KubeClient.from_kubeconfig(str(cluster.kubeconfig_path))
    with LeaseLock(kube, NS, "demo", renew_every=0.1) as lock:
        lock.ensure_held()
        assert holder(cluster, "migrator-demo") == lock.identity
    assert cluster.get_object(LEASE, "Lease", NS, "migrator-demo") is None


def test_journal_writes_check_the_lease_first(cluster: KubeAPIServer) -> None:
    kube = KubeClient.from_kubeconfig(str(cluster.kubeconfig_path))
    lock = LeaseLock(kube, NS, "demo")
    journal = Journal(ConfigMapStore(kube, NS, "demo", guard=lock.ensure_held), "demo")
    with pytest.raises(LeaseLostError), lock:
        journal.record("media", "preseed", "running")
        take_over(cluster, "migrator-demo")
        journal.record("media", "preseed", "done")
    assert journal.step("media", "preseed")["status"] == "running"
    assert holder(cluster, "migrator-demo") == OTHER


# --- status -----------------------------------------------------------------------------------


def test_status_only_reads_the_journal(cluster: KubeAPIServer, tmp_path: Path) -> None:
    made = run_cli(
        "plan", "-n", NS, "--kubeconfig", str(cluster.kubeconfig_path), "--target", "s3://media/m",
        "--s3-credentials-secret", tenant_media.SECRET_NAME, "--no-probe", cwd=tmp_path,
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    plan = load_plan(tmp_path / "plans" / f"{NS}.yaml")
    configmap = f"migrator-{plan.name}"

    def status(*args: str) -> Any:
        """``migrator status`` with a kubeconfig that may only get, list and watch."""
        rules = [cluster.deny(verb, "*") for verb in WRITES]
        start = len(cluster.requests)
        result = run_cli(
            "status", "--plan", str(plan.path), "--kubeconfig", str(cluster.kubeconfig_path), *args
        )
        assert [r for r in cluster.requests[start:] if r.verb in WRITES] == []
        for rule in rules:
            cluster.allow(rule)
        assert result.exit_code == 0, result.output
        return result

    report = json.loads(status("--json").stdout)  # no journal yet: nothing to create either
    assert {v["state"] for v in report["volumes"]} == {"planned"}
    assert cluster.get_object("v1", "ConfigMap", NS, configmap) is None

    journal = Journal(ConfigMapStore(KubeClient(cluster.api_client()), NS, plan.name), plan.name)
    journal.record("sonarr-config", "preseed", "done", files=3)
    journal.update(lambda d: d.update(workloads={"Deployment/sonarr": {"previousReplicas": 1}}))
    stored = cluster.get_object("v1", "ConfigMap", NS, configmap) or {}

    report = json.loads(status("--json").stdout)
    assert {v["volume"]: v["state"] for v in report["volumes"]}["sonarr-config"] == "pre-seeded"
    assert report["workloads"] == {"Deployment/sonarr": {"previousReplicas": 1}}
    assert "sonarr-config" in status().stdout  # the table reads the same journal
    after = cluster.get_object("v1", "ConfigMap", NS, configmap) or {}
    assert after["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
