"""`migrator demo`: the README's main command, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import run_cli

pytestmark = [pytest.mark.seaweedfs, pytest.mark.slow]  # the demo starts its own SeaweedFS


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


def test_demo_runs_the_whole_story_and_leaves_nothing_running(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    result = run_cli("demo", "--work-dir", str(work), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ok"] is True
    assert summary["verified"] is True
    assert summary["corruptionCaught"] is True
    steps = {s["step"]: s for s in summary["steps"]}
    assert steps["verify"]["differences"] == 0
    assert steps["verify-after-corruption"]["differences"] == 1
    assert summary["seconds"] > 0  # reported; how long it takes is the machine's, not asserted
    assert (work / "plans" / "arr.yaml").exists()  # --work-dir is kept for inspection
    assert _processes_mentioning(str(work)) == []  # weed and every pod process are gone


def test_demo_removes_its_temporary_directory(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = run_cli("demo", "--json")
    assert result.exit_code == 0
    assert not Path(json.loads(result.stdout)["workDir"]).exists()
