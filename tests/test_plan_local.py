"""`migrator plan` in local mode (directories on this host), through the CLI."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from migrator.seaweedfs import SeaweedFS
from tests.helpers import load_yaml, run_cli, validate_manifest


def make_config_dir(path: Path, app: str = "sonarr") -> Path:
    path.mkdir(parents=True)
    (path / "config.xml").write_text("<Config><ApiKey>abc</ApiKey></Config>")
    con = sqlite3.connect(path / f"{app}.db")
    con.execute("pragma journal_mode=wal")
    con.execute("create table t(x)")
    con.commit()
    con.close()
    return path


def make_media_dir(path: Path) -> Path:
    (path / "tv" / "Show").mkdir(parents=True)
    (path / "tv" / "Show" / "e01.mkv").write_bytes(b"x" * 10_000)
    return path


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    return {
        "sonarr-config": make_config_dir(tmp_path / "src" / "sonarr"),
        "media": make_media_dir(tmp_path / "src" / "media"),
    }


def plan_args(sources: dict[str, Path], *extra: str) -> list[str]:
    args = ["plan"]
    for name, path in sources.items():
        args += ["--source-dir", f"{name}={path}"]
    return [*args, *extra]


def test_local_plan_classifies_by_content_and_writes_valid_jobs(
    tmp_path: Path, sources: dict[str, Path], s3_env: SeaweedFS, bucket: str
) -> None:
    result = run_cli(
        *plan_args(
            sources, "--target", f"s3://{bucket}/migrated", "--s3-endpoint", s3_env.s3_endpoint
        ),
        cwd=tmp_path,
    )
    assert result.exit_code == 0, result.output
    plan = load_yaml(tmp_path / "plans" / "local.yaml")
    volumes = {v["name"]: v for v in plan["spec"]["volumes"]}
    assert volumes["sonarr-config"]["role"] == "config"
    assert volumes["sonarr-config"]["action"] == "copy"
    assert volumes["media"]["role"] == "media"
    assert volumes["media"]["action"] == "move"
    assert volumes["media"]["target"]["url"] == f"s3://{bucket}/migrated/media"
    assert volumes["media"]["source"]["usedBytes"] == 10_000
    assert plan["spec"]["target"]["probe"] == "bucket exists"
    jobs = sorted((tmp_path / "jobs" / "local").glob("*.yaml"))
    assert [p.name for p in jobs] == [
        "copy-media.yaml",
        "copy-sonarr-config.yaml",
        "kustomization.yaml",
        "sync-media.yaml",
        "sync-sonarr-config.yaml",
        "verify-media.yaml",
        "verify-sonarr-config.yaml",
    ]
    for path in jobs:
        if path.name != "kustomization.yaml":
            validate_manifest(load_yaml(path))
    assert volumes["media"]["copy"]["jobs"]["verify"] == "verify-media.yaml"
    # Applying the kustomization copies; it never starts a verify.
    kustomization = load_yaml(tmp_path / "jobs" / "local" / "kustomization.yaml")
    assert kustomization["resources"] == [
        "copy-media.yaml",
        "copy-sonarr-config.yaml",
        "sync-media.yaml",
        "sync-sonarr-config.yaml",
    ]
    verify_job = load_yaml(tmp_path / "jobs" / "local" / "verify-media.yaml")
    assert verify_job["spec"]["template"]["spec"]["containers"][0]["command"][:3] == [
        "migrator",
        "agent",
        "verify",
    ]
    assert "config volume sonarr-config stays on its block storage" in result.output


def test_plan_is_deterministic(
    tmp_path: Path, sources: dict[str, Path], s3_env: SeaweedFS, bucket: str
) -> None:
    args = plan_args(sources, "--target", f"s3://{bucket}", "--s3-endpoint", s3_env.s3_endpoint)
    assert run_cli(*args, cwd=tmp_path).exit_code == 0
    first = (tmp_path / "plans" / "local.yaml").read_bytes()
    jobs_first = (tmp_path / "jobs" / "local" / "copy-media.yaml").read_bytes()
    assert run_cli(*args, cwd=tmp_path).exit_code == 0
    assert (tmp_path / "plans" / "local.yaml").read_bytes() == first
    assert (tmp_path / "jobs" / "local" / "copy-media.yaml").read_bytes() == jobs_first


def test_missing_bucket_and_bad_credentials_are_warnings(
    tmp_path: Path, sources: dict[str, Path], s3_env: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = plan_args(
        sources, "--target", "s3://no-such-bucket", "--s3-endpoint", s3_env.s3_endpoint, "--json"
    )
    result = run_cli(*args, cwd=tmp_path)
    assert result.exit_code == 0
    plan = json.loads(result.stdout)
    assert plan["spec"]["target"]["probe"] == "bucket no-such-bucket does not exist"
    assert "target-problem" in {w["code"] for w in plan["spec"]["warnings"]}
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    result = run_cli(*args, cwd=tmp_path)
    assert result.exit_code == 0
    assert "denied: check the credentials" in json.loads(result.stdout)["spec"]["target"]["probe"]
    assert "wrong-secret" not in result.output


def test_unreachable_target_is_a_warning_not_a_failure(
    tmp_path: Path, sources: dict[str, Path]
) -> None:
    result = run_cli(
        *plan_args(
            sources, "--target", "s3://media", "--s3-endpoint", "http://127.0.0.1:9", "--json"
        ),
        cwd=tmp_path,
    )
    assert result.exit_code == 0
    codes = {w["code"] for w in json.loads(result.stdout)["spec"]["warnings"]}
    assert "target-unreachable" in codes


def test_role_override_volume_filter_and_move_config(
    tmp_path: Path, sources: dict[str, Path]
) -> None:
    result = run_cli(
        *plan_args(
            sources,
            "--target",
            "s3://media",
            "--s3-endpoint",
            "http://127.0.0.1:9",
            "--no-probe",
            "--role",
            "media=config",
            "--volume",
            "media",
            "--move-config",
            "--json",
        ),
        cwd=tmp_path,
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    [volume] = plan["spec"]["volumes"]
    assert (volume["name"], volume["role"], volume["roleReason"], volume["action"]) == (
        "media",
        "config",
        "set with --role",
        "move",
    )
    [warning] = [w for w in plan["spec"]["warnings"] if w["code"] == "sqlite-on-network-fs"]
    assert warning["volume"] == "media"
    assert "SQLite databases corrupt there" in warning["message"]


def test_capacity_lint(tmp_path: Path, sources: dict[str, Path]) -> None:
    result = run_cli(
        *plan_args(
            sources,
            "--target",
            "s3://media",
            "--s3-endpoint",
            "http://x:1",
            "--no-probe",
            "--target-capacity",
            "1Ki",
            "--json",
        ),
        cwd=tmp_path,
    )
    findings = [w for w in json.loads(result.stdout)["spec"]["warnings"] if w["code"] == "capacity"]
    assert len(findings) == 1
    assert "1.0 KiB is below" in findings[0]["message"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target", "s4://media"], "must be s3://BUCKET[/PREFIX] or pvc:STORAGECLASS"),
        (["--target", "s3://A_b"], "is not a valid bucket name"),
        (["--target", "pvc:fast"], "a pvc: target needs cluster mode"),
        (
            ["--target", "s3://media", "--role", "media=archive"],
            "role must be one of config, media",
        ),
        (["--target", "s3://media", "--role", "medai=config"], "no volume named 'medai'"),
        (
            ["--target", "s3://media", "--volume", "nope"],
            "no volume named 'nope'; known volumes: media, sonarr-config",
        ),
        (["--target", "s3://media", "--role", "media"], "--role 'media' must look like NAME=VALUE"),
        (["--target", "s3://media", "--target-capacity", "lots"], "'lots' is not a size"),
        ([], "--target is required"),
        (
            [
                "--target",
                "s3://media",
                "--backup-target",
                "s3://b/arr",
                "--backup-credentials-secret",
                "offsite",
            ],
            "--backup-credentials-secret is for cluster mode; local mode reads "
            "MIGRATOR_BACKUP_AWS_* variables",
        ),
        (
            ["--target", "s3://media", "--backup-endpoint", "https://offsite.example"],
            "--backup-endpoint needs --backup-target",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, sources: dict[str, Path], extra: list[str], message: str
) -> None:
    result = run_cli(
        *plan_args(sources, "--s3-endpoint", "http://x:1", "--no-probe", *extra), cwd=tmp_path
    )
    assert result.exit_code == 2
    assert message in result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ")
    assert "Traceback" not in result.output


def test_source_dir_that_does_not_exist(tmp_path: Path) -> None:
    result = run_cli(
        "plan", "--source-dir", f"x={tmp_path / 'nope'}", "--target", "s3://media", cwd=tmp_path
    )
    assert result.exit_code == 2
    assert "not a directory" in result.output


def test_neither_or_both_modes_is_bad_input(tmp_path: Path, sources: dict[str, Path]) -> None:
    assert run_cli("plan", "--target", "s3://media", cwd=tmp_path).exit_code == 2
    both = run_cli(
        *plan_args(sources, "-n", "tenant-media", "--target", "s3://media"), cwd=tmp_path
    )
    assert both.exit_code == 2
    assert "either -n NAMESPACE" in both.output


def test_no_endpoint_is_bad_input(
    tmp_path: Path, sources: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    result = run_cli(*plan_args(sources, "--target", "s3://media"), cwd=tmp_path)
    assert result.exit_code == 2
    assert "no S3 endpoint" in result.output


def test_media_shards_follow_parallel(tmp_path: Path, sources: dict[str, Path]) -> None:
    result = run_cli(
        *plan_args(
            sources,
            "--target",
            "s3://media",
            "--s3-endpoint",
            "http://x:1",
            "--no-probe",
            "--parallel",
            "3",
        ),
        cwd=tmp_path,
    )
    assert result.exit_code == 0
    job = load_yaml(tmp_path / "jobs" / "local" / "copy-media.yaml")
    validate_manifest(job)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == 3
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--shard") + 1] == "$(JOB_COMPLETION_INDEX)/3"
    config_job = load_yaml(tmp_path / "jobs" / "local" / "copy-sonarr-config.yaml")
    assert "completionMode" not in config_job["spec"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--source-dir", "media=/elsewhere"], "--source-dir media is given twice"),
        (["--role", "media=media", "--role", "media=config"], "--role media is given twice"),
        (["--target", "s3://media/.."], "'..' is not allowed"),
        (["--target", "s3://media/a//b"], "empty path segment"),
        (["--target", "s3://media/./x"], "'.' is not allowed"),
        (["--target", "s3://media/a/../b"], "'..' is not allowed"),
        (["--target", "s3://media/x", "--backup-target", "s3://media/b//k"], "empty path segment"),
        (["--target", "s3://media/x", "--backup-target", "s3://media/../k"], "'..' is not"),
    ],
)
def test_repeated_names_and_odd_prefixes_are_refused_and_nothing_is_written(
    tmp_path: Path, sources: dict[str, Path], extra: list[str], message: str
) -> None:
    """Issue #12 item 7: a repeated NAME silently kept the last one; `a//b` and `..` planned."""
    extra = extra if "--target" in extra else ["--target", "s3://media", *extra]
    result = run_cli(
        *plan_args(sources, "--s3-endpoint", "http://x:1", "--no-probe", *extra), cwd=tmp_path
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ")
    assert not (tmp_path / "plans").exists() and not (tmp_path / "jobs").exists()


def test_plan_out_that_cannot_be_written_is_bad_input(
    tmp_path: Path, sources: dict[str, Path]
) -> None:
    """Issue #12: `plan --out /proc/x.yaml` exited 3 (operation failed) for a bad path."""
    result = run_cli(
        *plan_args(
            sources,
            "--target",
            "s3://media",
            "--s3-endpoint",
            "http://x:1",
            "--no-probe",
            "--out",
            "/proc/x.yaml",
        ),
        cwd=tmp_path,
    )
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ")
    assert "/proc/x.yaml" in result.output


@pytest.mark.parametrize(
    ("target", "backup", "refused"),
    [
        ("s3://media/mig", "s3://media/mig", "the copy of volume media (s3://media/mig/media/)"),
        ("s3://media", "s3://media", "the copy of volume media (s3://media/media/)"),
        ("s3://media/mig", "s3://media/mig/media", "the copy of volume media"),
        ("s3://media/mig", "s3://media/mig/media/old", "the copy of volume media"),
        ("s3://media/mig", "s3://media/mig/.migrator", "the copy state (.migrator/)"),
        ("s3://media/mig", "s3://media/backups", None),
        ("s3://media/mig", "s3://media/mig/backups", None),
        ("s3://media/mig", "s3://other/mig", None),
        ("s3://media", "s3://media/backups", None),
    ],
)
def test_backups_inside_the_copies_are_refused(
    tmp_path: Path, sources: dict[str, Path], target: str, backup: str, refused: str | None
) -> None:
    """Issue #12 item 1: backups sharing keys with a copy were deleted by its cutover."""
    result = run_cli(
        *plan_args(
            sources,
            "--target",
            target,
            "--backup-target",
            backup,
            "--s3-endpoint",
            "http://x:1",
            "--no-probe",
        ),
        cwd=tmp_path,
    )
    if refused is None:
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error: --backup-target")
    assert refused in result.output
    assert "e.g. s3://media/backups" in result.output
    assert not (tmp_path / "plans").exists()


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("backup", "mig", "At 'spec.backup.prefix': the backups of media (s3://media/mig/media/)"),
        ("backup", "mig/.migrator", "At 'spec.backup.prefix': the backups of media"),
        ("target", "a//b", "At 'spec.target.prefix': prefix 'a//b' has an empty path segment"),
        ("target", "../b", "At 'spec.target.prefix': prefix '../b': '..' is not allowed"),
        ("backup", "./b", "At 'spec.backup.prefix': prefix './b': '.' is not allowed"),
    ],
)
def test_a_hand_edited_plan_cannot_slip_past(
    tmp_path: Path, sources: dict[str, Path], field: str, value: str, problem: str
) -> None:
    """The same checks hold for a plan file edited by hand (plan --check, run, verify)."""
    assert (
        run_cli(
            *plan_args(
                sources,
                "--target",
                "s3://media/mig",
                "--backup-target",
                "s3://media/backups",
                "--s3-endpoint",
                "http://x:1",
                "--no-probe",
            ),
            cwd=tmp_path,
        ).exit_code
        == 0
    )
    path = tmp_path / "plans" / "local.yaml"
    document = load_yaml(path)
    document["spec"][field]["prefix"] = value
    path.write_text(json.dumps(document))
    check = run_cli("plan", "--check", str(path), cwd=tmp_path)
    assert check.exit_code == 2
    assert problem in check.output
    for command in (["run", "--phase", "all"], ["verify"]):
        result = run_cli(*command, "--plan", str(path), cwd=tmp_path)
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and problem in result.output
