"""The state a copy keeps beside its destination: path -> (size, mtime_ns) of what it copied, and
the names the last verify found missing or different; :class:`StateRecorder` saves it as files
complete, with checkpoints, so a crash resumes."""

from __future__ import annotations

import gzip
import io
import json
import time

from migrator.rclone import Rclone
from migrator.sourcetree import Signature

STATE_HEADER = "#migrator-copy-state v1"
# Beside the state: the files the last verify found missing or different at the destination
# (gzip'd JSON-quoted names, one a line), which ``--recheck`` copies again.
VERIFY_DIFFERENCES = "verify-differences.gz"
# Progress is saved this often while rclone runs (and always when it stops, even on a signal).
CHECKPOINT_SECONDS = 30.0


def encode_state(files: dict[str, Signature]) -> bytes:
    """Gzip'd lines ``"path"\\tsize\\tmtime_ns`` sorted by path; paths JSON-quoted (any name)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=3, mtime=0) as gz:
        text = io.TextIOWrapper(gz, encoding="utf-8", errors="surrogatepass", newline="\n")
        text.write(STATE_HEADER + "\n")
        for path in sorted(files):
            size, mtime = files[path]
            text.write(f"{json.dumps(path)}\t{size}\t{mtime}\n")
        text.flush()
        text.detach()
    return buffer.getvalue()


def encode_names(names: list[str]) -> bytes:
    """Gzip'd lines of JSON-quoted names (any name), as in :data:`VERIFY_DIFFERENCES`."""
    return gzip.compress(b"".join(json.dumps(n).encode() + b"\n" for n in names), mtime=0)


def decode_names(data: bytes) -> set[str]:
    """Inverse of :func:`encode_names`; unreadable data counts as no names."""
    try:
        return {json.loads(line) for line in gzip.decompress(data).splitlines() if line.strip()}
    except (OSError, EOFError, ValueError):
        return set()


def decode_state(data: bytes) -> dict[str, Signature]:
    """Inverse of :func:`encode_state`; an unreadable state counts as empty (everything recopies)."""
    if not data:
        return {}
    try:
        lines = gzip.decompress(data).decode("utf-8", errors="surrogatepass").splitlines()
    except (OSError, EOFError, UnicodeDecodeError):
        return {}
    if not lines or lines[0] != STATE_HEADER:
        return {}
    files: dict[str, Signature] = {}
    for line in lines[1:]:
        path, size, mtime = line.rsplit("\t", 2)
        files[json.loads(path)] = (int(size), int(mtime))
    return files


def changed_files(current: dict[str, Signature], previous: dict[str, Signature]) -> list[str]:
    """Files that are new or whose size or mtime differ from the last copy, sorted."""
    return sorted(path for path, sig in current.items() if previous.get(path) != sig)


class StateRecorder:
    """Keeps the state of what is known copied, and checkpoints it while rclone runs."""

    def __init__(
        self,
        rclone: Rclone,
        location: str | None,
        previous: dict[str, Signature],
        current: dict[str, Signature],
    ) -> None:
        self.rclone, self.location, self.current = rclone, location, current
        # Unchanged files stay known; files gone from the source stay until a sync deletes them.
        self.state = dict(previous)
        self.pending = 0
        self.last_checkpoint = time.monotonic()
        self.done: set[str] = set()

    def copied(self, path: str, signature: Signature | None = None) -> None:
        """``path`` is stored, with the content it had at ``signature`` (default: the walk's)."""
        self.done.add(path)
        if path in self.current:
            self.state[path] = signature or self.current[path]
            self.pending += 1
            if time.monotonic() - self.last_checkpoint > CHECKPOINT_SECONDS:
                self.checkpoint()

    def made_dir(self, path: str) -> None:
        self.state[path + "/"] = (-1, 0)
        self.pending += 1

    def checkpoint(self) -> None:
        if self.location and self.pending:
            self.rclone.write(self.location, encode_state(self.state))
        self.pending = 0
        self.last_checkpoint = time.monotonic()

    def finish(self, deleted_ok: bool, empty_dirs: set[str]) -> None:
        if deleted_ok:
            self.state = {
                p: s
                for p, s in self.state.items()
                if p in self.current or (p.endswith("/") and p[:-1] in empty_dirs)
            }
        self.pending = max(self.pending, 1)
        self.checkpoint()
