"""Backup schedules: every cron expression a Kubernetes CronJob accepts, nothing it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from migrator.backup.cron import check_schedule
from migrator.errors import BadInputError
from tests.helpers import run_cli

VALID = [
    "0 3 * * *",
    "  0   3 * * *  ",
    "*/15 * * * *",
    "0 0-23/6 * * *",
    "5,35 1,13 * * *",
    "0 3 1 * *",
    "0 3 31 12 *",
    "30 4 * * 0",
    "30 4 * * 6",
    "30 4 * * MON-FRI",
    "30 4 * * sun,wed",
    "0 0 1 JAN,jul *",
    "0 0 1 jan-jun/2 *",
    "0 0 ? * *",
    "0 3 * * ?",
    "7/10 * * * *",
    "59 23 31 12 6",
    "@daily",
    "@hourly",
    "@weekly",
    "@monthly",
    "@yearly",
    "@annually",
    "@midnight",
]

INVALID = [
    ("99 99 * * *", "minute 99 is out of range 0-59"),
    ("0 24 * * *", "hour 24 is out of range 0-23"),
    ("0 3 0 * *", "day of month 0 is out of range 1-31"),
    ("0 3 32 * *", "day of month 32 is out of range 1-31"),
    ("0 3 * 13 *", "month 13 is out of range 1-12"),
    ("0 3 * * 7", "day of week 7 is out of range 0-6"),
    ("0 3 * * FUNDAY", "day of week 'FUNDAY' is not a number or a name"),
    ("0 3 * MON *", "month 'MON' is not a number or a name"),
    ("*/0 * * * *", "minute step '0' must be a whole number above 0"),
    ("0 5-1 * * *", "hour range 5-1 runs backwards"),
    ("0 1-2-3 * * *", "hour '1-2-3' has more than one '-'"),
    ("0 */2/3 * * *", "hour '*/2/3' has more than one '/'"),
    ("0 1,,2 * * *", "hour '' is not a number"),
    ("0 -1 * * *", "hour '-1' is not a number"),
    ("0 3 * *", "expected 5 fields, got 4"),
    ("0 3 * * * *", "expected 5 fields, got 6"),
    ("nightly", "expected 5 fields, got 1"),
    ("@fortnightly", "unknown macro '@fortnightly'"),
    ("0 3 L * *", "day of month 'L' is not a number"),
    ("0 3 * * 1#2", "day of week '1#2' is not a number or a name"),
    ("", "expected 5 fields, got 0"),
]


@pytest.mark.parametrize("schedule", VALID)
def test_schedules_a_cronjob_accepts_are_accepted(schedule: str) -> None:
    assert check_schedule(schedule) == " ".join(schedule.split())


@pytest.mark.parametrize(("schedule", "problem"), INVALID)
def test_schedules_a_cronjob_refuses_are_bad_input_naming_the_field(
    schedule: str, problem: str
) -> None:
    with pytest.raises(BadInputError) as raised:
        check_schedule(schedule)
    message = raised.value.message
    assert message.startswith(f"schedule {schedule!r} is not a cron expression: {problem}")
    assert message.endswith("use five fields like '0 3 * * *' or a macro like @daily")


@pytest.fixture
def local_plan(tmp_path: Path) -> Path:
    source = tmp_path / "config"
    source.mkdir()
    result = run_cli(
        "plan",
        "--source-dir",
        f"sonarr-config={source}",
        "--target",
        "s3://bucket/migrated",
        "--backup-target",
        "s3://bucket/backups",
        "--s3-endpoint",
        "http://127.0.0.1:1",
        "--no-probe",
        cwd=tmp_path,
    )
    assert result.exit_code == 0, result.output
    return tmp_path / "plans" / "local.yaml"


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [
        ("--schedule", "99 99 * * *", "minute 99 is out of range 0-59"),
        ("--drill", "0 25 * * *", "hour 25 is out of range 0-23"),
    ],
)
def test_install_refuses_a_bad_schedule_in_one_line(
    local_plan: Path, option: str, value: str, problem: str
) -> None:
    """Checked before anything else: the schedule is wrong whatever the plan."""
    result = run_cli("backup", "install", "--plan", str(local_plan), option, value)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: schedule {value!r}"), result.output
    assert problem in lines[0]
