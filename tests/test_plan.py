"""The plan document: schema, round trip, `migrator plan --check`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from migrator.errors import InvalidPlanError
from migrator.plan import load_plan, schema, validate_document
from tests.helpers import run_cli
from tests.test_plan_local import make_config_dir, make_media_dir


@pytest.fixture
def plan_path(tmp_path: Path) -> Path:
    config = make_config_dir(tmp_path / "sonarr")
    media = make_media_dir(tmp_path / "media")
    result = run_cli(
        "plan", "--source-dir", f"sonarr-config={config}", "--source-dir", f"media={media}",
        "--target", "s3://media/x", "--s3-endpoint", "http://127.0.0.1:9", "--no-probe",
        "--backup-target", "s3://backups/arr",
        cwd=tmp_path,
    )  # fmt: skip
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
