"""Faults between the agent and its destination (issue #12): a TCP proxy on loopback that the
test controls (tests/faultproxy.py) in front of a real SeaweedFS, SIGKILLs of the server and of
the agent, a destination disk that fills up. Each ends with every file copied and verify clean,
or with one line and exit 3 in bounded time, and nothing recorded as copied that is not stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from migrator.copier import decode_state
from migrator.seaweedfs import SeaweedFS

pytestmark = pytest.mark.timeout(300)


def write_files(root: Path, count: int, size: int, prefix: str = "file") -> dict[str, bytes]:
    """``count`` files of ``size`` distinct bytes under ``root``; their relative paths and data."""
    files = {}
    for index in range(count):
        relpath = f"d{index % 3}/{prefix}-{index:03d}.bin"
        data = (index.to_bytes(4, "big") * (size // 4 + 1))[:size]
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_bytes(data)
        files[relpath] = data
    return files


def agent(source: Path, dest: str, *args: str, env: dict[str, str] | None = None,
          timeout: float = 240) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """``migrator agent copy`` as a Job runs it."""
    return subprocess.run(
        [sys.executable, "-m", "migrator", "agent", "copy", "--source", str(source),
         "--dest", dest, *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a local destination that fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")  # the CI and dev containers run as root
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def recorded(state_dir: Path) -> dict[str, Any]:
    """The copy state the agent saved under ``--state`` (path -> signature)."""
    files = list(state_dir.glob("copy-state*.tsv.gz"))
    return decode_state(files[0].read_bytes()) if files else {}


def whole_files(root: Path, files: dict[str, bytes]) -> set[str]:
    """The files of ``files`` stored under ``root`` with every byte right."""
    return {name for name, data in files.items() if (root / name).is_file()
            and (root / name).read_bytes() == data}  # fmt: skip


def test_disk_full_at_a_local_destination_fails_in_one_line_with_exit_3(
    tmp_path: Path, small_disk: Path
) -> None:
    source, state, dest = tmp_path / "src", tmp_path / "state", small_disk / "vol"
    files = write_files(source, 12, 300 * 1024)  # 3.6 MB into 2 MiB
    started = time.monotonic()
    result = agent(source, str(dest), "--state", str(state))
    assert time.monotonic() - started < 120
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert f"the destination {dest} is full (no space left on device)" in lines[0]
    assert "grow the volume or free space there" in lines[0]
    # the state claims only files that are there whole (and some did fit)
    claimed = set(recorded(state))
    assert claimed and claimed <= whole_files(dest, files) and claimed != set(files)

    # with room again, a re-run copies the rest
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    again = agent(source, str(dest), "--state", str(state))
    assert again.returncode == 0, again.stderr[-2000:]
    assert events(again.stdout)[-1]["copied"] == len(files) - len(claimed)
    assert whole_files(dest, files) == set(files) == set(recorded(state))
