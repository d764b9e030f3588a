"""Every pod migrator renders, submitted to a real kube-apiserver that enforces Pod Security.

The plan and the manifests come from the product as a user makes them (``migrator plan`` against
tenant-media on the real control plane, ``migrator backup install --out``, and the library's verify and
restore Job builders); admission is the real one: the pod templates are created as Pods with a
server-side dry run in a namespace labelled ``pod-security.kubernetes.io/enforce``, as Talos labels
every namespace by default.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from migrator.manifests.backup import build_restore_job
from migrator.manifests.verify import build_verify_job
from tests import tenant_media
from tests.conftest import BASELINE
from tests.controlplane import ControlPlane
from tests.controlplane.cluster import Cluster, unique_namespace
from tests.helpers import load_yaml, run_cli
from tests.kubelet.process import ProcessKubelet

NS = tenant_media.NAMESPACE


def _api(plane: ControlPlane) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(str(plane.kubeconfig_path)))


def _namespace(plane: ControlPlane, name: str, level: str) -> Iterator[str]:
    core = _api(plane)
    labels = {
        "pod-security.kubernetes.io/enforce": level,
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    core.create_namespace({"metadata": {"name": name, "labels": labels}})
    # The controller manager makes the namespace's default ServiceAccount; the pods below need
    # it now, so make it first if it has not (one of the two creates gets 409 Conflict).
    try:
        core.create_namespaced_service_account(name, {"metadata": {"name": "default"}})
    except ApiException as error:
        if error.status != 409:
            raise
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="module")
def baseline_namespace(control_plane: ControlPlane) -> Iterator[str]:
    """tenant-media on the real API server, enforcing ``baseline`` as Talos does by default."""
    yield from _namespace(control_plane, NS, "baseline")


@pytest.fixture(scope="module")
def restricted_namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A hardened tenant enforcing ``restricted``."""
    yield from _namespace(control_plane, "tenant-hardened", "restricted")


@pytest.fixture(scope="module")
def tenant(
    control_plane: ControlPlane, kubelet: ProcessKubelet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """tenant-media on the real control plane (its apps running), that plans are made against."""
    cluster = Cluster(control_plane, unique_namespace(), tmp_path_factory.mktemp("tenant"), kubelet)
    cluster.create_namespace(BASELINE)
    cluster.seed(tenant_media.tenant_media(ns=cluster.namespace, with_nodes=False)[1:])
    cluster.settle()
    yield cluster
    cluster.delete()


def rendered_manifests(tenant: Cluster, root: Path, target: list[str]) -> dict[str, dict[str, Any]]:
    return rendered(tenant, root, target)[1]


def rendered(
    tenant: Cluster, root: Path, target: list[str]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Every Job and CronJob a plan leads to, by name, made through the CLI where it writes them."""
    ns = tenant.namespace
    result = run_cli(
        "plan",
        "-n",
        ns,
        "--kubeconfig",
        str(tenant.kubeconfig_path),
        *target,
        "--backup-target",
        "s3://media/backups",
        cwd=root,
    )
    assert result.exit_code == 0, result.output
    plan_path = root / "plans" / f"{ns}.yaml"
    out = root / "backups"
    result = run_cli(
        "backup", "install", "--plan", str(plan_path), "--drill", "weekly", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    manifests: dict[str, dict[str, Any]] = {}
    for path in sorted([*(root / "jobs" / ns).glob("*.yaml"), *out.glob("migrator-*.yaml")]):
        document = load_yaml(path)
        if document["kind"] in ("Job", "CronJob"):
            manifests[path.name] = document
    plan = load_yaml(plan_path)
    for volume in plan["spec"]["volumes"]:
        verify = build_verify_job(plan, volume)
        manifests[verify["metadata"]["name"]] = verify
        if volume["role"] == "config":
            restore = build_restore_job(plan, volume, "latest", volume["source"]["pvc"])
            manifests[restore["metadata"]["name"]] = restore
    return plan, manifests


def pod_of(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    """The Pod a Job or CronJob would create from its template."""
    spec = manifest["spec"]
    template = (
        spec["jobTemplate"]["spec"]["template"]
        if manifest["kind"] == "CronJob"
        else spec["template"]
    )
    metadata = {"name": name, "labels": template.get("metadata", {}).get("labels", {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}


def admission_refusal(core: client.CoreV1Api, namespace: str, pod: dict[str, Any]) -> str | None:
    """None when the API server admits the pod (dry run), else its refusal."""
    try:
        core.create_namespaced_pod(namespace, pod, dry_run="All")
    except ApiException as error:
        return f"{error.status}: {error.body}"
    return None


TARGETS = {
    "s3": ["--target", "s3://media/migrated", "--s3-credentials-secret", tenant_media.SECRET_NAME],
    "pvc": ["--target", "pvc:local"],
}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_rendered_pod_passes_baseline_admission(
    control_plane: ControlPlane,
    tenant: Cluster,
    baseline_namespace: str,
    tmp_path: Path,
    target: str,
) -> None:
    manifests = rendered_manifests(tenant, tmp_path, TARGETS[target])
    assert len(manifests) >= 10, sorted(manifests)  # copy, cutover, verify, backup, drill, restore
    core = _api(control_plane)
    refused = {}
    for index, (name, manifest) in enumerate(sorted(manifests.items())):
        refusal = admission_refusal(core, baseline_namespace, pod_of(manifest, f"pod-{index}"))
        if refusal:
            refused[name] = refusal
    assert refused == {}, f"Pod Security baseline refused {len(refused)} pods: {refused}"


def test_the_api_server_enforces_baseline_on_what_was_rendered(
    control_plane: ControlPlane, tenant: Cluster, baseline_namespace: str, tmp_path: Path
) -> None:
    """The control: the same pods with a capability baseline forbids are refused, by name."""
    manifests = rendered_manifests(tenant, tmp_path, TARGETS["s3"])
    name, manifest = sorted(manifests.items())[0]
    pod = pod_of(manifest, "forbidden")
    pod["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = ["DAC_READ_SEARCH"]
    refusal = admission_refusal(_api(control_plane), baseline_namespace, pod)
    assert refusal is not None, f"{name} with DAC_READ_SEARCH was admitted"
    assert refusal.startswith("403") and 'violates PodSecurity \\"baseline:latest\\"' in refusal
    assert "DAC_READ_SEARCH" in refusal


def test_restricted_mode_pods_pass_restricted_admission_but_for_those_the_plan_names(
    control_plane: ControlPlane,
    tenant: Cluster,
    restricted_namespace: str,
    baseline_namespace: str,
    tmp_path: Path,
) -> None:
    """--pod-security restricted: agents run as the apps' users and a restricted namespace admits
    them; a volume read by apps of different users (media) keeps a root agent, which the plan
    names, and which only baseline admits."""
    plan, manifests = rendered(tenant, tmp_path, [*TARGETS["s3"], "--pod-security", "restricted"])
    named = {w["volume"] for w in plan["spec"]["warnings"] if w["code"] == "restricted-root-agent"}
    core = _api(control_plane)
    admitted, refused = set(), {}
    for index, (name, manifest) in enumerate(sorted(manifests.items())):
        volume = manifest["metadata"]["labels"].get("migrator.cozystack.io/volume")
        pod = pod_of(manifest, f"pod-{index}")
        refusal = admission_refusal(core, restricted_namespace, pod)
        if refusal is None:
            admitted.add(name)
        else:
            refused[name] = (volume, refusal)
            assert admission_refusal(core, baseline_namespace, pod) is None, name
    assert {volume for volume, _ in refused.values()} <= named, refused
    assert any("sonarr-config" in name for name in admitted), sorted(admitted)
    assert len(admitted) >= 8, (sorted(admitted), refused)
