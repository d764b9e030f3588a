"""Consistent copies of live SQLite databases, read from a (possibly read-only) mount.

A database is found by its header, never by its name. Its copy goes through SQLite's online
backup API in **one step** (``pages=-1``): one read transaction, so the copy is the database as
it was when that transaction began, with every transaction committed before it and none after,
while the app keeps writing. (Stepping in pieces would restart whenever another process writes.)
The copy's ``-wal``/``-shm`` files are never needed: the backup API writes a self-contained file.

What works on a read-only mount (measured on SQLite 3.40 and documented in
``docs/how-to/backups.md``):

- App running, WAL mode (``-wal`` and ``-shm`` exist): ``file:...?mode=ro`` opens the
  ``-shm`` read-only and takes a POSIX read lock on an existing read mark. The app's
  checkpoints cannot overwrite pages this reader still needs, so the snapshot is consistent.
  Locks only work between processes of one kernel: the backup pod must run on the node where
  the app mounts the volume (an RWO volume forces that anyway).
- App stopped cleanly (no ``-wal``, no ``-shm``): ``mode=ro`` fails with SQLITE_CANTOPEN
  because the ``-shm`` cannot be created (and on a writable directory it would create
  ``-wal``/``-shm`` it cannot remove). Nobody writes, so the file is read with
  ``immutable=1`` (no locks, no WAL) straight away; the database's size and mtime are compared
  before and after, and a writer that appeared meanwhile makes the copy start again.
- A ``-wal`` without its ``-shm`` (a crashed app, no writer): the database and its WAL are
  copied byte for byte to the temporary directory, checked unchanged, and SQLite recovers the
  WAL there before the backup API copies it.
- Rollback-journal databases: ``mode=ro`` takes a shared lock like any reader; the app waits
  for it while the copy runs.

Every copy must pass ``PRAGMA integrity_check`` before it is archived.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from migrator.errors import OperationFailedError

HEADER = b"SQLite format 3\x00"
COMPANIONS = ("-wal", "-shm", "-journal")
MIN_PAGE = 512  # a database file is always a whole number of pages of at least 512 bytes
BUSY_RETRIES = 5
STABLE_RETRIES = 3


class DatabaseError(OperationFailedError):
    """A database could not be copied consistently, or its copy failed the integrity check."""


@dataclass(frozen=True)
class DatabaseCopy:
    """A consistent copy of one database and how it was made."""

    path: Path
    size: int
    method: str  # read-only | immutable | recovered
    seconds: float
    integrity_seconds: float


def may_be_database(size: int) -> bool:
    """Only files of a whole number of 512-byte pages can be databases: a cheap first filter."""
    return size >= MIN_PAGE and size % MIN_PAGE == 0


def is_database(head: bytes) -> bool:
    """Whether the first bytes of a file are an SQLite header."""
    return head[: len(HEADER)] == HEADER


def has_database_header(path: str | bytes | os.PathLike[str]) -> bool:
    try:
        with open(path, "rb") as handle:
            return is_database(handle.read(len(HEADER)))
    except OSError:
        return False


def uri(path: Path, **query: str) -> str:
    """A ``file:`` URI for ``path`` with query parameters (special characters quoted)."""
    quoted = urllib.parse.quote(str(path.resolve()))
    return f"file:{quoted}?{urllib.parse.urlencode(query)}"


def integrity_problems(path: Path, limit: int = 5) -> list[str]:
    """``PRAGMA integrity_check`` of a file nobody else has open; [] when it says ``ok``."""
    connection = sqlite3.connect(uri(path, immutable="1"), uri=True)
    try:
        rows = [str(row[0]) for row in connection.execute(f"pragma integrity_check({limit})")]
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    finally:
        connection.close()
    return [] if rows == ["ok"] else rows


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


def _backup(source_uri: str, dest: Path) -> None:
    dest.unlink(missing_ok=True)
    source = sqlite3.connect(source_uri, uri=True, timeout=30)
    try:
        target = sqlite3.connect(dest)
        try:
            source.backup(target, pages=-1)  # one step: one read transaction, one snapshot
        finally:
            target.close()
    finally:
        source.close()


def _error_name(exc: sqlite3.Error) -> str:
    return str(getattr(exc, "sqlite_errorname", "") or "")


def _copy_stable(source: Path, dest: Path, work: Path) -> str:
    """Copy one database by the first method that works here; returns the method's name."""
    wal, shm = Path(f"{source}-wal"), Path(f"{source}-shm")
    # A closed database (no -wal, no -shm) is read without locks: on a writable directory
    # mode=ro would create -wal/-shm beside it and, read-only, could not remove them again.
    if wal.exists() or shm.exists():
        try:
            _backup(uri(source, mode="ro"), dest)
            return "read-only"
        except sqlite3.OperationalError as exc:
            if _error_name(exc) != "SQLITE_CANTOPEN" or shm.exists():
                raise
    before = (_signature(source), _signature(wal))
    if before[1] is None:
        _backup(uri(source, immutable="1"), dest)
        method = "immutable"
    else:  # a WAL without its index and nobody writing: recover it in a private copy
        private = work / "recover.db"
        shutil.copyfile(source, private)
        shutil.copyfile(wal, Path(f"{private}-wal"))
        _backup(uri(private), dest)
        for leftover in (private, *(Path(f"{private}{s}") for s in COMPANIONS)):
            leftover.unlink(missing_ok=True)
        method = "recovered"
    if (_signature(source), _signature(wal)) != before or shm.exists():
        raise _Changed()
    return method


class _Changed(Exception):
    """A writer appeared while the database was read without locks: copy it again."""


def snapshot_database(source: Path, dest: Path, label: str | None = None) -> DatabaseCopy:
    """Copy the live database ``source`` into ``dest`` consistently and integrity-check the copy.

    ``label`` names the database in errors (default: its path). Raises DatabaseError when it
    cannot be read (after retrying busy/locked errors and writers that appear mid-copy) or
    when the copy fails ``PRAGMA integrity_check`` (the source itself is then damaged).
    """
    name = label or str(source)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".recover-") as work:
        method = _copy_with_retries(source, dest, Path(work), name)
    copied = time.monotonic()
    problems = integrity_problems(dest)
    if problems:
        dest.unlink(missing_ok=True)
        raise DatabaseError(
            f"{name}: the snapshot fails PRAGMA integrity_check ({'; '.join(problems)}); "
            "the database itself is probably damaged: check the app"
        )
    return DatabaseCopy(
        dest, dest.stat().st_size, method, copied - started, time.monotonic() - copied
    )


def _copy_with_retries(source: Path, dest: Path, work: Path, name: str) -> str:
    for attempt in range(BUSY_RETRIES + STABLE_RETRIES):
        try:
            return _copy_stable(source, dest, work)
        except _Changed:
            if attempt >= STABLE_RETRIES:
                raise DatabaseError(
                    f"{name}: kept changing while it was read; retry later"
                ) from None
        except sqlite3.Error as exc:
            retryable = _error_name(exc) in ("SQLITE_BUSY", "SQLITE_LOCKED") or (
                "locked" in str(exc) or "busy" in str(exc)
            )
            if not retryable or attempt >= BUSY_RETRIES:
                raise DatabaseError(f"{name}: cannot be copied consistently: {exc}") from None
            time.sleep(0.2 * 2**attempt)
    raise DatabaseError(f"{name}: cannot be copied consistently")
