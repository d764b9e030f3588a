"""Every pod migrator renders passes Pod Security ``baseline`` (what Talos enforces on every
namespace by default), and the checker of tests/kubeapi/pod_security.py is faithful."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from migrator.manifests import (
    build_restore_job,
    build_verify_job,
    render_backups,
    render_plan,
)
from migrator.plan import load_plan
from tests import tenant_media
from tests.helpers import run_cli
from tests.kubeapi import KubeAPIServer
from tests.kubeapi.pod_security import highest_level, violations

NS = tenant_media.NAMESPACE


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    """A tenant-media plan to an s3:// target and one to a pvc: target (no probe, no S3)."""
    root = tmp_path_factory.mktemp("podsec")
    with KubeAPIServer(root / "kubeapi") as api:
        api.seed(tenant_media.tenant_media())
        found = {}
        for target, name in (("s3://media/migrated", "s3"), ("pvc:seaweedfs-storage", "pvc")):
            extra = ["--s3-credentials-secret", tenant_media.SECRET_NAME] if name == "s3" else []
            result = run_cli(
                "plan", "-n", NS, "--kubeconfig", str(api.kubeconfig_path), "--target", target,
                "--no-probe", "--move-config", "--s3-endpoint", "https://s3.example:8333",
                "--backup-target", "s3://backups/media", "--out", str(root / f"{name}.yaml"),
                *extra, cwd=root,
            )  # fmt: skip
            assert result.exit_code == 0, result.output
            found[name] = load_plan(root / f"{name}.yaml").document
        yield found


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
def test_every_rendered_pod_passes_baseline(plans: dict[str, dict[str, Any]], target: str) -> None:
    templates = list(pod_templates(plans[target]))
    kinds = {name.split()[1].split("-")[1] for name, _ in templates}
    assert {"copy", "sync", "verify", "backup", "restore"} <= kinds, kinds
    for name, template in templates:
        problems = violations("baseline", template.get("metadata") or {}, template["spec"])
        assert problems == [], f"{name}: {problems}"


@pytest.mark.parametrize("target", ["s3", "pvc"])
def test_no_agent_pod_mounts_a_service_account_token(
    plans: dict[str, dict[str, Any]], target: str
) -> None:
    for name, template in pod_templates(plans[target]):
        assert template["spec"].get("automountServiceAccountToken") is False, name


# --- the checker itself, against the standard's own examples ---------------------------------


def pod(**container_context: Any) -> dict[str, Any]:
    return {
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "c", "image": "x", "securityContext": container_context}],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
    }


RESTRICTED_OK = {
    "runAsNonRoot": True,
    "runAsUser": 911,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


def test_checker_levels_follow_the_standard() -> None:
    assert highest_level({}, pod(**RESTRICTED_OK)) == "restricted"
    assert highest_level({}, pod()) == "baseline"  # the default pod is baseline
    root_reader = pod(runAsUser=0, capabilities={"drop": ["ALL"], "add": ["DAC_OVERRIDE"]})
    assert highest_level({}, root_reader) == "baseline"
    searcher = pod(capabilities={"add": ["DAC_READ_SEARCH"]})
    assert violations("baseline", {}, searcher) == [
        'non-default capabilities (container "c" must not include "DAC_READ_SEARCH" in '
        "securityContext.capabilities.add)"
    ]
    host = pod()
    host["volumes"].append({"name": "ca", "hostPath": {"path": "/etc/ssl"}})
    assert violations("baseline", {}, host) == ['hostPath volumes (volume "ca")']
    unconfined = pod()
    unconfined["securityContext"] = {"seccompProfile": {"type": "Unconfined"}}
    assert highest_level({}, unconfined) == "privileged"
    assert highest_level({}, {**pod(), "hostNetwork": True}) == "privileged"
    assert highest_level({}, pod(privileged=True)) == "privileged"
    no_seccomp = pod(**RESTRICTED_OK)
    del no_seccomp["securityContext"]
    assert violations("restricted", {}, no_seccomp) == [
        'seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to '
        '"RuntimeDefault" or "Localhost")'
    ]
    nfs = pod(**RESTRICTED_OK)
    nfs["volumes"] = [{"name": "media", "nfs": {"server": "nas", "path": "/"}}]
    assert violations("restricted", {}, nfs) == [
        'restricted volume types (volume "media" uses a restricted volume type)'
    ]
    as_root = pod(**{**RESTRICTED_OK, "runAsUser": 0})
    assert violations("restricted", {}, as_root) == [
        'runAsUser=0 (container "c" must not set runAsUser=0)'
    ]


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


def plan_in(root: Path, objects: list[dict[str, Any]], *extra: str) -> dict[str, Any]:
    with KubeAPIServer(root / "kubeapi") as api:
        api.seed(objects)
        out = root / "plan.yaml"
        result = run_cli(
            "plan", "-n", NS, "--kubeconfig", str(api.kubeconfig_path),
            "--target", "s3://media/migrated", "--s3-credentials-secret", tenant_media.SECRET_NAME,
            "--no-probe", "--s3-endpoint", "https://s3.example:8333",
            "--backup-target", "s3://backups/media", "--out", str(out), *extra, cwd=root,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return load_plan(out).document


def restricted_namespace(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for item in objects:
        if item["kind"] == "Namespace" and item["metadata"]["name"] == NS:
            item["metadata"]["labels"] = {"pod-security.kubernetes.io/enforce": "restricted"}
    return objects


def test_a_restricted_namespace_gets_agents_running_as_the_apps_users(tmp_path: Path) -> None:
    plan = plan_in(tmp_path, restricted_namespace(tenant_media.tenant_media()))
    assert plan["spec"]["podSecurity"] == {
        "level": "restricted",
        "reason": f"namespace {NS} enforces restricted (pod-security.kubernetes.io/enforce)",
    }
    users = {}
    for name, template in pod_templates(plan):
        problems = violations("restricted", template.get("metadata") or {}, template["spec"])
        assert problems == [], f"{name}: {problems}"
        [container] = template["spec"]["containers"]
        users[name] = container["securityContext"]["runAsUser"]
    # linuxserver sonarr/radarr (and the media they share) run as 911, hotio prowlarr as 1000
    assert users["Job migrator-copy-sonarr-config"] == 911
    assert users["Job migrator-sync-media"] == 911
    assert users["Job migrator-verify-prowlarr-config"] == 1000
    assert users["Job migrator-restore-prowlarr-config"] == 1000
    assert not [w for w in plan["spec"]["warnings"] if w["code"] == "restricted-root-agent"]


def test_restricted_mode_names_volumes_it_cannot_read_as_their_owner(tmp_path: Path) -> None:
    objects = tenant_media.tenant_media()
    for item in objects:
        if item["kind"] == "Deployment" and item["metadata"]["name"] == "prowlarr":
            pod_spec = item["spec"]["template"]["spec"]
            pod_spec.pop("securityContext", None)
            pod_spec["containers"][0]["env"] = []  # no PUID, no runAsUser, no fsGroup
    plan = plan_in(tmp_path, objects, "--pod-security", "restricted")
    assert plan["spec"]["podSecurity"]["reason"] == "--pod-security restricted"
    [finding] = [w for w in plan["spec"]["warnings"] if w["code"] == "restricted-root-agent"]
    assert finding["volume"] == "prowlarr-config"
    assert "Deployment/prowlarr sets no runAsUser, fsGroup or PUID" in finding["message"]
    levels = {name: highest_level({}, t["spec"]) for name, t in pod_templates(plan)}
    assert levels["Job migrator-copy-prowlarr-config"] == "baseline"  # root: baseline only
    assert levels["Job migrator-copy-sonarr-config"] == "restricted"


def test_baseline_is_the_default_and_can_be_forced(tmp_path: Path) -> None:
    objects = restricted_namespace(tenant_media.tenant_media())
    plan = plan_in(tmp_path, objects, "--pod-security", "baseline")
    assert plan["spec"]["podSecurity"] == {"level": "baseline", "reason": "--pod-security baseline"}
    for name, template in pod_templates(plan):
        assert highest_level({}, template["spec"]) == "baseline", name
