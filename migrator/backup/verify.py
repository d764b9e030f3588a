"""Verify a snapshot: its archive as stored in S3, or a directory restored from it (a drill).

Archive: download and decompress it, hash every file against the manifest, compare the
archive's size and xxh3 with the record, and run ``PRAGMA integrity_check`` on each database
(written to a temporary file, the only thing that touches the disk). Directory: hash the tree
and merge-compare it with the manifest (content always; mode, owner and mtime when strict),
and integrity-check each database in place.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import xxhash

from migrator.backup.reader import (
    MAX_PROBLEMS,
    Checked,
    Member,
    ReadReport,
    UnsafeArchiveError,
    database_paths,
    read_snapshot,
)
from migrator.backup.repository import BackupRepository, Snapshot
from migrator.backup.restore import check_database
from migrator.checksum import FILE, Entry, compare, escape_path, hash_tree


def verify_snapshot(
    repository: BackupRepository,
    snapshot: Snapshot,
    tmp_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ReadReport:
    """Download and check ``snapshot`` whole; the report names every problem found.

    Raises StorageError when S3 fails, VerificationFailedError when the manifest is unusable.
    """
    databases = database_paths(snapshot)
    work = Path(tempfile.mkdtemp(prefix="migrator-verify-", dir=tmp_dir))
    report = ReadReport(snapshot.volume, snapshot.id)

    def handle(member: Member, checked: Checked) -> None:
        info = member.info
        if info.isreg() and member.path in databases:
            copy = work / "database.db"
            with copy.open("wb") as out:
                for chunk in checked.chunks(member):
                    out.write(chunk)
            check_database(copy, os.fsdecode(member.path), report)
            copy.unlink()
        elif info.isreg():
            for _chunk in checked.chunks(member):
                pass
        elif info.issym():
            _check_link(member, report)
        elif info.isdir() and member.path != b".":
            report.directories += 1

    try:
        return read_snapshot(repository, snapshot, handle, progress, report)
    except UnsafeArchiveError as exc:  # a header that would exhaust memory: damage to report
        report.problem(f"the archive is damaged: {exc.message}")
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_link(member: Member, report: ReadReport) -> None:
    digest = xxhash.xxh3_128_hexdigest(os.fsencode(member.info.linkname))
    if member.entry is None or member.entry.xxh3 != digest:
        report.problem(f"{escape_path(member.path)}: symlink differs from the manifest")
    report.symlinks += 1


def _without_setid(entry: Entry) -> Entry:
    if entry.type != FILE or entry.mode is None:
        return entry
    return entry._replace(mode=entry.mode & ~(stat.S_ISUID | stat.S_ISGID))


def verify_directory(
    repository: BackupRepository,
    snapshot: Snapshot,
    directory: Path,
    strict_metadata: bool = False,
    file_setid: bool = True,
) -> ReadReport:
    """Check a restored ``directory`` against ``snapshot``'s manifest and its databases.

    Content differences are problems; mode, owner and mtime differences too when
    ``strict_metadata``, notes otherwise. Without ``file_setid`` files are expected without
    their setuid/setgid bits (a restore without ``keep_setid``). Raises ChecksumError when the
    tree cannot be read.
    """
    report = ReadReport(snapshot.volume, snapshot.id)
    manifest = repository.manifest_entries(snapshot)
    if not file_setid:
        manifest = [_without_setid(e) for e in manifest]
    result = compare(
        manifest, hash_tree(directory), strict_metadata=strict_metadata, limit=MAX_PROBLEMS
    )
    for difference in result.differences:
        if difference.is_content or strict_metadata:
            report.problem(difference.describe())
        else:
            report.note(f"metadata: {difference.describe()}")
    failing = result.content_differences + (result.metadata_differences if strict_metadata else 0)
    report.problem_count = failing  # all of them, also those past the first MAX_PROBLEMS
    report.files, report.bytes = result.matched, result.source_bytes
    for path in sorted(database_paths(snapshot)):
        check_database(directory / os.fsdecode(path), os.fsdecode(path), report)
    return report
