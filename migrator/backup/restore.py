"""Restore a snapshot into a directory: content checked as it lands, then mode, owner and mtime.

The target must be empty (a top-level ``lost+found`` does not count) unless ``force`` is given;
then its content is *replaced*: everything in it is removed first. Keeping old files would be
worse than it looks: a stale ``-wal`` beside a restored database would be replayed into it.

Paths are confined to the target: absolute names and ``..`` are refused, and no member is
written through a symlink (a link restored earlier cannot redirect a later member).
Owners come back only with the right to chown (root, or CAP_CHOWN); without it the restore
still succeeds and says so.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from migrator.backup.reader import Checked, Member, ReadReport, database_paths, read_snapshot
from migrator.backup.repository import BackupRepository, Snapshot
from migrator.backup.sqlite import integrity_problems
from migrator.checksum import escape_path
from migrator.errors import BadInputError, OperationFailedError

KEEP_TOP = frozenset({"lost+found"})
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def prepare_target(target: Path, force: bool) -> None:
    """Make sure ``target`` is an empty directory; with ``force`` empty it first.

    Raises BadInputError when it is a file, or is not empty and ``force`` is not given.
    """
    if target.exists() and not target.is_dir():
        raise BadInputError(f"{target} exists and is not a directory")
    target.mkdir(parents=True, exist_ok=True)
    present = [e for e in os.scandir(target) if e.name not in KEEP_TOP]
    if present and not force:
        raise BadInputError(
            f"{target} is not empty ({len(present)} entries); restore into an empty directory "
            "or pass --force to replace its content"
        )
    for entry in present:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


@dataclass
class _Metadata:
    mode: int
    uid: int
    gid: int
    mtime_ns: int


@dataclass
class _Restorer:
    target: Path
    report: ReadReport
    directories: list[tuple[bytes, _Metadata]] = field(default_factory=list)
    safe_parents: set[bytes] = field(default_factory=set)
    chown_denied: bool = False

    def __post_init__(self) -> None:
        self.root = os.fsencode(os.path.realpath(self.target))

    def __call__(self, member: Member, checked: Checked) -> None:
        info, path = member.info, member.path
        meta = self._metadata(member)
        if path == b".":
            self.directories.append((self.root, meta))
            return
        dest = os.path.join(self.root, path)
        self._check_parent(os.path.dirname(dest), path)
        if info.isdir():
            os.makedirs(dest, exist_ok=True)
            self.directories.append((dest, meta))
            self.report.directories += 1
        elif info.isreg():
            self._write_file(dest, member, checked)
            self._apply(dest, meta, link=False)
        elif info.issym():
            os.symlink(info.linkname, dest)
            target = os.fsencode(info.linkname)
            self._check_link(member, target)
            self._apply(dest, meta, link=True)
            self.report.symlinks += 1
        else:
            self.report.note(f"skipped {escape_path(path)}: unsupported member type")

    def _metadata(self, member: Member) -> _Metadata:
        info, entry = member.info, member.entry
        if entry is not None and entry.mtime_ns is not None and entry.mode is not None:
            return _Metadata(entry.mode, entry.uid or 0, entry.gid or 0, entry.mtime_ns)
        return _Metadata(info.mode, info.uid, info.gid, int(info.mtime) * 1_000_000_000)

    def _check_parent(self, parent: bytes, path: bytes) -> None:
        if parent in self.safe_parents:
            return
        real = os.path.realpath(parent)
        if real != self.root and not real.startswith(self.root + b"/"):
            raise OperationFailedError(
                f"the archive would write {escape_path(path)} outside the target; refusing"
            )
        if not os.path.isdir(parent):
            os.makedirs(parent, exist_ok=True)
        self.safe_parents.add(parent)

    def _write_file(self, dest: bytes, member: Member, checked: Checked) -> None:
        fd = os.open(dest, _CREATE, 0o600)
        with open(fd, "wb", closefd=True) as out:
            for chunk in checked.chunks(member):
                out.write(chunk)

    def _check_link(self, member: Member, target: bytes) -> None:
        entry, name = member.entry, escape_path(member.path)
        if entry is None:
            self.report.problem(f"{name}: in the archive but not in the manifest")
        elif entry.xxh3 != xxhash.xxh3_128_hexdigest(target):
            self.report.problem(f"{name}: symlink target differs from the manifest")

    def _apply(self, path: bytes, meta: _Metadata, link: bool) -> None:
        try:
            os.chown(path, meta.uid, meta.gid, follow_symlinks=False)
        except PermissionError:
            self.chown_denied = True
        if not link:
            os.chmod(path, stat.S_IMODE(meta.mode))  # after chown, which clears setuid bits
        os.utime(path, ns=(meta.mtime_ns, meta.mtime_ns), follow_symlinks=False)

    def finish(self) -> None:
        """Directory metadata last, deepest first: writing into them changed their mtimes."""
        for path, meta in reversed(self.directories):
            self._apply(path, meta, link=False)
        if self.chown_denied:
            self.report.note(
                "owners were not restored: this process may not chown (run as root, or with "
                "CAP_CHOWN as the restore Job does)"
            )


def restore_snapshot(
    repository: BackupRepository,
    snapshot: Snapshot,
    target: Path,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ReadReport:
    """Restore ``snapshot`` into ``target`` and check it: every file against the manifest as
    it is written, the archive against its record, each database with PRAGMA integrity_check.

    Returns the report (``ok`` False names each problem). Raises BadInputError for a target
    that is not empty (without ``force``), StorageError when S3 fails.
    """
    prepare_target(target, force)
    started = time.monotonic()
    report = ReadReport(snapshot.volume, snapshot.id)
    restorer = _Restorer(target, report)
    read_snapshot(repository, snapshot, restorer, progress, report)
    restorer.finish()
    for path in sorted(database_paths(snapshot)):
        check_database(target / os.fsdecode(path), os.fsdecode(path), report)
    report.note(f"restored in {time.monotonic() - started:.1f}s")
    return report


def check_database(path: Path, name: str, report: ReadReport) -> None:
    """Run PRAGMA integrity_check on a restored database and record the outcome."""
    if not path.is_file():
        report.problem(f"{name}: database missing")
        return
    problems = integrity_problems(path)
    if problems:
        report.problem(f"{name}: PRAGMA integrity_check: {'; '.join(problems)}")
    else:
        report.databases.append(name)
