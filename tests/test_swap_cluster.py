"""`migrator swap`, `rollback` and `status`, on the real control plane.

A real kube-apiserver (tests/controlplane, Flux's own CRDs, a fresh tenant namespace per test) and
the CLI with only docs/rbac.yaml's ServiceAccount. The cutover's quiesce is the real
:class:`Quiescer` (suspend Flux, scale to 0) run as that account; the copy and verify steps are
written to the journal through :class:`Journal`, their documented contract. The apps' pods run on
the process kubelet; where a test needs Flux to re-render a release after swap changed its values,
the helm-controller stand-in (tests/controlplane/helm.py) does what a Helm upgrade would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from migrator.journal import Journal
from migrator.kube import KubeClient
from migrator.plan import Plan, load_plan, volumes_in_phase
from migrator.workflows.runtime.journal_store import ConfigMapStore
from migrator.workflows.runtime.quiesce import Quiescer
from tests import tenant_media
from tests.controlplane.cluster import Cluster
from tests.controlplane.helm import HelmControllerStandIn
from tests.helpers import run_cli, validate_manifest

HR = "helm.toolkit.fluxcd.io/v2"
CSI_DRIVER: dict[str, Any] = {
    "apiVersion": "storage.k8s.io/v1",
    "kind": "CSIDriver",
    "metadata": {"name": "seaweedfs-csi-driver"},
    "spec": {"attachRequired": False, "podInfoOnMount": True},
}


# --- helpers -----------------------------------------------------------------------------


def journal_of(kube: KubeClient, namespace: str, plan: Plan) -> Journal:
    return Journal(ConfigMapStore(kube, namespace, plan.name), plan.name)


def cut_over(
    kube: KubeClient,
    namespace: str,
    plan: Plan,
    phase: str = "all",
    verified: bool | None = True,
) -> None:
    """What 'migrator run --cutover' and 'migrator verify' leave behind."""
    journal = journal_of(kube, namespace, plan)
    volumes = volumes_in_phase(plan.model["spec"]["volumes"], phase)
    Quiescer(kube, namespace, plan, journal, 30)(volumes, False)
    for volume in volumes:
        journal.record(volume["name"], "preseed", "done", files=10)
        journal.record(volume["name"], "cutover", "done", files=10)
        if verified is not None:  # as 'migrator verify' records it
            status = "done" if verified else "failed"
            journal.record(
                volume["name"],
                "verify",
                status,
                ok=verified,
                differences=0 if verified else 2,
                mountMetadata=True,
            )


def snapshot(api: Cluster, namespace: str) -> dict[str, Any]:
    """What swap and rollback may change: HelmRelease specs, Deployment specs, ConfigMap data."""
    return {
        **{
            f"hr/{o['metadata']['name']}": o["spec"]
            for o in api.list_objects(HR, "HelmRelease", namespace)
        },
        **{
            f"deploy/{o['metadata']['name']}": o["spec"]
            for o in api.list_objects("apps/v1", "Deployment", namespace)
        },
        **{
            f"cm/{o['metadata']['name']}": o.get("data")
            for o in api.list_objects("v1", "ConfigMap", namespace)
            if o["metadata"]["name"] != f"migrator-{namespace}"
        },
    }


def cli(api: Cluster, command: str, plan: Plan, *args: str) -> tuple[int, Any, str]:
    result = run_cli(
        command, "--plan", str(plan.path), "--kubeconfig", str(api.kubeconfig_path), *args
    )
    data = json.loads(result.stdout) if "--json" in args and result.stdout.startswith("{") else None
    return result.exit_code, data, result.output


def claims_of(api: Cluster, name: str, namespace: str) -> set[str]:
    deployment = api.get_object("apps/v1", "Deployment", namespace, name) or {}
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    return {v["persistentVolumeClaim"]["claimName"] for v in volumes}


# --- the tenant and the account ------------------------------------------------------------------


def plan_of(cluster: Cluster, cwd: Path, *extra: str) -> Plan:
    """'migrator plan' of the test's namespace, as the ServiceAccount (the S3 target unless
    ``extra`` names another)."""
    args = ("--target", "s3://media/migrated", *extra)
    if "--target" not in extra:
        args += ("--filer-grpc", "seaweedfs-filer.tenant-root.svc:18888")
    result = run_cli(
        "plan",
        "-n",
        cluster.namespace,
        "--kubeconfig",
        str(cluster.kubeconfig_path),
        "--s3-credentials-secret",
        tenant_media.SECRET_NAME,
        "--no-probe",
        *args,
        cwd=cwd,
    )
    assert result.exit_code == 0, result.output
    return load_plan(cwd / "plans" / f"{cluster.namespace}.yaml")


def as_account(cluster: Cluster) -> KubeClient:
    """A client with the ServiceAccount's kubeconfig: the cutover runs with what migrator has."""
    return KubeClient.from_kubeconfig(str(cluster.kubeconfig_path))


WRITES = ("create", "update", "patch", "delete", "deletecollection")


def audit_mark(cluster: Cluster) -> int:
    """How many requests the ServiceAccount has made, once the audit log has caught up: the
    server writes a request's event after its answer, so one just answered may still come."""
    count = len(cluster.requests())
    while True:
        time.sleep(0.3)
        now = len(cluster.requests())
        if now == count:
            return count
        count = now


def writes_since(cluster: Cluster, mark: int) -> list[str]:
    """The ServiceAccount's writing requests after its first ``mark`` requests."""
    return [
        f"{e['verb']} {(e.get('objectRef') or {}).get('resource')}"
        for e in cluster.requests()[mark:]
        if e["verb"] in WRITES
    ]


@pytest.fixture
def csi_driver(cluster: Cluster) -> Iterator[None]:
    """The seaweedfs CSIDriver installed (cluster-wide: removed afterwards if made here)."""
    made = cluster.seed([CSI_DRIVER])
    yield
    if made:
        client.StorageV1Api(cluster.admin).delete_csi_driver(CSI_DRIVER["metadata"]["name"])


@pytest.fixture
def without_csi_driver(cluster: Cluster) -> Iterator[None]:
    """No seaweedfs CSIDriver (Cozystack's SeaweedFS is S3-only); one another test of the session
    left behind is put back afterwards."""
    name = CSI_DRIVER["metadata"]["name"]
    found = cluster.get_object("storage.k8s.io/v1", "CSIDriver", None, name)
    if found is not None:
        client.StorageV1Api(cluster.admin).delete_csi_driver(name)
    yield
    if found is not None:
        cluster.seed([{**CSI_DRIVER, "spec": found["spec"]}])


def test_dry_run_changes_nothing(cluster: Cluster, csi_driver: None, tmp_path: Path) -> None:
    ns, kube = cluster.namespace, as_account(cluster)
    plan = plan_of(cluster, tmp_path)
    cut_over(kube, ns, plan)
    before, journal = snapshot(cluster, ns), journal_of(kube, ns, plan).store.load()
    mark = audit_mark(cluster)
    code, summary, output = cli(cluster, "swap", plan, "--in-cluster", "--dry-run", "--json")
    assert code == 0, output
    assert summary["dryRun"] is True
    assert [o["action"] for o in summary["volumes"][0]["objects"]] == ["would create"] * 2
    validate_manifest(summary["volumes"][0]["objects"][0]["manifest"])
    assert {p["name"] for p in summary["volumes"][0]["patches"]} == {"sonarr", "radarr"}
    assert snapshot(cluster, ns) == before
    assert journal_of(kube, ns, plan).store.load() == journal
    ours = [
        pv["metadata"]["name"]
        for pv in cluster.list_objects("v1", "PersistentVolume")
        if (pv["spec"].get("claimRef") or {}).get("namespace") == ns
    ]
    assert sorted(ours) == sorted(
        tenant_media.pv_name(claim, ns)
        for claim in ("media", *(f"{app}-config" for app in tenant_media.APPS))
    )
    assert writes_since(cluster, mark) == []
    assert cluster.forbidden() == []


def test_status_reads_the_journal_and_writes_nothing(cluster: Cluster, tmp_path: Path) -> None:
    ns, kube = cluster.namespace, as_account(cluster)
    plan = plan_of(cluster, tmp_path)
    code, report, output = cli(cluster, "status", plan, "--json")
    assert code == 0, output
    assert {v["volume"]: v["state"] for v in report["volumes"]} == dict.fromkeys(
        ("media", "prowlarr-config", "radarr-config", "sonarr-config"), "planned"
    )
    cut_over(kube, ns, plan)
    mark = audit_mark(cluster)
    code, report, output = cli(cluster, "status", plan, "--json")
    assert code == 0, output
    assert {v["volume"]: v["state"] for v in report["volumes"]} == dict.fromkeys(
        ("media", "prowlarr-config", "radarr-config", "sonarr-config"), "verified"
    )
    assert writes_since(cluster, mark) == []
    assert cluster.forbidden() == []


# --- GitOps: the user's Flux repo ----------------------------------------------------------------

FLUX_HELMRELEASES = """\
---
# yaml-language-server: $schema=https://raw.githubusercontent.com/bjw-s/helm-charts/main/charts/other/app-template/schemas/helmrelease-helm-v2.schema.json
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata:
  name: &app sonarr
spec:
  interval: 30m
  chart:
    spec:
      chart: app-template
      version: 3.7.3
      sourceRef: {kind: HelmRepository, name: bjw-s, namespace: flux-system}
  driftDetection:
    mode: disabled
  values:
    controllers:
      sonarr:
        containers:
          app:
            image: {repository: ghcr.io/onedr0p/sonarr, tag: rolling}  # {"$imagepolicy": "flux-system:sonarr:tag"}
    persistence:
      config:
        existingClaim: sonarr-config   # Linstor: SQLite stays on block storage
      media:
        existingClaim: "media"
        globalMounts:
          - path: /media
---
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata:
  name: &name radarr
  labels: {app.kubernetes.io/name: *name}
spec:
  interval: 30m
  chart:
    spec: {chart: app-template, version: 3.7.3, sourceRef: {kind: HelmRepository, name: bjw-s}}
  values:
    persistence:
      config: {existingClaim: radarr-config}
      media: {existingClaim: 'media', globalMounts: [{path: /media}]}
"""
SWAPPED_HELMRELEASES = FLUX_HELMRELEASES.replace(
    'existingClaim: "media"', 'existingClaim: "media-seaweedfs"'
).replace("existingClaim: 'media'", "existingClaim: 'media-seaweedfs'")


def test_gitops_swap_writes_the_file_and_the_claims_only_then_rolls_the_file_back(
    cluster: Cluster, csi_driver: None, tmp_path: Path
) -> None:
    """Without --in-cluster, swap creates the new claim objects and rewrites the values file;
    the releases and apps are Git's (and Flux's) business. Rollback puts the file back."""
    ns, kube = cluster.namespace, as_account(cluster)
    plan = plan_of(cluster, tmp_path)
    repo = tmp_path / "flux" / "apps" / "media"
    repo.mkdir(parents=True)
    releases = repo / "helmreleases.yaml"
    releases.write_text(FLUX_HELMRELEASES)
    cut_over(kube, ns, plan)
    stopped = snapshot(cluster, ns)

    code, summary, output = cli(
        cluster, "swap", plan, "--values-file", str(releases), "--dry-run", "--json"
    )
    assert code == 0, output
    assert releases.read_text() == FLUX_HELMRELEASES
    assert summary["files"][0]["written"] is False and summary["files"][0]["diff"]
    assert cluster.get_object("v1", "PersistentVolumeClaim", ns, "media-seaweedfs") is None

    code, summary, output = cli(cluster, "swap", plan, "--values-file", str(releases), "--json")
    assert code == 0, output
    assert releases.read_text() == SWAPPED_HELMRELEASES
    diff = summary["files"][0]["diff"]
    assert [
        line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")
    ] == [
        '-        existingClaim: "media"',
        '+        existingClaim: "media-seaweedfs"',
        "-      media: {existingClaim: 'media', globalMounts: [{path: /media}]}",
        "+      media: {existingClaim: 'media-seaweedfs', globalMounts: [{path: /media}]}",
    ]
    pv = cluster.get_object("v1", "PersistentVolume", None, f"{ns}-media-seaweedfs")
    pvc = cluster.get_object("v1", "PersistentVolumeClaim", ns, "media-seaweedfs")
    assert pv is not None and pvc is not None
    assert pv["spec"]["csi"]["driver"] == "seaweedfs-csi-driver"
    assert (
        pv["spec"]["csi"]["volumeAttributes"]["path"]
        == f"/buckets/{tenant_media.BUCKET_NAME}/migrated/media"
    )
    assert pv["spec"]["claimRef"]["namespace"] == ns
    assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
    cluster.wait_for(  # the real PV controller binds them, as it would in production
        lambda: (
            (
                (
                    cluster.get_object("v1", "PersistentVolumeClaim", ns, "media-seaweedfs") or {}
                ).get("status")
                or {}
            ).get("phase")
            == "Bound"
        ),
        30,
        "media-seaweedfs Bound",
    )
    assert (
        snapshot(cluster, ns) == stopped
    )  # the cluster's releases and apps are Git's business now
    assert any(s.startswith(f"commit and push: git add {releases}") for s in summary["next"])
    assert "flux reconcile kustomization apps -n flux-system --with-source" in summary["next"]
    assert (
        f"start the apps on the new claims: migrator swap --plan {plan.path} --in-cluster"
        in summary["next"]
    )
    code, report, _ = cli(cluster, "status", plan, "--json")
    assert code == 0
    assert {v["volume"]: v["state"] for v in report["volumes"]}["media"] == "swapped"
    # Swap held the plan's run Lease while it wrote, and gave it back.
    leases = [
        (e["verb"], e["responseStatus"]["code"])
        for e in cluster.requests()
        if (e.get("objectRef") or {}).get("resource") == "leases" and e["verb"] in WRITES
    ]
    assert ("create", 201) in leases and ("delete", 200) in leases, leases
    lease = cluster.get_object("coordination.k8s.io/v1", "Lease", ns, f"migrator-{plan.name}")
    assert lease is None

    code, summary, output = cli(
        cluster, "swap", plan, "--values-file", str(releases), "--json"
    )  # again: nothing left to do, nothing breaks
    assert code == 0, output
    assert [o["action"] for o in summary["volumes"][0]["objects"]] == ["exists"] * 2
    assert releases.read_text() == SWAPPED_HELMRELEASES

    code, summary, output = cli(cluster, "rollback", plan, "--values-file", str(releases), "--json")
    assert code == 0, output
    assert releases.read_bytes() == FLUX_HELMRELEASES.encode()
    assert summary["volumes"][0]["status"] == "rolled back"
    assert snapshot(cluster, ns) == stopped
    assert cluster.get_object("v1", "PersistentVolumeClaim", ns, "media-seaweedfs") is not None
    code, report, _ = cli(cluster, "status", plan, "--json")
    assert {v["volume"]: v["state"] for v in report["volumes"]}["media"] == "rolled back"
    assert cluster.forbidden() == []


# --- refusals ----------------------------------------------------------------------------------


def _verify_before_cutover(journal: Journal) -> None:
    def change(document: dict[str, Any]) -> None:
        document["volumes"]["media"]["verify"]["at"] = "2020-01-01T00:00:00Z"

    journal.update(change)


@pytest.mark.parametrize(
    ("verified", "tweak", "message"),
    [
        (None, None, "refusing to swap: media was not cut over"),
        (None, "no-cutover", "refusing to swap: media was not cut over ('migrator run --plan"),
        (False, None, "refusing to swap: the last verify of media found differences (2)"),
        (True, "verify-first", "refusing to swap: media was not verified since its cutover"),
    ],
)
def test_swap_refuses_without_cutover_and_passed_verify(
    cluster: Cluster,
    csi_driver: None,
    tmp_path: Path,
    verified: bool | None,
    tweak: str | None,
    message: str,
) -> None:
    ns, kube = cluster.namespace, as_account(cluster)
    plan = plan_of(cluster, tmp_path)
    if tweak != "no-cutover":
        cut_over(kube, ns, plan, verified=verified)
    if verified is None and tweak is None:
        journal_of(kube, ns, plan).record("media", "verify", "running")
        journal_of(kube, ns, plan).update(lambda d: d["volumes"]["media"].pop("cutover"))
    if tweak == "verify-first":
        _verify_before_cutover(journal_of(kube, ns, plan))
    before = snapshot(cluster, ns)
    code, _, output = cli(cluster, "swap", plan, "--in-cluster")
    assert code == 2
    assert message in output
    assert output.strip().endswith("or pass --force")
    assert snapshot(cluster, ns) == before
    assert cluster.get_object("v1", "PersistentVolumeClaim", ns, "media-seaweedfs") is None
    assert cluster.forbidden() == []


def test_swap_stops_when_the_cluster_has_no_seaweedfs_csi_driver(
    cluster: Cluster, without_csi_driver: None, tmp_path: Path
) -> None:
    ns = cluster.namespace  # Cozystack: SeaweedFS without the CSI driver
    plan = plan_of(cluster, tmp_path)
    cut_over(as_account(cluster), ns, plan)
    before = snapshot(cluster, ns)
    code, _, output = cli(cluster, "swap", plan, "--in-cluster")
    assert code == 3
    assert "Error: the cluster has no CSIDriver seaweedfs-csi-driver" in output
    assert "docs/how-to/swap-and-rollback.md" in output
    assert snapshot(cluster, ns) == before
    assert cluster.get_object("v1", "PersistentVolume", None, f"{ns}-media-seaweedfs") is None
    assert cluster.forbidden() == []


def test_swap_and_rollback_need_a_place_to_change(cluster: Cluster, tmp_path: Path) -> None:
    plan = plan_of(cluster, tmp_path)
    for command in ("swap", "rollback"):
        code, _, output = cli(cluster, command, plan)
        assert code == 2
        assert "say where the claim references live: --values-file PATH" in output
    code, _, output = cli(
        cluster, "swap", plan, "--values-file", str(tmp_path / "missing.yaml"), "--force"
    )
    assert code == 2
    assert "does not exist" in output


def test_pvc_target_swap_needs_the_runs_claim(
    cluster: Cluster, csi_driver: None, tmp_path: Path
) -> None:
    ns = cluster.namespace
    plan = plan_of(cluster, tmp_path, "--target", "pvc:seaweedfs-storage")
    cut_over(as_account(cluster), ns, plan)
    before = snapshot(cluster, ns)
    code, summary, _ = cli(cluster, "swap", plan, "--in-cluster", "--timeout", "3", "--json")
    assert code == 3
    assert (
        "PersistentVolumeClaim media-seaweedfs-storage (the run's target) does not exist"
        in summary["volumes"][0]["message"]
    )
    assert {r["name"]: r["action"] for r in summary["releases"]}["sonarr"] == "left as is"
    after = snapshot(cluster, ns)  # media's releases and apps untouched: suspended, stopped
    for key in ("hr/sonarr", "hr/radarr", "deploy/sonarr", "deploy/radarr"):
        assert after[key] == before[key], key
    assert after["hr/sonarr"]["suspend"] is True and after["deploy/sonarr"]["replicas"] == 0
    assert cluster.get_object("v1", "PersistentVolume", None, f"{ns}-media-seaweedfs") is None
    assert cluster.forbidden() == []


def test_without_helm_controller_the_apps_stay_stopped_and_the_rest_say_why(
    cluster: Cluster, csi_driver: None, tmp_path: Path
) -> None:
    """This control plane runs no helm-controller: nothing re-renders the releases' Deployments
    after swap points their values at the new claim, so the apps that mount it stay stopped.
    An app that mounts nothing that moved is scaled back; with every node cordoned it does not
    become Ready, and the report says why with the scheduler's own events."""
    ns = cluster.namespace
    plan = plan_of(cluster, tmp_path)
    cut_over(as_account(cluster), ns, plan)
    nodes = [n["metadata"]["name"] for n in cluster.list_objects("v1", "Node")]
    try:  # the Nodes are shared by the whole session: cordoned for this test only
        for node in nodes:
            cluster.patch_object("v1", "Node", None, node, {"spec": {"unschedulable": True}})
        code, summary, output = cli(
            cluster, "swap", plan, "--in-cluster", "--timeout", "3", "--json"
        )
    finally:
        for node in nodes:
            cluster.patch_object("v1", "Node", None, node, {"spec": {"unschedulable": None}})
    assert code == 3, output
    outcome = {w["workload"]: w for w in summary["workloads"]}
    for app in ("sonarr", "radarr"):
        assert outcome[f"Deployment/{app}"]["action"] == "left stopped"
        assert (
            "still mounts media: helm-controller has not applied the values"
            in outcome[f"Deployment/{app}"]["message"]
        )
        assert cluster.get_object("apps/v1", "Deployment", ns, app)["spec"]["replicas"] == 0  # type: ignore[index]
        assert claims_of(cluster, app, ns) == {f"{app}-config", "media"}
        release = cluster.get_object(HR, "HelmRelease", ns, app)
        assert release is not None and "suspend" not in release["spec"]
        assert (
            release["spec"]["values"]["persistence"]["media"]["existingClaim"] == "media-seaweedfs"
        )
    prowlarr = outcome["Deployment/prowlarr"]
    assert (prowlarr["action"], prowlarr["ready"]) == ("scaled", False)
    assert prowlarr["message"] == "not Ready within the timeout (0/1 ready)"
    # kube-scheduler retries and stores the repeats apart from the first: one line all the same.
    scheduling = [e for e in prowlarr["events"] if "Warning FailedScheduling" in e]
    assert len(scheduling) == 1 and scheduling[0].startswith("Pod prowlarr-"), prowlarr["events"]
    assert cluster.get_object("apps/v1", "Deployment", ns, "prowlarr")["spec"]["replicas"] == 1  # type: ignore[index]
    assert cluster.forbidden() == []


# --- bringing the apps back: a helm-controller stand-in re-renders, the process kubelet runs -------


@pytest.fixture
def helm_controller(cluster: Cluster) -> Iterator[HelmControllerStandIn]:
    """The helm-controller stand-in (tests/controlplane/helm.py) on the test's namespace."""
    with HelmControllerStandIn(cluster) as running:
        yield running
    assert not running.errors, running.errors


def ready(cluster: Cluster, name: str) -> bool:
    deployment = cluster.get_object("apps/v1", "Deployment", cluster.namespace, name) or {}
    return bool(
        (deployment.get("status") or {}).get("readyReplicas", 0)
        >= deployment["spec"]["replicas"]
        > 0
    )


def apply_from_git(cluster: Cluster, text: str) -> None:
    """What Flux's kustomize-controller does after a push: the releases' values as in Git."""
    for document in yaml.safe_load_all(text):
        persistence = document["spec"]["values"]["persistence"]
        cluster.patch_object(
            HR,
            "HelmRelease",
            cluster.namespace,
            document["metadata"]["name"],
            {"spec": {"values": {"persistence": persistence}}},
        )


def test_swap_in_cluster_then_rollback_restores_everything(
    cluster: Cluster, csi_driver: None, helm_controller: HelmControllerStandIn, tmp_path: Path
) -> None:
    ns = cluster.namespace
    plan = plan_of(cluster, tmp_path)
    before = snapshot(cluster, ns)
    cut_over(as_account(cluster), ns, plan)
    code, summary, output = cli(cluster, "swap", plan, "--in-cluster", "--timeout", "60", "--json")
    assert code == 0, output
    assert [(v["volume"], v["status"], v["newClaim"]) for v in summary["volumes"]] == [
        ("media", "swapped", "media-seaweedfs")
    ]
    pv = cluster.get_object("v1", "PersistentVolume", None, f"{ns}-media-seaweedfs")
    pvc = cluster.get_object("v1", "PersistentVolumeClaim", ns, "media-seaweedfs")
    assert pv is not None and pvc is not None
    assert (
        pv["spec"]["csi"]["volumeAttributes"]["path"]
        == f"/buckets/{tenant_media.BUCKET_NAME}/migrated/media"
    )
    for app in ("sonarr", "radarr"):
        release = cluster.get_object(HR, "HelmRelease", ns, app)
        assert release is not None
        assert (
            release["spec"]["values"]["persistence"]["media"]["existingClaim"] == "media-seaweedfs"
        )
        assert "suspend" not in release["spec"]
        assert claims_of(cluster, app, ns) == {f"{app}-config", "media-seaweedfs"}
        assert ready(cluster, app)
    assert ready(cluster, "prowlarr")

    code, summary, output = cli(
        cluster, "rollback", plan, "--in-cluster", "--timeout", "60", "--json"
    )
    assert code == 0, output
    assert snapshot(cluster, ns) == before
    assert all(ready(cluster, app) for app in tenant_media.APPS)
    assert cluster.get_object("v1", "PersistentVolumeClaim", ns, "media-seaweedfs") is not None
    code, report, _ = cli(cluster, "status", plan, "--json")
    assert code == 0
    states = {v["volume"]: v["state"] for v in report["volumes"]}
    assert states == {
        "media": "rolled back",
        "prowlarr-config": "verified",
        "radarr-config": "verified",
        "sonarr-config": "verified",
    }
    assert cluster.forbidden() == []


def test_gitops_swap_then_rollback_of_a_flux_repo(
    cluster: Cluster, csi_driver: None, helm_controller: HelmControllerStandIn, tmp_path: Path
) -> None:
    """The whole GitOps round trip: the file is rewritten, the user pushes, Flux applies it, then
    --in-cluster starts the apps on the new claim; rollback restores file and cluster."""
    ns = cluster.namespace
    plan = plan_of(cluster, tmp_path)
    releases = tmp_path / "flux" / "apps" / "media" / "helmreleases.yaml"
    releases.parent.mkdir(parents=True)
    releases.write_text(FLUX_HELMRELEASES)
    before = snapshot(cluster, ns)
    cut_over(as_account(cluster), ns, plan)

    code, summary, output = cli(cluster, "swap", plan, "--values-file", str(releases), "--json")
    assert code == 0, output
    assert releases.read_text() == SWAPPED_HELMRELEASES
    assert (
        f"start the apps on the new claims: migrator swap --plan {plan.path} --in-cluster"
        in summary["next"]
    )
    apply_from_git(cluster, releases.read_text())  # the user pushed; Flux applied it
    code, summary, output = cli(cluster, "swap", plan, "--in-cluster", "--timeout", "60", "--json")
    assert code == 0, output
    assert summary["volumes"][0]["status"] == "swapped"
    assert summary["volumes"][0]["patches"] == []  # Git had already changed the values
    assert claims_of(cluster, "sonarr", ns) == {"sonarr-config", "media-seaweedfs"}
    assert all(ready(cluster, app) for app in tenant_media.APPS)

    code, summary, output = cli(
        cluster,
        "rollback",
        plan,
        "--values-file",
        str(releases),
        "--in-cluster",
        "--timeout",
        "60",
        "--json",
    )
    assert code == 0, output
    assert releases.read_bytes() == FLUX_HELMRELEASES.encode()
    assert snapshot(cluster, ns) == before
    assert summary["volumes"][0]["status"] == "rolled back"
    assert all(ready(cluster, app) for app in tenant_media.APPS)
    assert cluster.forbidden() == []


def test_values_from_a_configmap_are_rewritten_in_place(
    cluster: Cluster, csi_driver: None, helm_controller: HelmControllerStandIn, tmp_path: Path
) -> None:
    ns = cluster.namespace
    values = "# radarr values (configMapGenerator)\npersistence:\n  media:\n    enabled: true\n    existingClaim: media  # NFS\n"
    cluster.seed(
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "radarr-values", "namespace": ns},
                "data": {"values.yaml": values},
            }
        ]
    )
    cluster.patch_object(
        HR,
        "HelmRelease",
        ns,
        "radarr",
        {
            "spec": {
                "values": {"persistence": {"media": None}},
                "valuesFrom": [{"kind": "ConfigMap", "name": "radarr-values"}],
            }
        },
    )
    plan = plan_of(cluster, tmp_path)
    before = snapshot(cluster, ns)
    cut_over(as_account(cluster), ns, plan)
    code, summary, output = cli(cluster, "swap", plan, "--in-cluster", "--timeout", "60", "--json")
    assert code == 0, output
    data = cluster.get_object("v1", "ConfigMap", ns, "radarr-values")["data"]  # type: ignore[index]
    assert data["values.yaml"] == values.replace(
        "existingClaim: media ", "existingClaim: media-seaweedfs "
    )
    assert claims_of(cluster, "radarr", ns) == {"radarr-config", "media-seaweedfs"}
    assert ready(cluster, "radarr")
    assert {(p["target"], p["name"]) for p in summary["volumes"][0]["patches"]} == {
        ("HelmRelease", "sonarr"),
        ("ConfigMap", "radarr-values"),
    }
    code, _, output = cli(cluster, "rollback", plan, "--in-cluster", "--timeout", "60")
    assert code == 0, output
    assert snapshot(cluster, ns) == before
    assert cluster.forbidden() == []


def test_force_swaps_with_a_warning(
    cluster: Cluster, csi_driver: None, helm_controller: HelmControllerStandIn, tmp_path: Path
) -> None:
    plan = plan_of(cluster, tmp_path)
    cut_over(as_account(cluster), cluster.namespace, plan, verified=False)
    code, summary, output = cli(cluster, "swap", plan, "--in-cluster", "--timeout", "60", "--json")
    assert code != 0 and "found differences" in output, output  # refused without --force
    code, summary, output = cli(
        cluster, "swap", plan, "--in-cluster", "--force", "--timeout", "60", "--json"
    )
    assert code == 0, output
    assert (
        summary["warnings"][0]
        == "--force: swapping although the last verify of media found differences (2)"
    )
    assert ready(cluster, "sonarr") and ready(cluster, "radarr")


def test_partial_swap_keeps_the_failed_app_stopped_and_rollback_undoes_the_rest(
    cluster: Cluster, csi_driver: None, helm_controller: HelmControllerStandIn, tmp_path: Path
) -> None:
    ns = cluster.namespace
    plan = plan_of(cluster, tmp_path, "--move-config")
    squatter: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{ns}-sonarr-config-seaweedfs"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteMany"],
            "csi": {
                "driver": "seaweedfs-csi-driver",
                "volumeHandle": "x",
                "volumeAttributes": {"path": "/buckets/someone-else"},
            },
        },
    }
    cluster.seed([squatter])
    try:
        before = snapshot(cluster, ns)
        cut_over(as_account(cluster), ns, plan)
        code, summary, output = cli(
            cluster, "swap", plan, "--in-cluster", "--timeout", "60", "--json"
        )
        assert code == 3, output
        statuses = {v["volume"]: v["status"] for v in summary["volumes"]}
        assert statuses == {
            "media": "swapped",
            "prowlarr-config": "swapped",
            "radarr-config": "swapped",
            "sonarr-config": "failed",
        }
        failed = next(v for v in summary["volumes"] if v["volume"] == "sonarr-config")
        assert (
            "already exists and serves seaweedfs-csi-driver:/buckets/someone-else"
            in failed["message"]
        )
        assert {r["name"]: r["action"] for r in summary["releases"]} == {
            "prowlarr": "resumed",
            "radarr": "resumed",
            "sonarr": "left as is",
        }
        assert ready(cluster, "radarr") and ready(cluster, "prowlarr")
        assert claims_of(cluster, "radarr", ns) == {"radarr-config-seaweedfs", "media-seaweedfs"}
        sonarr = cluster.get_object("apps/v1", "Deployment", ns, "sonarr")
        assert sonarr["spec"]["replicas"] == 0  # type: ignore[index]
        assert cluster.get_object(HR, "HelmRelease", ns, "sonarr")["spec"]["suspend"] is True  # type: ignore[index]
        assert (
            f"Error: swap incomplete: sonarr-config: PersistentVolume {ns}-sonarr-config-seaweedfs already exists"
            in output
        )
        code, report, _ = cli(cluster, "status", plan, "--json")
        states = {v["volume"]: v["state"] for v in report["volumes"]}
        assert states["sonarr-config"] == "swap failed"

        code, summary, output = cli(
            cluster, "rollback", plan, "--in-cluster", "--timeout", "60", "--json"
        )
        assert code == 0, output
        assert {v["volume"]: v["status"] for v in summary["volumes"]} == dict.fromkeys(
            ("media", "prowlarr-config", "radarr-config", "sonarr-config"), "rolled back"
        )
        assert snapshot(cluster, ns) == before
        assert all(ready(cluster, app) for app in tenant_media.APPS)
        assert cluster.get_object("v1", "PersistentVolume", None, squatter["metadata"]["name"])
        assert cluster.forbidden() == []
    finally:  # cluster-scoped and bound to no claim: not removed with the namespace
        client.CoreV1Api(cluster.admin).delete_persistent_volume(squatter["metadata"]["name"])


def test_rollback_after_a_failed_cutover_starts_the_apps_again(
    cluster: Cluster, helm_controller: HelmControllerStandIn, tmp_path: Path
) -> None:
    ns, kube = cluster.namespace, as_account(cluster)
    plan = plan_of(cluster, tmp_path)
    before = snapshot(cluster, ns)
    cut_over(kube, ns, plan, verified=None)
    journal_of(kube, ns, plan).record("media", "cutover", "failed", message="rclone exited 1")
    assert not any(ready(cluster, app) for app in tenant_media.APPS)
    code, summary, output = cli(
        cluster, "rollback", plan, "--in-cluster", "--timeout", "60", "--json"
    )
    assert code == 0, output
    assert summary["nothingToDo"] is False
    assert {r["name"]: r["action"] for r in summary["releases"]} == dict.fromkeys(
        tenant_media.APPS, "resumed"
    )
    assert {w["workload"]: (w["action"], w["ready"]) for w in summary["workloads"]} == {
        f"Deployment/{app}": ("scaled", True) for app in tenant_media.APPS
    }
    assert snapshot(cluster, ns) == before
    assert all(ready(cluster, app) for app in tenant_media.APPS)

    code, summary, output = cli(cluster, "rollback", plan, "--in-cluster", "--json")
    assert code == 0, output
    assert summary["nothingToDo"] is True
    code, _, output = cli(cluster, "rollback", plan, "--in-cluster")
    assert "nothing to undo for phase all" in output
    assert cluster.forbidden() == []


def test_a_workload_that_does_not_become_ready_is_reported_with_its_events(
    cluster: Cluster, csi_driver: None, helm_controller: HelmControllerStandIn, tmp_path: Path
) -> None:
    """sonarr's new pod cannot mount its config claim (the kubelet reports FailedMount, as for a
    CSI node plugin that is not running): swap names it, with the kubelet's event."""
    ns = cluster.namespace
    plan = plan_of(cluster, tmp_path)
    cut_over(as_account(cluster), ns, plan)
    cluster.kubelet.unmountable.add((ns, "sonarr-config"))
    try:
        code, summary, output = cli(
            cluster, "swap", plan, "--in-cluster", "--timeout", "10", "--json"
        )
        assert code == 3, output
        sonarr = next(w for w in summary["workloads"] if w["workload"] == "Deployment/sonarr")
        assert sonarr["ready"] is False
        assert sonarr["message"] == "not Ready within the timeout (0/1 ready)"
        assert any(
            'Warning FailedMount: MountVolume.SetUp failed for volume "config"' in e
            for e in sonarr["events"]
        ), sonarr["events"]
        assert ready(cluster, "radarr")
        code, _, output = cli(cluster, "swap", plan, "--in-cluster", "--timeout", "3")
        assert code == 3
        assert "Error: swap incomplete: Deployment/sonarr: not Ready within the timeout" in output
        assert "FailedMount" in output
    finally:
        cluster.kubelet.unmountable.discard((ns, "sonarr-config"))


def test_without_helm_controller_the_apps_are_not_started_on_the_old_claim(
    cluster: Cluster, csi_driver: None, tmp_path: Path
) -> None:
    """No helm-controller at all (the cordoned variant above says why Pending apps are not
    Ready): the apps that mount the moved claim stay stopped, the other one is Ready again."""
    ns = cluster.namespace
    plan = plan_of(cluster, tmp_path)
    cut_over(as_account(cluster), ns, plan)
    code, summary, _ = cli(cluster, "swap", plan, "--in-cluster", "--timeout", "15", "--json")
    assert code == 3
    outcome = {w["workload"]: w for w in summary["workloads"]}
    assert outcome["Deployment/sonarr"]["action"] == "left stopped"
    assert (
        "still mounts media: helm-controller has not applied the values"
        in outcome["Deployment/sonarr"]["message"]
    )
    assert cluster.get_object("apps/v1", "Deployment", ns, "sonarr")["spec"]["replicas"] == 0  # type: ignore[index]
    assert outcome["Deployment/prowlarr"]["ready"] is True  # it mounts nothing that moved
    assert ready(cluster, "prowlarr")


def test_pvc_target_swaps_onto_the_runs_claim(
    cluster: Cluster, csi_driver: None, helm_controller: HelmControllerStandIn, tmp_path: Path
) -> None:
    from migrator.manifests.copy import build_target_claim

    ns = cluster.namespace
    plan = plan_of(cluster, tmp_path, "--target", "pvc:seaweedfs-storage")
    cut_over(as_account(cluster), ns, plan)
    cluster.seed([build_target_claim(plan.document, plan.volume("media"))])  # what the run made
    code, summary, output = cli(cluster, "swap", plan, "--in-cluster", "--timeout", "60", "--json")
    assert code == 0, output
    assert summary["volumes"][0]["newClaim"] == "media-seaweedfs-storage"
    assert claims_of(cluster, "radarr", ns) == {"radarr-config", "media-seaweedfs-storage"}
    assert ready(cluster, "radarr") and ready(cluster, "sonarr")
    assert cluster.get_object("v1", "PersistentVolume", None, f"{ns}-media-seaweedfs") is None
    assert cluster.forbidden() == []


def test_rollback_without_the_changed_files_is_partial_until_they_are_passed(
    cluster: Cluster, csi_driver: None, helm_controller: HelmControllerStandIn, tmp_path: Path
) -> None:
    ns = cluster.namespace
    plan = plan_of(cluster, tmp_path)
    releases = tmp_path / "helmreleases.yaml"
    releases.write_text(FLUX_HELMRELEASES)
    cut_over(as_account(cluster), ns, plan)
    code, _, output = cli(
        cluster, "swap", plan, "--values-file", str(releases), "--in-cluster", "--timeout", "60"
    )
    assert code == 0, output

    code, summary, output = cli(
        cluster, "rollback", plan, "--in-cluster", "--timeout", "60", "--json"
    )
    assert code == 3
    media = summary["volumes"][0]
    assert media["status"] == "partly rolled back"
    assert media["message"] == f"{releases} still name media-seaweedfs: re-run with --values-file"
    assert {w["workload"]: w["action"] for w in summary["workloads"]}[
        "Deployment/sonarr"
    ] == "left as is"
    release = cluster.get_object(HR, "HelmRelease", ns, "sonarr")
    assert release is not None
    assert release["spec"]["values"]["persistence"]["media"] == {
        "existingClaim": "media",
        "globalMounts": [{"path": "/media"}],
    }
    code, report, _ = cli(cluster, "status", plan, "--json")
    assert report["volumes"][0]["state"] == "partly rolled back"

    code, summary, output = cli(cluster, "rollback", plan, "--values-file", str(releases), "--json")
    assert code == 0, output
    assert summary["volumes"][0]["status"] == "rolled back"
    assert releases.read_text() == FLUX_HELMRELEASES
    code, report, _ = cli(cluster, "status", plan, "--json")
    assert report["volumes"][0]["state"] == "rolled back"
