"""An agent image that exists: `plan` names the image the Jobs will run and warns about the
unpublished default; the publish workflow and the docs show how to build and push one."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from migrator import __version__
from migrator.planner import DEFAULT_IMAGE
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent
OWN_IMAGE = "registry.example/me/migrator-agent:0.1.0"


def plan(tmp_path: Path, *extra: str) -> Any:
    source = tmp_path / "config"
    source.mkdir(exist_ok=True)
    (source / "config.xml").write_text("<Config/>")
    return run_cli(
        "plan",
        "--source-dir",
        f"sonarr-config={source}",
        "--target",
        "s3://media",
        "--s3-endpoint",
        "http://127.0.0.1:9",
        "--no-probe",
        *extra,
        cwd=tmp_path,
    )


def test_plan_prints_the_default_image_and_warns_it_may_not_exist(tmp_path: Path) -> None:
    result = plan(tmp_path)
    assert result.exit_code == 0, result.output
    assert f"Agent image: {DEFAULT_IMAGE}" in result.output
    assert "[default-agent-image]" in result.output
    assert "Pod Security: baseline (default)" in result.output
    assert "--image REGISTRY/migrator-agent:TAG" in result.output
    document = json.loads(plan(tmp_path, "--json").stdout)
    assert (
        document["spec"]["image"]
        == DEFAULT_IMAGE
        == f"ghcr.io/cozystack/migrator-agent:{__version__}"
    )
    assert "default-agent-image" in {w["code"] for w in document["spec"]["warnings"]}


def test_plan_with_an_own_image_uses_it_everywhere_without_the_warning(tmp_path: Path) -> None:
    result = plan(tmp_path, "--image", OWN_IMAGE)
    assert result.exit_code == 0, result.output
    assert f"Agent image: {OWN_IMAGE}" in result.output
    assert "default-agent-image" not in result.output
    for path in (tmp_path / "jobs").rglob("*.yaml"):
        manifest = yaml.safe_load(path.read_text())
        if manifest.get("kind") == "Job":
            [container] = manifest["spec"]["template"]["spec"]["containers"]
            assert container["image"] == OWN_IMAGE


def test_publish_workflow_builds_both_architectures_under_the_running_owner() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "publish.yaml").read_text())
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    [build] = [s for s in steps if str(s.get("uses", "")).startswith("docker/build-push-action@")]
    assert build["with"]["file"] == "jobs/Containerfile"
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert any(str(s.get("uses", "")).startswith("docker/setup-qemu-action@") for s in steps)
    tags = str(build["with"]["tags"])
    assert (
        "ghcr.io/${{ steps.meta.outputs.owner }}/migrator-agent:${{ steps.meta.outputs.version }}"
        in tags
    )
    [meta] = [s for s in steps if s.get("id") == "meta"]
    assert "GITHUB_REPOSITORY_OWNER" in meta["run"] and "pyproject.toml" in meta["run"]
    # nothing hard-codes an owner: a fork publishes to its own namespace
    assert "cozystack" not in (ROOT / ".github" / "workflows" / "publish.yaml").read_text()


def test_readme_and_cozystack_how_to_show_build_push_and_image() -> None:
    for path in (ROOT / "README.md", ROOT / "docs" / "how-to" / "cozystack-migration.md"):
        text = path.read_text()
        assert re.search(r"(podman|docker) build[^\n]*-f jobs/Containerfile", text), path
        assert re.search(r"(podman|docker) push ", text), path
        assert "--image " in text, path
