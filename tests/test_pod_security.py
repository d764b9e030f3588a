"""Every pod migrator renders keeps to Pod Security as Talos and hardened Cozystack tenants
enforce it: judged by the real API server's admission (server-side dry run), for plans made
against tenant-media on the real control plane."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from migrator.manifests.backup import build_restore_job, render_backups
from migrator.manifests.copy import render_plan
from migrator.manifests.verify import build_verify_job
from migrator.plan import load_plan
from tests import tenant_media
from tests.conftest import BASELINE
from tests.controlplane import ControlPlane
from tests.controlplane.cluster import Cluster, unique_namespace
from tests.helpers import run_cli
from tests.kubelet.process import ProcessKubelet
from tests.test_pod_security_apiserver import _api, _namespace, admission_refusal, pod_of

RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}


def make_plan(cluster: Cluster, root: Path, *extra: str, name: str = "plan") -> dict[str, Any]:
    out = root / f"{name}.yaml"
    result = run_cli(
        "plan",
        "-n",
        cluster.namespace,
        "--kubeconfig",
        str(cluster.kubeconfig_path),
        "--no-probe",
        "--s3-endpoint",
        "https://s3.example:8333",
        "--backup-target",
        "s3://backups/media",
        "--out",
        str(out),
        *extra,
        cwd=root,
    )
    assert result.exit_code == 0, result.output
    return load_plan(out).document


def tenant_in(
    plane: ControlPlane,
    kubelet: ProcessKubelet,
    root: Path,
    labels: dict[str, str],
    change: Callable[[list[dict[str, Any]]], None] | None = None,
) -> Cluster:
    """tenant-media in a fresh namespace with ``labels``; ``change`` edits the objects first."""
    cluster = Cluster(plane, unique_namespace(), root / "cluster", kubelet)
    cluster.create_namespace(labels)
    objects = copy.deepcopy(tenant_media.tenant_media(ns=cluster.namespace, with_nodes=False)[1:])
    if change is not None:
        change(objects)
    cluster.seed(objects)
    return cluster


@pytest.fixture(scope="module")
def plans(
    control_plane: ControlPlane, kubelet: ProcessKubelet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, dict[str, Any]]]:
    """A tenant-media plan to an s3:// target and one to a pvc: target (no probe, no S3)."""
    root = tmp_path_factory.mktemp("podsec")
    cluster = tenant_in(control_plane, kubelet, root, BASELINE)
    s3 = ["--target", "s3://media/migrated", "--s3-credentials-secret", tenant_media.SECRET_NAME]
    found = {
        "s3": make_plan(cluster, root, *s3, "--move-config", name="s3"),
        "pvc": make_plan(
            cluster, root, "--target", "pvc:seaweedfs-storage", "--move-config", name="pvc"
        ),
    }
    yield found
    cluster.delete()


@pytest.fixture(scope="module")
def judges(control_plane: ControlPlane) -> Iterator[dict[str, str]]:
    """Namespaces enforcing each level, for the API server to judge pods in (dry run)."""
    names = {level: unique_namespace(f"podsec-{level}") for level in ("baseline", "restricted")}
    made = [_namespace(control_plane, name, level) for level, name in names.items()]
    for namespace in made:
        next(namespace)
    yield names
    for namespace in made:
        next(namespace, None)


def level_of(core: client.CoreV1Api, judges: dict[str, str], template: dict[str, Any]) -> str:
    """The highest Pod Security level whose enforcing namespace admits the pod template."""
    pod = {"metadata": template.get("metadata") or {}, "spec": template["spec"]}
    for level in ("restricted", "baseline"):
        manifest = {"kind": "Job", "spec": {"template": pod}}
        if admission_refusal(core, judges[level], pod_of(manifest, "judged")) is None:
            return level
    return "privileged"


def pod_templates(plan: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(description, pod template) of every Job and CronJob migrator renders for ``plan``."""
    objects = list(render_plan(plan).values())
    objects += list(render_backups(plan, drill_schedule="30 4 * * 0").values())
    for volume in plan["spec"]["volumes"]:
        objects.append(build_verify_job(plan, volume))
        if volume["role"] == "config":
            objects.append(build_restore_job(plan, volume, "latest", volume["source"]["pvc"]))
    for manifest in objects:
        spec = manifest["spec"]
        if manifest["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if "template" in spec:
            yield f"{manifest['kind']} {manifest['metadata']['name']}", spec["template"]


@pytest.mark.parametrize("target", ["s3", "pvc"])
def test_no_agent_pod_mounts_a_service_account_token(
    plans: dict[str, dict[str, Any]], target: str
) -> None:
    for name, template in pod_templates(plans[target]):
        assert template["spec"].get("automountServiceAccountToken") is False, name


def test_sources_mounted_read_only_in_every_agent(plans: dict[str, dict[str, Any]]) -> None:
    for name, template in pod_templates(plans["s3"]):
        claims = {
            v["name"]: v["persistentVolumeClaim"]
            for v in template["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        }
        for volume_name, claim in claims.items():
            if volume_name.startswith("source"):
                assert claim.get("readOnly") is True, name


# --- restricted mode ----------------------------------------------------------------------------


S3_TARGET = ["--target", "s3://media/migrated", "--s3-credentials-secret", tenant_media.SECRET_NAME]


def test_a_restricted_namespace_gets_agents_running_as_the_apps_users(
    control_plane: ControlPlane, kubelet: ProcessKubelet, judges: dict[str, str], tmp_path: Path
) -> None:
    cluster = tenant_in(control_plane, kubelet, tmp_path, RESTRICTED)
    try:
        plan = make_plan(cluster, tmp_path, *S3_TARGET)
    finally:
        cluster.delete()
    ns = cluster.namespace
    assert plan["spec"]["podSecurity"] == {
        "level": "restricted",
        "reason": f"namespace {ns} enforces restricted (pod-security.kubernetes.io/enforce)",
    }
    core = _api(control_plane)
    users = {}
    for name, template in pod_templates(plan):
        assert level_of(core, judges, template) == "restricted", name
        [container] = template["spec"]["containers"]
        users[name] = container["securityContext"]["runAsUser"]
    # linuxserver sonarr/radarr (and the media they share) run as 911, hotio prowlarr as 1000
    assert users["Job migrator-copy-sonarr-config"] == 911
    assert users["Job migrator-sync-media"] == 911
    assert users["Job migrator-verify-prowlarr-config"] == 1000
    assert users["Job migrator-restore-prowlarr-config"] == 1000
    assert not [w for w in plan["spec"]["warnings"] if w["code"] == "restricted-root-agent"]


def test_restricted_mode_names_volumes_it_cannot_read_as_their_owner(
    control_plane: ControlPlane, kubelet: ProcessKubelet, judges: dict[str, str], tmp_path: Path
) -> None:
    def anonymous_prowlarr(objects: list[dict[str, Any]]) -> None:
        for item in objects:
            if item["kind"] == "Deployment" and item["metadata"]["name"] == "prowlarr":
                pod_spec = item["spec"]["template"]["spec"]
                pod_spec.pop("securityContext", None)
                pod_spec["containers"][0]["env"] = []  # no PUID, no runAsUser, no fsGroup

    cluster = tenant_in(control_plane, kubelet, tmp_path, BASELINE, anonymous_prowlarr)
    try:
        plan = make_plan(cluster, tmp_path, *S3_TARGET, "--pod-security", "restricted")
    finally:
        cluster.delete()
    assert plan["spec"]["podSecurity"]["reason"] == "--pod-security restricted"
    [finding] = [w for w in plan["spec"]["warnings"] if w["code"] == "restricted-root-agent"]
    assert finding["volume"] == "prowlarr-config"
    assert "Deployment/prowlarr sets no runAsUser, fsGroup or PUID" in finding["message"]
    core = _api(control_plane)
    levels = {name: level_of(core, judges, t) for name, t in pod_templates(plan)}
    assert levels["Job migrator-copy-prowlarr-config"] == "baseline"  # root: baseline only
    assert levels["Job migrator-copy-sonarr-config"] == "restricted"


def test_baseline_is_the_default_and_can_be_forced(
    control_plane: ControlPlane, kubelet: ProcessKubelet, judges: dict[str, str], tmp_path: Path
) -> None:
    cluster = tenant_in(control_plane, kubelet, tmp_path, RESTRICTED)
    try:
        plan = make_plan(cluster, tmp_path, *S3_TARGET, "--pod-security", "baseline")
    finally:
        cluster.delete()
    assert plan["spec"]["podSecurity"] == {"level": "baseline", "reason": "--pod-security baseline"}
    core = _api(control_plane)
    for name, template in pod_templates(plan):
        assert level_of(core, judges, template) == "baseline", name
