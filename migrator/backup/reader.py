"""Reading a snapshot's archive back: stream, decompress, walk its members, check everything.

Shared by restore and verify. Every file's bytes are hashed as they stream and compared with
the manifest; the compressed stream's own size and xxh3-128 are compared with the record; a
file of the manifest that the archive does not hold is reported. Damage anywhere becomes a
named problem, never a traceback.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, cast

import xxhash
import zstandard

from migrator.backup.archive import member_path
from migrator.backup.repository import BackupRepository, Snapshot
from migrator.checksum import DIRECTORY, Entry, escape_path
from migrator.errors import OperationFailedError

READ_CHUNK = 1 << 20
MAX_PROBLEMS = 50


@dataclass
class ReadReport:
    """What reading an archive found: counts, and every problem (the first MAX_PROBLEMS)."""

    volume: str
    snapshot: str
    files: int = 0
    bytes: int = 0
    directories: int = 0
    symlinks: int = 0
    databases: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problem_count: int = 0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def problem(self, message: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(message)

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "volume": self.volume, "snapshot": self.snapshot, "files": self.files,
            "bytes": self.bytes, "directories": self.directories, "symlinks": self.symlinks,
            "databases": self.databases, "problems": self.problems,
            "problemCount": self.problem_count, "notes": self.notes,
        }  # fmt: skip


class _HashingSource:
    """The compressed stream as zstd reads it: hashed and counted."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.hasher = xxhash.xxh3_128()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.hasher.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(READ_CHUNK):
            pass


@dataclass
class Member:
    """One archive member as handlers see it."""

    info: tarfile.TarInfo
    path: bytes  # safe relative path, b"." for the root
    entry: Entry | None  # its manifest entry (files, symlinks, empty directories)
    data: IO[bytes] | None  # a regular file's content stream (read it before returning)


MemberHandler = Callable[[Member, "Checked"], None]


class Checked:
    """Hashes a file's content as a handler consumes it and checks it against the manifest."""

    def __init__(self, report: ReadReport, progress: Callable[[int, int], None] | None) -> None:
        self.report, self.progress = report, progress

    def chunks(self, member: Member) -> Any:
        """Yield the member's content in chunks; afterwards compare size and hash."""
        assert member.data is not None
        hasher = xxhash.xxh3_128()
        size = 0
        while chunk := member.data.read(READ_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
            yield chunk
        self.check(member, size, hasher.hexdigest())

    def check(self, member: Member, size: int, digest: str) -> None:
        name = escape_path(member.path)
        entry = member.entry
        if entry is None:
            self.report.problem(f"{name}: in the archive but not in the manifest")
        elif entry.size != size:
            self.report.problem(
                f"{name}: {size} bytes in the archive, {entry.size} in the manifest"
            )
        elif entry.xxh3 != digest:
            self.report.problem(f"{name}: content differs from the manifest (xxh3 {digest})")
        self.report.files += 1
        self.report.bytes += size
        if self.progress is not None:
            self.progress(self.report.files, self.report.bytes)


def read_snapshot(
    repository: BackupRepository,
    snapshot: Snapshot,
    handle: MemberHandler,
    progress: Callable[[int, int], None] | None = None,
    report: ReadReport | None = None,
) -> ReadReport:
    """Stream ``snapshot``'s archive through ``handle`` and check it whole.

    Problems go into ``report`` (a new one by default), which is returned. Raises
    VerificationFailedError only when the manifest itself is unusable, StorageError when S3
    fails, OperationFailedError when a handler refuses a member (a path outside the target).
    """
    report = report or ReadReport(snapshot.volume, snapshot.id)
    manifest = {e.path: e for e in repository.manifest_entries(snapshot)}
    seen: set[bytes] = set()
    checked = Checked(report, progress)
    with repository.open_archive(snapshot) as stream:
        source = _HashingSource(cast(IO[bytes], stream))
        try:
            _walk_members(source, manifest, seen, handle, checked)
            source.drain()
        except (zstandard.ZstdError, tarfile.TarError, EOFError) as exc:
            report.problem(f"the archive is damaged: {exc}")
            return report
    _check_stream(report, snapshot, source)
    for path, entry in manifest.items():
        if path not in seen:
            kind = "directory" if entry.type == DIRECTORY else "entry"
            report.problem(f"{escape_path(path)}: {kind} of the manifest missing from the archive")
    return report


def _walk_members(
    source: _HashingSource,
    manifest: dict[bytes, Entry],
    seen: set[bytes],
    handle: MemberHandler,
    checked: Checked,
) -> None:
    decompressed = zstandard.ZstdDecompressor().stream_reader(
        cast(IO[bytes], source), read_size=READ_CHUNK, read_across_frames=True
    )
    with tarfile.open(fileobj=decompressed, mode="r|", bufsize=READ_CHUNK) as tar:
        for info in tar:
            try:
                path = member_path(info.name)
            except OperationFailedError as exc:
                checked.report.problem(exc.message)
                continue
            key = path + b"/" if info.isdir() else path
            entry = manifest.get(key)
            seen.add(key)
            data = tar.extractfile(info) if info.isreg() else None
            handle(Member(info, path, entry, data), checked)
        # The tar end marker leaves the rest of the frame (padding, checksum) unread.
        while decompressed.read(READ_CHUNK):
            pass


def _check_stream(report: ReadReport, snapshot: Snapshot, source: _HashingSource) -> None:
    archive = (snapshot.record or {}).get("archive") or {}
    if archive.get("bytes") is not None and archive["bytes"] != source.size:
        report.problem(f"the archive has {source.size} bytes, the record says {archive['bytes']}")
    elif archive.get("xxh3") and archive["xxh3"] != source.hasher.hexdigest():
        report.problem(
            f"the archive's xxh3 is {source.hasher.hexdigest()}, the record says {archive['xxh3']}"
        )


def database_paths(snapshot: Snapshot) -> set[bytes]:
    return {os.fsencode(d["path"]) for d in (snapshot.record or {}).get("databases", [])}
