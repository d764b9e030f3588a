"""One snapshot of one volume: walk, copy the databases consistently, stream tar + zstd to S3.

Nothing but the databases' copies touches the disk: files are read once, hashed (xxh3-128)
and written into the tar stream, which zstd compresses into a multipart upload of bounded
memory. The databases are copied by a background thread while the other files stream, and
go at the end of the archive. Then the manifest and, last, the record are written: the
snapshot exists once its record does.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, cast

import xxhash
import zstandard

from migrator import __version__
from migrator.backup import sqlite
from migrator.backup.archive import Item, TarWriter, tar_header, walk_tree
from migrator.backup.repository import (
    ARCHIVE,
    RECORD_FORMAT,
    BackupRepository,
    snapshot_id,
)
from migrator.checksum import DIRECTORY, FILE, SYMLINK, Entry, write_manifest
from migrator.errors import BadInputError, MigratorError, OperationFailedError
from migrator.objectstore import MultipartWriter

DEFAULT_PART_SIZE = 16 * 2**20
DEFAULT_LEVEL = 3
READ_CHUNK = 1 << 20
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

Progress = Callable[[int, int], None]  # (files, bytes) done so far


@dataclass
class SnapshotOptions:
    """How a snapshot is made; the defaults suit config volumes."""

    part_size: int = DEFAULT_PART_SIZE
    level: int = DEFAULT_LEVEL  # zstd level: 3 is zstd's default, fast and a good ratio
    threads: int = 0  # zstd worker threads (0: compress in the writing thread)
    tmp_dir: Path | None = None  # where the databases' copies go (default: $TMPDIR)
    app: str | None = None
    plan: str | None = None


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Counts:
    files: int = 0
    bytes: int = 0
    directories: int = 0
    symlinks: int = 0


class _StreamSink:
    """What zstd writes to: hashes and counts the compressed stream on its way to S3."""

    def __init__(self, upload: MultipartWriter) -> None:
        self.upload = upload
        self.hasher = xxhash.xxh3_128()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hasher.update(data)
        self.size += len(data)
        self.upload.write(data)
        return len(data)


@dataclass
class _Builder:
    """The state of one snapshot while its archive streams."""

    root: Path
    volume: str
    progress: Progress | None
    entries: list[Entry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counts: _Counts = field(default_factory=_Counts)
    tar: TarWriter | None = None

    def _full(self, path: bytes) -> bytes:
        return os.path.join(os.fsencode(self.root), path)

    def _done(self, size: int) -> None:
        self.counts.files += 1
        self.counts.bytes += size
        if self.progress is not None:
            self.progress(self.counts.files, self.counts.bytes)

    def add(self, item: Item) -> None:
        if item.kind == "f":
            self.add_file(item)
        elif item.kind == "d":
            self.add_directory(item)
        elif item.kind == "l":
            self.add_symlink(item)
        else:
            self.warnings.append(f"skipped {os.fsdecode(item.path)}: not a file, link or directory")

    def add_directory(self, item: Item) -> None:
        assert self.tar is not None
        self.tar.write(tar_header(item.path, "d", 0, item.st))
        if item.path != b".":
            self.counts.directories += 1
        if item.empty:
            self.entries.append(_entry(item.path + b"/", DIRECTORY, 0, item.st, None))

    def add_symlink(self, item: Item) -> None:
        assert self.tar is not None
        try:
            target = os.readlink(self._full(item.path))
        except FileNotFoundError:
            self.warnings.append(f"{os.fsdecode(item.path)} vanished while the backup ran")
            return
        self.tar.write(tar_header(item.path, "l", 0, item.st, target))
        digest = xxhash.xxh3_128_hexdigest(target)
        self.entries.append(_entry(item.path, SYMLINK, len(target), item.st, digest))
        self.counts.symlinks += 1

    def add_file(
        self, item: Item, source: bytes | None = None, st: os.stat_result | None = None
    ) -> None:
        """Stream one file; ``source`` reads the content from elsewhere (a database's copy)
        while ``st`` gives the metadata to record."""
        name = os.fsdecode(item.path)
        try:
            fd = os.open(source or self._full(item.path), _OPEN_FLAGS)
        except FileNotFoundError:
            self.warnings.append(f"{name} vanished while the backup ran")
            return
        except OSError as exc:
            raise OperationFailedError(f"cannot read {name}: {exc.strerror}") from None
        try:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode):
                self.warnings.append(f"skipped {name}: no longer a regular file")
                return
            meta = st or opened
            digest = self._stream(fd, item.path, opened.st_size, meta)
            after = os.fstat(fd)
            if (after.st_size, after.st_mtime_ns) != (opened.st_size, opened.st_mtime_ns):
                self.warnings.append(f"{name} changed while it was read; its copy may be torn")
        finally:
            os.close(fd)
        self.entries.append(_entry(item.path, FILE, opened.st_size, meta, digest))
        self._done(opened.st_size)

    def _stream(self, fd: int, path: bytes, size: int, meta: os.stat_result) -> str:
        assert self.tar is not None
        self.tar.write(tar_header(path, "f", size, meta))
        hasher = xxhash.xxh3_128()
        left = size
        while left:
            chunk = os.read(fd, min(left, READ_CHUNK))
            if not chunk:  # it shrank: the header promised ``size`` bytes, keep the tar valid
                chunk = bytes(left)
                self.warnings.append(f"{os.fsdecode(path)} shrank while it was read")
            hasher.update(chunk)
            self.tar.write(chunk)
            left -= len(chunk)
        self.tar.pad(size)
        return hasher.hexdigest()


def _entry(path: bytes, kind: str, size: int, st: os.stat_result, digest: str | None) -> Entry:
    return Entry(
        path, kind, size, st.st_mtime_ns, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, digest
    )


def find_databases(root: Path, items: list[Item]) -> list[Item]:
    """The SQLite databases among ``items``, found by header (cheap: page-sized files only)."""
    root_bytes = os.fsencode(root)
    return [
        item
        for item in items
        if item.kind == "f"
        and sqlite.may_be_database(item.st.st_size)
        and sqlite.has_database_header(os.path.join(root_bytes, item.path))
    ]


def detect_app(databases: list[Item]) -> str | None:
    """``sonarr`` from ``sonarr.db`` at the top (not ``logs.db``): the app the volume belongs to."""
    for item in databases:
        name = os.fsdecode(item.path)
        if "/" not in name and name.endswith(".db") and name != "logs.db":
            return name[: -len(".db")]
    return None


def free_snapshot_id(started: datetime, taken: set[str]) -> str:
    """The id of ``started``, or of the next free second (two runs in one second)."""
    moment = started
    while snapshot_id(moment) in taken:
        moment += timedelta(seconds=1)
    return snapshot_id(moment)


def create_snapshot(
    repository: BackupRepository,
    volume: str,
    source: Path,
    options: SnapshotOptions | None = None,
    progress: Progress | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> dict[str, Any]:
    """Snapshot the directory ``source`` as volume ``volume`` into ``repository``.

    Returns the snapshot record (also stored beside the archive). Raises BadInputError when
    ``source`` is not a directory, StorageError (one line) when S3 refuses or fails, and
    OperationFailedError when a file or database cannot be read consistently. A failed
    snapshot leaves no complete objects behind (a record is written only at the very end).
    """
    options = options or SnapshotOptions()
    if not source.is_dir():
        raise BadInputError(f"{source} is not a directory")
    started, started_clock = clock(), time.monotonic()
    listing = repository.list_volume(volume)  # also proves the bucket and credentials work
    snapshot = free_snapshot_id(started, listing.ids)
    items = walk_tree(source)
    databases = find_databases(source, items)
    skipped = {d.path for d in databases} | {
        d.path + suffix.encode() for d in databases for suffix in sqlite.COMPANIONS
    }
    builder = _Builder(source, volume, progress)
    work = Path(tempfile.mkdtemp(prefix="migrator-backup-", dir=options.tmp_dir))
    copier = ThreadPoolExecutor(1, thread_name_prefix="sqlite-backup")
    try:
        copies = {
            d.path: copier.submit(
                sqlite.snapshot_database,
                source / os.fsdecode(d.path),
                work / f"{index}.db",
                os.fsdecode(d.path),
            )
            for index, d in enumerate(databases)
        }
        archive = _write_archive(
            repository, volume, snapshot, options, builder, items, skipped, databases, copies
        )
    finally:
        copier.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(work, ignore_errors=True)
    record = _record(
        volume,
        snapshot,
        started,
        options,
        builder,
        archive,
        databases=[_database_record(d, copies[d.path]) for d in databases],
        app=options.app or detect_app(databases),
    )
    _commit(repository, volume, snapshot, builder, record, started_clock)
    return record


def _write_archive(
    repository: BackupRepository,
    volume: str,
    snapshot: str,
    options: SnapshotOptions,
    builder: _Builder,
    items: list[Item],
    skipped: set[bytes],
    databases: list[Item],
    copies: dict[bytes, Future[sqlite.DatabaseCopy]],
) -> dict[str, Any]:
    key = repository.key(volume, snapshot, ARCHIVE)
    began = time.monotonic()
    with MultipartWriter(
        repository.client,
        repository.bucket,
        key,
        options.part_size,
        content_type="application/zstd",
    ) as upload:
        sink = _StreamSink(upload)
        compressor = zstandard.ZstdCompressor(
            level=options.level, threads=options.threads, write_checksum=True
        ).stream_writer(cast(IO[bytes], sink), write_size=1 << 20, closefd=False)
        builder.tar = TarWriter(compressor.write)
        for item in items:
            if item.path not in skipped:
                builder.add(item)
        streamed = time.monotonic()
        for database in databases:
            copy = copies[database.path].result()  # raises DatabaseError for a bad one
            builder.add_file(database, os.fsencode(copy.path), database.st)
            copy.path.unlink(missing_ok=True)
        builder.tar.close()
        compressor.flush(zstandard.FLUSH_FRAME)  # ends the frame: the stream is complete
        result = upload.close()
    return {
        "key": key,
        "bytes": result.size,
        "xxh3": sink.hasher.hexdigest(),
        "etag": result.etag,
        "parts": result.parts,
        "partSize": options.part_size,
        "tarBytes": builder.tar.written,
        "compression": f"zstd-{options.level}",
        "seconds": {"files": streamed - began, "total": time.monotonic() - began},
    }


def _database_record(item: Item, future: Future[sqlite.DatabaseCopy]) -> dict[str, Any]:
    copy = future.result()
    return {
        "path": os.fsdecode(item.path),
        "bytes": copy.size,
        "method": copy.method,
        "integrity": "ok",
        "seconds": round(copy.seconds, 3),
        "integritySeconds": round(copy.integrity_seconds, 3),
    }


def _record(
    volume: str,
    snapshot: str,
    started: datetime,
    options: SnapshotOptions,
    builder: _Builder,
    archive: dict[str, Any],
    databases: list[dict[str, Any]],
    app: str | None,
) -> dict[str, Any]:
    counts = builder.counts
    return {
        "format": RECORD_FORMAT,
        "volume": volume,
        "id": snapshot,
        "app": app or "unknown",
        "plan": options.plan,
        "migrator": __version__,
        "host": socket.gethostname(),
        "started": started.isoformat().replace("+00:00", "Z"),
        "files": counts.files,
        "bytes": counts.bytes,
        "directories": counts.directories,
        "symlinks": counts.symlinks,
        "archive": archive,
        "databases": databases,
        "warnings": builder.warnings,
    }


def _commit(
    repository: BackupRepository,
    volume: str,
    snapshot: str,
    builder: _Builder,
    record: dict[str, Any],
    started_clock: float,
) -> None:
    """Manifest, then the record: the record makes the snapshot exist."""
    buffer = io.BytesIO()
    count = write_manifest(sorted(builder.entries, key=lambda e: e.path), buffer, compress=True)
    data = buffer.getvalue()
    record["manifest"] = {
        "key": repository.key(volume, snapshot, ".manifest.gz"),
        "entries": count,
        "bytes": len(data),
        "xxh3": xxhash.xxh3_128_hexdigest(data),
    }
    try:
        repository.write_manifest(volume, snapshot, data)
        record["finished"] = utc_now().isoformat().replace("+00:00", "Z")
        record["durations"] = {
            "total": round(time.monotonic() - started_clock, 3),
            "databases": round(
                sum(d["seconds"] + d["integritySeconds"] for d in record["databases"]), 3
            ),
            "stream": round(record["archive"]["seconds"]["total"], 3),
        }
        repository.write_record(volume, snapshot, record)
    except MigratorError:
        keys = [record["archive"]["key"], record["manifest"]["key"]]
        with contextlib.suppress(MigratorError):  # else prune removes them later
            repository.delete(keys)
        raise
