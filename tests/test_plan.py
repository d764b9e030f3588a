"""The plan document: schema, round trip, `migrator plan --check`."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from migrator.errors import InvalidPlanError
from migrator.plan import backup_location, fill_defaults, load_plan, schema, validate_document
from tests.helpers import run_cli
from tests.test_plan_local import make_config_dir, make_media_dir


@pytest.fixture
def plan_path(tmp_path: Path) -> Path:
    config = make_config_dir(tmp_path / "sonarr")
    media = make_media_dir(tmp_path / "media")
    result = run_cli(
        "plan",
        "--source-dir",
        f"sonarr-config={config}",
        "--source-dir",
        f"media={media}",
        "--target",
        "s3://media/x",
        "--s3-endpoint",
        "http://127.0.0.1:9",
        "--no-probe",
        "--backup-target",
        "s3://backups/arr",
        cwd=tmp_path,
    )
    assert result.exit_code == 0, result.output
    return tmp_path / "plans" / "local.yaml"


def test_every_schema_field_has_a_description_and_an_example() -> None:
    missing = []

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for name, sub in (node.get("properties") or {}).items():
                if "description" not in sub:
                    missing.append(f"{path}.{name}: description")
                if (
                    "examples" not in sub
                    and sub.get("type") not in ("object", "array")
                    and "$ref" not in sub
                ):
                    missing.append(f"{path}.{name}: examples")
                walk(sub, f"{path}.{name}")
            for key in ("items", "$defs"):
                if key in node:
                    walk(node[key], f"{path}.{key}")
            if (
                "$defs" not in node
                and all(isinstance(v, dict) for v in node.values())
                and path.endswith("$defs")
            ):
                for name, sub in node.items():
                    walk(sub, f"{path}.{name}")

    walk(schema(), "")
    assert missing == []


def test_round_trip_load_and_check(plan_path: Path) -> None:
    plan = load_plan(plan_path)
    assert plan.name == "local"
    assert [v["name"] for v in plan.volumes] == ["media", "sonarr-config"]
    assert plan.spec["backup"] == {"url": "s3://backups/arr", "bucket": "backups", "prefix": "arr"}
    assert [v["name"] for v in plan.volumes_for_phase("config")] == ["sonarr-config"]
    assert plan.jobs_dir == plan_path.parent.parent / "jobs" / "local"
    result = run_cli("plan", "--check", str(plan_path))
    assert result.exit_code == 0
    assert "valid plan" in result.output


def test_check_reports_every_error_at_once(plan_path: Path) -> None:
    document = yaml.safe_load(plan_path.read_text())
    document["spec"]["volumes"][1]["target"] = "s3://nowhere"
    document["spec"]["volumes"][0]["role"] = "archive"
    document["spec"]["bogus"] = 1
    plan_path.write_text(yaml.safe_dump(document))
    result = run_cli("plan", "--check", str(plan_path))
    assert result.exit_code == 2
    assert "At 'spec': unknown field ('bogus' was unexpected)" in result.output
    assert "At 'spec.volumes[0].role': 'archive' is not one of config, media" in result.output
    assert "At 'spec.volumes[1].target': 's3://nowhere' is not of type 'object'" in result.output
    assert (
        result.output.strip().splitlines()[-1]
        == f"Error: {plan_path} is not a valid plan (3 problems)"
    )
    as_json = json.loads(
        run_cli("plan", "--check", str(plan_path), "--json").stdout.split("\nError")[0]
    )
    assert as_json["ok"] is False and len(as_json["problems"]) == 3


def test_malformed_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed\n")
    with pytest.raises(InvalidPlanError, match="not valid YAML at line 2"):
        load_plan(bad)
    result = run_cli("plan", "--check", str(bad))
    assert result.exit_code == 2
    result = run_cli("plan", "--check", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert result.output == f"Error: plan file '{tmp_path / 'nope.yaml'}' does not exist\n"


def test_plan_holds_no_secret_values(plan_path: Path) -> None:
    text = plan_path.read_text()
    assert "secretKey:" not in text and "AWS_SECRET" not in text
    assert validate_document(yaml.safe_load(text)) == []


# --- defaults: the schema's, filled in when a plan is loaded, never written into the file -----

HAND_WRITTEN: dict[str, Any] = {
    "apiVersion": "migrator.cozystack.io/v1alpha1",
    "kind": "MigrationPlan",
    "metadata": {"name": "hand"},
    "spec": {
        "source": {"mode": "local"},
        "target": {"type": "s3", "bucket": "media", "endpoint": "http://127.0.0.1:9"},
        "backup": {"url": "s3://media/backups"},
        "image": "registry.example/migrator-agent:1",
        "volumes": [
            {
                "name": name,
                "role": role,
                "action": "copy" if role == "config" else "move",
                "source": {"path": f"/srv/{name}"},
                "target": {"url": f"s3://media/{name}"},
                "copy": {
                    "tool": "rclone",
                    "shards": 1,
                    "jobs": {"preseed": f"copy-{name}.yaml", "cutover": f"sync-{name}.yaml"},
                },
            }
            for name, role in (("media", "media"), ("sonarr-config", "config"))
        ],
    },
}


def test_fill_defaults_follows_objects_items_and_refs() -> None:
    synthetic = {
        "type": "object",
        "properties": {
            "mode": {"type": "string", "default": "fast"},
            "limits": {
                "type": "object",
                "default": {},
                "properties": {"cpu": {"type": "integer", "default": 2}},
            },
            "parts": {"type": "array", "items": {"$ref": "#/$defs/part"}},
        },
        "$defs": {"part": {"properties": {"tags": {"type": "array", "default": []}}}},
    }
    instance: dict[str, Any] = {"mode": "slow", "parts": [{}, {"tags": ["x"]}, {}]}
    fill_defaults(synthetic, instance, synthetic)
    assert instance == {
        "mode": "slow",  # given: kept
        "parts": [{"tags": []}, {"tags": ["x"]}, {"tags": []}],
        "limits": {"cpu": 2},  # a default object gets the defaults of its own fields
    }
    instance["parts"][0]["tags"].append("y")
    assert instance["parts"][2]["tags"] == []  # each gets its own copy of a default


def test_a_loaded_plan_has_every_default_and_its_file_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "plans" / "hand.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(HAND_WRITTEN, sort_keys=False))
    before = path.read_bytes()
    plan = load_plan(path)
    spec = plan.model["spec"]
    assert spec["target"]["prefix"] == ""
    assert "prefix" not in spec["backup"]  # no default: without a bucket it comes from the url
    assert backup_location(spec["backup"]) == ("media", "backups")
    assert spec["target"]["credentialsSecret"] == "migrator-s3-credentials"
    assert spec["podSecurity"] == {"level": "baseline", "reason": "default"}
    assert (spec["moveConfig"], spec["releases"], spec["warnings"]) == (False, [], [])
    assert [v["workloads"] for v in spec["volumes"]] == [[], []]
    assert "jobsDir" not in spec and plan.jobs_dir == tmp_path / "jobs" / "hand"
    assert validate_document(plan.model) == []  # the defaults are valid values
    assert path.read_bytes() == before
    assert run_cli("plan", "--check", str(path)).exit_code == 0


def test_defaults_of_the_schema_are_what_the_builders_assume(tmp_path: Path) -> None:
    """manifests.py still restates some of them (until it reads the model, #14): a plan that
    leaves them out renders the same Jobs as loaded, where the schema filled them in."""
    from migrator.manifests.copy import render_plan
    from migrator.manifests.verify import verify_command

    path = tmp_path / "hand.yaml"
    path.write_text(yaml.safe_dump(HAND_WRITTEN, sort_keys=False))
    loaded = load_plan(path).document
    raw = copy.deepcopy(HAND_WRITTEN)
    assert render_plan(loaded) == render_plan(raw)
    for volume, raw_volume in zip(loaded["spec"]["volumes"], raw["spec"]["volumes"], strict=True):
        assert verify_command(loaded, volume, None, True, True) == verify_command(
            raw, raw_volume, None, True, True
        )


def test_the_planner_writes_no_defaults_and_json_is_the_file(tmp_path: Path) -> None:
    config = make_config_dir(tmp_path / "sonarr")
    result = run_cli(
        "plan",
        "--source-dir",
        f"sonarr-config={config}",
        "--target",
        "s3://media",
        "--s3-endpoint",
        "http://127.0.0.1:9",
        "--no-probe",
        "--json",
        cwd=tmp_path,
    )
    assert result.exit_code == 0, result.output
    path = tmp_path / "plans" / "local.yaml"
    written = yaml.safe_load(path.read_text())
    assert json.loads(result.stdout) == written
    assert "credentialsSecret" not in written["spec"]["target"]  # local mode: AWS_* variables
    assert "workloads" not in written["spec"]["volumes"][0]  # no workloads in local mode
    loaded = load_plan(path).model["spec"]
    assert loaded["target"]["credentialsSecret"] == "migrator-s3-credentials"
    assert loaded["volumes"][0]["workloads"] == []
