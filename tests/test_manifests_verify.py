"""Verify Jobs as rendered by `migrator plan` and the run-time options `migrator verify` applies."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from migrator.manifests.verify import build_verify_job, with_verify_options
from migrator.plan import load_plan
from tests.helpers import load_yaml, run_cli, validate_manifest
from tests.test_plan_local import make_config_dir, make_media_dir, plan_args

S3 = ["--target", "s3://bucket/arr", "--s3-endpoint", "http://s3.example:8333", "--no-probe"]


@pytest.mark.parametrize("filer", [[], ["--filer-grpc", "filer.example:18888"]])
def test_options_on_the_rendered_job_equal_the_job_built_with_them(
    tmp_path: Path, filer: list[str]
) -> None:
    sources = {
        "sonarr-config": make_config_dir(tmp_path / "src" / "sonarr"),
        "media": make_media_dir(tmp_path / "src" / "media"),
    }
    result = run_cli(*plan_args(sources, *S3, *filer), cwd=tmp_path)
    assert result.exit_code == 0, result.output
    plan = load_plan(tmp_path / "plans" / "local.yaml")
    for volume in plan.volumes:
        rendered = load_yaml(plan.jobs_dir / volume["copy"]["jobs"]["verify"])
        assert rendered == build_verify_job(plan.document, volume)
        validate_manifest(rendered)
        for sample, strict, cache in itertools.product((None, 0.25), (False, True), (True, False)):
            applied = with_verify_options(rendered, sample, strict, cache)
            assert applied == build_verify_job(plan.document, volume, sample, strict, cache)
            validate_manifest(applied)
        # Applying them leaves the reviewed file's Job as it was.
        assert rendered == load_yaml(plan.jobs_dir / volume["copy"]["jobs"]["verify"])


def test_a_sample_in_the_reviewed_file_gives_way_to_the_one_asked_for(tmp_path: Path) -> None:
    sources = {"media": make_media_dir(tmp_path / "src" / "media")}
    assert run_cli(*plan_args(sources, *S3), cwd=tmp_path).exit_code == 0
    plan = load_plan(tmp_path / "plans" / "local.yaml")
    edited = build_verify_job(plan.document, plan.volumes[0], 0.5, True)
    command = with_verify_options(edited, 0.1)["spec"]["template"]["spec"]["containers"][0][
        "command"
    ]
    assert command[-3:] == ["--sample", "0.1", "--strict-metadata"]
    assert command.count("--sample") == 1
