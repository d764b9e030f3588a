"""The copy agent's rclone stage (``migrator agent copy``), against real SeaweedFS and rclone.

Whatever the agent records as copied must exist at the destination: rclone reads a
``--files-from-raw`` list in its own name encoding and skips (exit 0) names it cannot find.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import boto3

from migrator.seaweedfs import SeaweedFS
from tests.helpers import run_cli
from tests.test_uploader import FLAGS, remote_env

# Names rclone's raw list cannot carry as they are (a newline splits the line; its symbols and
# quote rune mean something else there) beside an invalid UTF-8 name and plain ones.
ODD_NAMES = [
    b"new\nline.txt",
    "symbol \u2400 null.txt".encode(),
    "symbol \u2409 tab.txt".encode(),
    "quote \u201b here.txt".encode(),
    b"caf\xe9 (latin-1).nfo",
    b"tab\there.txt",
    b"plain.txt",
]


def odd_source(root: Path) -> Path:
    (root / "dir").mkdir(parents=True)
    for index, name in enumerate(ODD_NAMES):
        Path(os.fsdecode(bytes(root / "dir") + b"/" + name)).write_bytes(b"x" * (index + 1))
    return root


def agent_copy(server: SeaweedFS, source: Path, dest: str, *extra: str) -> tuple[int, Any, str]:
    args = ["agent", "copy", "--source", str(source), "--dest", dest, *extra, "--", *FLAGS]
    result = run_cli(*args, env=remote_env(server))
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result.exit_code, events, result.output


def object_keys(server: SeaweedFS, bucket: str, prefix: str) -> list[str]:
    client = boto3.client(
        "s3",
        endpoint_url=server.s3_endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
    )
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return sorted(item["Key"] for item in listing.get("Contents", []))


def test_rclone_uploader_copies_every_odd_name_and_a_rerun_copies_none(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str
) -> None:
    source = odd_source(tmp_path / "src")
    state = ["--state", f"dest:{bucket}/state", "--uploader", "rclone"]
    code, events, output = agent_copy(seaweedfs, source, f"dest:{bucket}/odd", *state)
    assert code == 0, output
    assert events[-1]["copied"] == len(ODD_NAMES)
    assert len(object_keys(seaweedfs, bucket, "odd")) == len(ODD_NAMES)
    code, events, output = agent_copy(seaweedfs, source, f"dest:{bucket}/odd", *state)
    assert code == 0, output
    assert events[-1]["copied"] == 0


def test_a_directory_destination_gets_every_odd_name(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    source = odd_source(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    code, events, output = agent_copy(seaweedfs, source, str(dest))
    assert code == 0, output
    assert events[-1]["copied"] == len(ODD_NAMES)
    assert sorted(os.listdir(bytes(dest / "dir"))) == sorted(ODD_NAMES)
    for index, name in enumerate(ODD_NAMES):
        assert Path(os.fsdecode(bytes(dest / "dir") + b"/" + name)).read_bytes() == b"x" * (
            index + 1
        )


def test_a_name_no_way_can_copy_fails_the_copy_and_is_retried(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str
) -> None:
    # Invalid UTF-8 (the native uploader leaves those to rclone) holding rclone's quote rune
    # (which rclone cannot open in a local name): one line says so; the state does not hold it.
    source = tmp_path / "src"
    source.mkdir()
    (source / "plain.txt").write_bytes(b"plain")
    Path(os.fsdecode(bytes(source) + b"/caf\xe9 \xe2\x80\x9b.txt")).write_bytes(b"odd")
    state = ["--state", f"dest:{bucket}/state"]
    code, events, output = agent_copy(seaweedfs, source, f"dest:{bucket}/odd", *state)
    assert code == 3
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "1 of 2 files could not be copied" in errors[0], output
    assert object_keys(seaweedfs, bucket, "odd") == ["odd/plain.txt"]
    code, events, output = agent_copy(seaweedfs, source, f"dest:{bucket}/odd", *state)
    assert code == 3
    assert events[0]["event"] == "plan" and events[0]["toCopy"] == 1  # plain.txt is recorded
