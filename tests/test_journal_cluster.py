"""The cluster journal and its lock on a real kube-apiserver: the run Lease is held, renewed and
given up honestly, and `migrator status` only reads the journal ConfigMap.

The CLI and LeaseLock get the ServiceAccount kubeconfig of docs/rbac.yaml; the test plays the
other runs (and reads what happened) as admin. What the account asked is read from the API
server's audit log; the copy Job of the slept-run test runs on the process kubelet."""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from migrator.errors import LeaseLostError, OperationFailedError
from migrator.journal import Journal
from migrator.kube import KubeClient
from migrator.plan import load_plan
from migrator.workflows.runtime.journal_store import ConfigMapStore
from migrator.workflows.runtime.lease import LeaseLock
from tests import tenant_media, test_run_cluster
from tests.controlplane.cluster import Cluster, rbac_objects
from tests.helpers import run_cli
from tests.kubelet.retry import read_modify_write
from tests.test_rbac import allowed

LEASE = "coordination.k8s.io/v1"
OTHER = "other-laptop/4242"
WRITES = {"create", "update", "patch", "delete", "deletecollection"}
MICROTIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
_markers = itertools.count(1)

cozy = test_run_cluster.cozy  # tenant-media whose Jobs really run, with a bucket behind them


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def admin(cluster: Cluster) -> KubeClient:
    return KubeClient.from_kubeconfig(str(cluster.admin_kubeconfig_path))


def account(cluster: Cluster) -> KubeClient:
    """The client the product gets: the ServiceAccount of docs/rbac.yaml."""
    return KubeClient.from_kubeconfig(str(cluster.kubeconfig_path))


def lease_path(cluster: Cluster, name: str) -> str:
    return f"/apis/{LEASE}/namespaces/{cluster.namespace}/leases/{name}"


def lease_holder(cluster: Cluster, name: str) -> str:
    lease = cluster.get_object(LEASE, "Lease", cluster.namespace, name) or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def hold_lease(cluster: Cluster, name: str, holder: str = OTHER, renewed: str = "") -> None:
    """What another run does once the Lease looks free or expired to it: it writes itself in
    (again if the holder renewed it between the read and the write: a 409)."""
    path = lease_path(cluster, name)
    kube = admin(cluster)
    spec = {"holderIdentity": holder, "leaseDurationSeconds": 60, "renewTime": renewed or now()}
    body: dict[str, Any] = {
        "apiVersion": LEASE,
        "kind": "Lease",
        "spec": spec,
        "metadata": {"name": name, "namespace": cluster.namespace},
    }
    if kube.send("test reads the Lease", "GET", path, missing_ok=True) is None:
        kube.send("test takes the Lease", "POST", path.rsplit("/", 1)[0], body)
        return

    def take(current: dict[str, Any]) -> object:
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        return kube.send("test takes the Lease", "PUT", path, body)

    read_modify_write(
        lambda: kube.send("test reads the Lease", "GET", path), take, f"taking Lease {name}"
    )


def account_requests(cluster: Cluster) -> list[dict[str, Any]]:
    """Every request the ServiceAccount has made so far, from the audit log. A marker request
    (a GET of a ConfigMap that does not exist) is made and waited for, so that nothing the
    account asked before is still on its way into the log."""
    marker = f"audit-marker-{next(_markers)}"
    path = f"/api/v1/namespaces/{cluster.namespace}/configmaps/{marker}"
    account(cluster).send("audit marker", "GET", path, missing_ok=True)

    def named(event: dict[str, Any]) -> bool:
        return (event.get("objectRef") or {}).get("name") == marker

    cluster.wait_for(lambda: any(named(e) for e in cluster.requests()), 30, "the audit marker")
    events = cluster.requests()
    return events[: next(i for i, e in enumerate(events) if named(e))]


def writes(events: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """The writes among ``events`` as (verb, resource, HTTP status)."""
    return [
        (
            e["verb"],
            (e.get("objectRef") or {}).get("resource", "?"),
            (e.get("responseStatus") or {}).get("code", 0),
        )
        for e in events
        if e["verb"] in WRITES
    ]


@contextlib.contextmanager
def rights_without(cluster: Cluster, drop: Callable[[str, str, str], bool]) -> Iterator[None]:
    """The ServiceAccount with docs/rbac.yaml's rights minus every (group, resource, verb) that
    ``drop`` picks: its bindings point at trimmed copies of the roles until the block ends, then
    the documented bindings are back. Waits until the API server authorizes accordingly."""
    documented = {(o["kind"], o["metadata"]["name"]): o for o in rbac_objects(cluster.namespace)}
    trimmed, dropped = {}, []
    for role in ("migrator", "migrator-cluster"):
        rules = []
        for rule in documented[("ClusterRole", role)]["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    verbs = [v for v in rule["verbs"] if not drop(group, resource, v)]
                    dropped += [(v, resource, group) for v in rule["verbs"] if v not in verbs]
                    if verbs:
                        rules.append(
                            {"apiGroups": [group], "resources": [resource], "verbs": verbs}
                        )
        trimmed[role] = rules
    assert dropped, "nothing to take away"
    rbac, ns = "rbac.authorization.k8s.io/v1", cluster.namespace
    limited, subject = f"migrator-limited-{ns}", documented[("RoleBinding", "migrator")]["subjects"]
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole"}
    cluster.seed(
        [
            {
                "apiVersion": rbac,
                "kind": "ClusterRole",
                "metadata": {"name": limited},
                "rules": trimmed["migrator"],
            },
            {
                "apiVersion": rbac,
                "kind": "ClusterRole",
                "metadata": {"name": f"{limited}-cluster"},
                "rules": trimmed["migrator-cluster"],
            },
        ]
    )
    cluster._delete_quietly(rbac, "RoleBinding", ns, "migrator")
    cluster._delete_quietly(rbac, "ClusterRoleBinding", None, f"migrator-{ns}")
    cluster.seed(
        [
            {
                "apiVersion": rbac,
                "kind": "RoleBinding",
                "metadata": {"name": limited, "namespace": ns},
                "roleRef": {**ref, "name": limited},
                "subjects": subject,
            },
            {
                "apiVersion": rbac,
                "kind": "ClusterRoleBinding",
                "metadata": {"name": limited},
                "roleRef": {**ref, "name": f"{limited}-cluster"},
                "subjects": subject,
            },
        ]
    )
    verb, resource, group = dropped[0]
    cluster.wait_for(lambda: not allowed(cluster, verb, resource, group, ns), 30, "RBAC")
    try:
        yield
    finally:
        cluster._delete_quietly(rbac, "RoleBinding", ns, limited)
        cluster._delete_quietly(rbac, "ClusterRoleBinding", None, limited)
        cluster.seed(
            [
                documented[("RoleBinding", "migrator")],
                documented[("ClusterRoleBinding", f"migrator-{ns}")],
            ]
        )
        for name in (limited, f"{limited}-cluster"):
            cluster._delete_quietly(rbac, "ClusterRole", None, name)
        cluster.wait_for(lambda: allowed(cluster, verb, resource, group, ns), 30, "RBAC back")


# --- the Lease --------------------------------------------------------------------------------


def test_lease_times_are_written_as_the_api_server_parses_them(cluster: Cluster) -> None:
    """The defect this fixes: the typed client re-serialised renewTime through its model, as
    ``isoformat()`` (no fraction when it is zero, ``+00:00``), which kube-apiserver refuses with
    400; so every ``migrator run`` failed to start on a real cluster."""
    kube = account(cluster)
    path = f"/apis/{LEASE}/namespaces/{cluster.namespace}/leases"
    body: dict[str, Any] = {
        "apiVersion": LEASE,
        "kind": "Lease",
        "metadata": {"name": "by-the-second"},
        "spec": {"holderIdentity": "x/1", "renewTime": "2030-01-02T03:04:05.000000Z"},
    }
    created = kube.send("writing a Lease", "POST", path, body) or {}
    assert created["spec"]["renewTime"] == "2030-01-02T03:04:05.000000Z"  # sent as given
    body["metadata"]["name"] = "isoformat"
    body["spec"]["renewTime"] = "2030-01-02T03:04:05+00:00"  # what the typed client sent
    with pytest.raises(OperationFailedError) as refused:
        kube.send("writing a Lease", "POST", path, body)
    # ...and the API server's own reason is in the one line (it was dropped before).
    assert refused.value.message.startswith("writing a Lease: API error 400 Bad Request: ")
    assert 'as "2006-01-02T15:04:05.000000Z07:00"' in refused.value.message
    assert "\n" not in refused.value.message

    with LeaseLock(kube, cluster.namespace, "demo", renew_every=0.1) as lock:
        lock.ensure_held()
        stored = cluster.get_object(LEASE, "Lease", cluster.namespace, "migrator-demo") or {}
        assert MICROTIME.match(stored["spec"]["renewTime"]), stored["spec"]


def test_the_renewer_notices_a_takeover_and_release_spares_the_new_holder(
    cluster: Cluster,
) -> None:
    lock = LeaseLock(account(cluster), cluster.namespace, "demo", renew_every=0.1)
    where = f"{cluster.namespace}/migrator-demo"
    with pytest.raises(LeaseLostError) as lost, lock:
        assert lease_holder(cluster, "migrator-demo") == lock.identity
        hold_lease(cluster, "migrator-demo")
        assert lock.lost.wait(timeout=30)  # noticed by the renewer alone
        lock.ensure_held()
    assert f"lost the run Lease {where} to {OTHER}" in lost.value.message
    assert lease_holder(cluster, "migrator-demo") == OTHER


def test_a_lease_that_cannot_be_renewed_in_time_is_given_up(cluster: Cluster) -> None:
    lock = LeaseLock(account(cluster), cluster.namespace, "demo", duration=3, renew_every=0.1)
    with lock:
        renewing = {("get", "leases"), ("update", "leases")}
        with rights_without(cluster, lambda _group, resource, verb: (verb, resource) in renewing):
            assert lock.lost.wait(timeout=30)
            refused = r"could not renew the run Lease .* cannot get resource \"leases\""
            with pytest.raises(LeaseLostError, match=refused):
                lock.ensure_held()
    # Another run may hold it by now: a lost Lease is never deleted, only left to expire.
    assert lease_holder(cluster, "migrator-demo") == lock.identity


def test_a_run_releases_its_own_lease(cluster: Cluster) -> None:
    with LeaseLock(account(cluster), cluster.namespace, "demo", renew_every=0.1) as lock:
        lock.ensure_held()
        assert lease_holder(cluster, "migrator-demo") == lock.identity
    assert cluster.get_object(LEASE, "Lease", cluster.namespace, "migrator-demo") is None


def test_journal_writes_check_the_lease_first(cluster: Cluster) -> None:
    kube = account(cluster)
    lock = LeaseLock(kube, cluster.namespace, "demo")
    store = ConfigMapStore(kube, cluster.namespace, "demo", guard=lock.ensure_held)
    journal = Journal(store, "demo")
    with pytest.raises(LeaseLostError), lock:
        journal.record("media", "preseed", "running")
        hold_lease(cluster, "migrator-demo")
        journal.record("media", "preseed", "done")
    assert journal.step("media", "preseed")["status"] == "running"
    assert lease_holder(cluster, "migrator-demo") == OTHER


@pytest.mark.parametrize("before", ["absent", "expired"])
def test_the_loser_of_a_lease_race_makes_no_write(cluster: Cluster, before: str) -> None:
    """Two runs read the Lease free (or expired) at once; the other one writes first. The loser's
    write is refused (409: created, or changed since read) and it stops, writing nothing else."""
    name = "migrator-demo"
    if before == "expired":
        hold_lease(cluster, name, "crashed-laptop/1", "2020-01-01T00:00:00.000000Z")
    kube = account(cluster)
    loser = LeaseLock(kube, cluster.namespace, "demo")
    store = ConfigMapStore(kube, cluster.namespace, "demo", guard=loser.ensure_held)
    journal = Journal(store, "demo")
    read = loser._read

    def read_then_lose_the_race() -> dict[str, Any] | None:
        seen = read()
        if lease_holder(cluster, name) != OTHER:
            hold_lease(cluster, name)  # the other run, between our read and our write
        return seen

    loser._read = read_then_lose_the_race  # type: ignore[method-assign]
    start = len(account_requests(cluster))
    with pytest.raises(OperationFailedError) as refused, loser:
        journal.record("media", "preseed", "running")
    assert refused.value.message == (
        f"another migrator run of this plan is in progress ({OTHER}, Lease "
        f"{cluster.namespace}/{name}); wait for it, or stop it, then re-run"
    )
    verb = "create" if before == "absent" else "update"
    assert writes(account_requests(cluster)[start:]) == [(verb, "leases", 409)]
    assert lease_holder(cluster, name) == OTHER
    assert cluster.get_object("v1", "ConfigMap", cluster.namespace, name) is None


# --- the Lease, through the CLI -----------------------------------------------------------------


def make_plan(cluster: Cluster, directory: Path) -> Path:
    made = run_cli(
        "plan",
        "-n",
        cluster.namespace,
        "--kubeconfig",
        str(cluster.kubeconfig_path),
        "--target",
        "s3://media/m",
        "--s3-credentials-secret",
        tenant_media.SECRET_NAME,
        "--no-probe",
        cwd=directory,
    )
    assert made.exit_code == 0, made.output
    return directory / "plans" / f"{cluster.namespace}.yaml"


def test_a_second_run_is_refused_while_the_lease_is_held(cluster: Cluster, tmp_path: Path) -> None:
    plan_path = make_plan(cluster, tmp_path)
    name = f"migrator-{load_plan(plan_path).name}"
    hold_lease(cluster, name)  # a run on another laptop, renewing as it should
    start = len(account_requests(cluster))
    result = run_cli(
        "run",
        "--plan",
        str(plan_path),
        "--kubeconfig",
        str(cluster.kubeconfig_path),
        "--phase",
        "config",
    )
    assert result.exit_code == 3
    assert result.stderr.splitlines()[-1] == (  # after an empty progress bar
        f"Error: another migrator run of this plan is in progress ({OTHER}, Lease "
        f"{cluster.namespace}/{name}); wait for it, or stop it, then re-run"
    )
    assert writes(account_requests(cluster)[start:]) == []  # no journal, no Job, no Lease
    assert lease_holder(cluster, name) == OTHER


def test_a_dry_run_takes_no_lease(cluster: Cluster, tmp_path: Path) -> None:
    """A dry run writes nothing, not even the Lease (a real run's Lease is checked in
    test_run_cluster.py, where Jobs run)."""
    plan_path = make_plan(cluster, tmp_path)
    name = f"migrator-{load_plan(plan_path).name}"
    start = len(account_requests(cluster))
    result = run_cli(
        "run",
        "--plan",
        str(plan_path),
        "--kubeconfig",
        str(cluster.kubeconfig_path),
        "--phase",
        "config",
        "--dry-run",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert {v["status"] for v in json.loads(result.stdout)["volumes"]} == {"skipped"}
    leases = [
        (verb, code)
        for verb, resource, code in writes(account_requests(cluster)[start:])
        if resource == "leases"
    ]
    assert leases == []
    assert cluster.get_object(LEASE, "Lease", cluster.namespace, name) is None


# --- status -----------------------------------------------------------------------------------


def test_status_only_reads_the_journal(cluster: Cluster, tmp_path: Path) -> None:
    plan = load_plan(make_plan(cluster, tmp_path))
    configmap = f"migrator-{plan.name}"

    def status(*args: str) -> Any:
        """``migrator status`` with a kubeconfig that may only get, list and watch."""
        start = len(account_requests(cluster))
        with rights_without(cluster, lambda _group, _resource, verb: verb in WRITES):
            result = run_cli(
                "status",
                "--plan",
                str(plan.path),
                "--kubeconfig",
                str(cluster.kubeconfig_path),
                *args,
            )
        assert writes(account_requests(cluster)[start:]) == []
        assert result.exit_code == 0, result.output
        return result

    report = json.loads(status("--json").stdout)  # no journal yet: nothing to create either
    assert {v["state"] for v in report["volumes"]} == {"planned"}
    assert cluster.get_object("v1", "ConfigMap", cluster.namespace, configmap) is None

    journal = Journal(ConfigMapStore(admin(cluster), cluster.namespace, plan.name), plan.name)
    journal.record("sonarr-config", "preseed", "done", files=3)
    journal.update(lambda d: d.update(workloads={"Deployment/sonarr": {"previousReplicas": 1}}))
    stored = cluster.get_object("v1", "ConfigMap", cluster.namespace, configmap) or {}

    report = json.loads(status("--json").stdout)
    assert {v["volume"]: v["state"] for v in report["volumes"]}["sonarr-config"] == "pre-seeded"
    assert report["workloads"] == {"Deployment/sonarr": {"previousReplicas": 1}}
    assert "sonarr-config" in status().stdout  # the table reads the same journal
    after = cluster.get_object("v1", "ConfigMap", cluster.namespace, configmap) or {}
    assert after["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]


# --- on the API test server until pods run (#13) ----------------------------------------------


def holder(cluster: Cluster, name: str) -> str:
    lease = cluster.get_object(LEASE, "Lease", cluster.namespace, name) or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def take_over(cluster: Cluster, name: str) -> None:
    """What another run does once the Lease looks expired to it: a second client writes itself in
    (raw JSON: a typed client would mangle the MicroTime)."""
    lease = cluster.get_object(LEASE, "Lease", cluster.namespace, name)
    assert lease is not None
    lease["spec"].update(holderIdentity=OTHER, renewTime=now())
    admin(cluster).send(
        "taking the Lease over",
        "PUT",
        f"/apis/coordination.k8s.io/v1/namespaces/{cluster.namespace}/leases/{name}",
        lease,
    )


def migrator_process(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "MIGRATOR_DEBUG"}
    return subprocess.Popen(
        [sys.executable, "-m", "migrator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_a_run_whose_lease_was_taken_while_it_slept_stops_and_says_so(
    cozy: test_run_cluster.Cozy,
) -> None:
    cluster = cozy.cluster
    plan_path = cozy.plan("--volume", "prowlarr-config")
    name = f"migrator-{load_plan(plan_path).name}"
    run = migrator_process(
        "run",
        "--plan",
        str(plan_path),
        "--kubeconfig",
        str(cluster.kubeconfig_path),
        "--phase",
        "config",
        "--json",
    )
    try:
        cluster.wait_for(lambda: holder(cluster, name).endswith(f"/{run.pid}"), timeout=60)
        os.kill(run.pid, signal.SIGSTOP)  # the laptop goes to sleep...
        take_over(cluster, name)  # ...its Lease expires and another run takes it
        os.kill(run.pid, signal.SIGCONT)
        stdout, stderr = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 3, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    assert f"lost the run Lease {cluster.namespace}/{name} to {OTHER}" in lines[0]
    assert stdout == ""
    assert holder(cluster, name) == OTHER  # the new holder's Lease survives
    configmap = cluster.get_object("v1", "ConfigMap", cluster.namespace, name) or {}
    journal = json.loads((configmap.get("data") or {}).get("journal.json") or "{}")
    step = journal.get("volumes", {}).get("prowlarr-config", {}).get("preseed", {})
    assert step.get("status") != "done"  # the loser did not record its result
