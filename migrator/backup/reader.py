"""Reading a snapshot's archive back: stream, decompress, walk its members, check everything.

Shared by restore and verify. Every file's bytes are hashed as they stream and compared with
the manifest; the compressed stream's own size and xxh3-128 are compared with the record; a
file of the manifest that the archive does not hold is reported. Damage anywhere becomes a
named problem, never a traceback.

Memory stays bounded whatever the archive says: tarfile reads a long-name or pax header whole
before it looks at it (a 16 KB archive can declare a 2 GiB name), so headers larger than
MAX_HEADER_BYTES, and the GNU sparse forms whose maps tarfile also reads whole, are refused
before they are read (UnsafeArchiveError). migrator never writes either.
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
# A long name or pax header holds one path (PATH_MAX is 4096) and a few numbers: 1 MiB is ample.
MAX_HEADER_BYTES = 1 << 20
_NAME_HEADERS = {
    tarfile.GNUTYPE_LONGNAME: "GNU long name",
    tarfile.GNUTYPE_LONGLINK: "GNU long link",
    tarfile.XHDTYPE: "pax",
    tarfile.XGLTYPE: "pax global",
    tarfile.SOLARIS_XHDTYPE: "pax",
}


class UnsafeArchiveError(OperationFailedError):
    """The archive holds something no snapshot holds and reading it on would do harm (exhaust
    memory, write through a link, write more than the manifest says): reading stops here."""


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile's TarInfo, refusing the headers it would read whole into memory.

    tarfile builds each member's TarInfo with this class (also the ones that follow a long-name
    or pax header), and ``_proc_member`` is where it decides how to read a header's payload.
    """

    def _proc_member(self, tarfile_: tarfile.TarFile) -> Any:
        what = _NAME_HEADERS.get(self.type)
        if what is not None and self.size > MAX_HEADER_BYTES:
            raise UnsafeArchiveError(
                f"a {what} header of {self.size} bytes (at most {MAX_HEADER_BYTES} are read)"
            )
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise UnsafeArchiveError("a GNU sparse member (migrator never writes one)")
        return super()._proc_member(tarfile_)  # type: ignore[misc]

    def _proc_gnusparse_10(self, *args: Any) -> Any:
        raise UnsafeArchiveError("a GNU sparse 1.0 member (migrator never writes one)")


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
            "ok": self.ok,
            "volume": self.volume,
            "snapshot": self.snapshot,
            "files": self.files,
            "bytes": self.bytes,
            "directories": self.directories,
            "symlinks": self.symlinks,
            "databases": self.databases,
            "problems": self.problems,
            "problemCount": self.problem_count,
            "notes": self.notes,
        }


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
    fails, UnsafeArchiveError when a header would exhaust memory or a handler refuses a member
    (a path through a link, more bytes than the manifest says).
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
    with tarfile.open(
        fileobj=decompressed, mode="r|", bufsize=READ_CHUNK, tarinfo=_BoundedTarInfo
    ) as tar:
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
