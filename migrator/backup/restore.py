"""Restore a snapshot into a directory: content checked as it lands, then mode, owner and mtime.

The target must be empty (a top-level ``lost+found`` does not count) unless ``force`` is given;
then its content is *replaced*: everything in it is removed first. Keeping old files would be
worse than it looks: a stale ``-wal`` beside a restored database would be replayed into it.

Paths are confined to the target: absolute names and ``..`` are refused, every parent of a
member must be a real directory (lstat, never a symlink: a link restored earlier cannot redirect
a later member, not even inside the target), and attributes are set through descriptors opened
with O_NOFOLLOW, so they never land on what a link points to.

Writes are bounded before they happen: a file or link must be in the manifest, a file no bigger
than its entry says, all files together no more than the record's ``bytes``, and no path twice;
otherwise the restore stops with UnsafeArchiveError, leaving a partial restore in the target.

Owners come back only with the right to chown (root, or CAP_CHOWN); without it the restore
still succeeds and says so. Setuid and setgid bits of files come back only with ``keep_setid``
(a restore should not plant a setuid binary nobody asked for); directories keep theirs: setgid
on a directory only makes new files inherit its group, and Kubernetes sets it on every
directory of a volume with an fsGroup.
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

from migrator.backup.reader import (
    Checked,
    Member,
    ReadReport,
    UnsafeArchiveError,
    database_paths,
    read_snapshot,
)
from migrator.backup.repository import BackupRepository, Snapshot
from migrator.backup.sqlite import integrity_problems
from migrator.checksum import FILE, SYMLINK, Entry, escape_path
from migrator.errors import BadInputError, OperationFailedError

KEEP_TOP = frozenset({"lost+found"})
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SETID = stat.S_ISUID | stat.S_ISGID


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
    keep_setid: bool = False
    byte_limit: int | None = None  # the record's bytes: never more, whatever the archive says
    directories: list[tuple[bytes, _Metadata]] = field(default_factory=list)
    safe_parents: set[bytes] = field(default_factory=set)  # verified real directories
    seen: set[bytes] = field(default_factory=set)
    written: int = 0
    setid_stripped: int = 0
    chown_denied: bool = False

    def __post_init__(self) -> None:
        self.root = os.fsencode(os.path.realpath(self.target))
        self.safe_parents.add(b"")

    def __call__(self, member: Member, checked: Checked) -> None:
        try:
            self._restore(member, checked)
        except OSError as exc:
            raise OperationFailedError(
                f"cannot restore {escape_path(member.path)} into {self.target}: "
                f"{exc.strerror or exc}"
            ) from None

    def _restore(self, member: Member, checked: Checked) -> None:
        info, path = member.info, member.path
        meta = self._metadata(member)
        if path == b".":
            self.directories.append((self.root, meta))
            return
        if path in self.seen:
            raise UnsafeArchiveError(f"the archive holds {escape_path(path)} twice")
        self.seen.add(path)
        self._check_parents(path)
        dest = os.path.join(self.root, path)
        if info.isdir():
            self._make_directory(dest, path)
            self.directories.append((dest, meta))
            self.report.directories += 1
        elif info.isreg():
            self._check_file(member)
            self._write_file(dest, member, checked, meta)
        elif info.issym():
            self._check_entry(member, SYMLINK, "a symlink")
            os.symlink(info.linkname, dest)
            self._check_link(member, os.fsencode(info.linkname))
            self._apply_to_link(dest, meta)
            self.report.symlinks += 1
        else:
            self.report.note(f"skipped {escape_path(path)}: unsupported member type")

    def _metadata(self, member: Member) -> _Metadata:
        info, entry = member.info, member.entry
        if entry is not None and entry.mtime_ns is not None and entry.mode is not None:
            return _Metadata(entry.mode, entry.uid or 0, entry.gid or 0, entry.mtime_ns)
        return _Metadata(info.mode, info.uid, info.gid, int(info.mtime) * 1_000_000_000)

    def _check_parents(self, path: bytes) -> None:
        """Every parent of ``path`` must be a real directory (made here when missing)."""
        parent = os.path.dirname(path)
        if parent in self.safe_parents:
            return
        parts = parent.split(b"/")
        for depth in range(1, len(parts) + 1):
            prefix = b"/".join(parts[:depth])
            if prefix in self.safe_parents:
                continue
            full = os.path.join(self.root, prefix)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                os.mkdir(full, 0o700)  # archives list parents first; tolerate one that does not
                st = os.lstat(full)
            if not stat.S_ISDIR(st.st_mode):
                kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
                raise UnsafeArchiveError(
                    f"{escape_path(path)}: its parent {escape_path(prefix)} is {kind} "
                    "(a restore never writes through links)"
                )
            self.safe_parents.add(prefix)

    def _make_directory(self, dest: bytes, path: bytes) -> None:
        try:
            os.mkdir(dest, 0o700)  # its own mode comes last, in finish()
        except FileExistsError:
            st = os.lstat(dest)
            if stat.S_ISLNK(st.st_mode):
                raise UnsafeArchiveError(
                    f"{escape_path(path)} is a symlink, not a directory"
                ) from None
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafeArchiveError(
                    f"{escape_path(path)} exists and is not a directory"
                ) from None

    def _check_entry(self, member: Member, kind: str, what: str) -> Entry:
        entry, name = member.entry, escape_path(member.path)
        if entry is None:
            raise UnsafeArchiveError(f"{name} is not in the snapshot's manifest")
        if entry.type != kind:
            raise UnsafeArchiveError(f"{name} is {what} in the archive, not in the manifest")
        return entry

    def _check_file(self, member: Member) -> None:
        """Refuse a file before a byte of it is written when it would write more than allowed."""
        entry = self._check_entry(member, FILE, "a file")
        size, name = member.info.size, escape_path(member.path)
        if size > entry.size:
            raise UnsafeArchiveError(f"{name} holds {size} bytes, the manifest says {entry.size}")
        if self.byte_limit is not None and self.written + size > self.byte_limit:
            raise UnsafeArchiveError(
                f"its files hold more than the {self.byte_limit} bytes its record says "
                f"(reached at {name})"
            )
        self.written += size

    def _write_file(self, dest: bytes, member: Member, checked: Checked, meta: _Metadata) -> None:
        fd = os.open(dest, _CREATE, 0o600)
        try:
            for chunk in checked.chunks(member):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            self._apply(fd, meta, directory=False)
        finally:
            os.close(fd)

    def _check_link(self, member: Member, target: bytes) -> None:
        entry, name = member.entry, escape_path(member.path)
        if entry is not None and entry.xxh3 != xxhash.xxh3_128_hexdigest(target):
            self.report.problem(f"{name}: symlink target differs from the manifest")

    def _mode(self, mode: int, directory: bool) -> int:
        mode = stat.S_IMODE(mode)
        if directory or self.keep_setid or not mode & _SETID:
            return mode
        self.setid_stripped += 1
        return mode & ~_SETID

    def _apply(self, fd: int, meta: _Metadata, directory: bool) -> None:
        """Owner, mode and mtime through an open descriptor: never through a link."""
        try:
            os.fchown(fd, meta.uid, meta.gid)
        except PermissionError:
            self.chown_denied = True
        os.fchmod(fd, self._mode(meta.mode, directory))  # after chown, which clears setuid bits
        os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))

    def _apply_to_link(self, path: bytes, meta: _Metadata) -> None:
        try:
            os.chown(path, meta.uid, meta.gid, follow_symlinks=False)
        except PermissionError:
            self.chown_denied = True
        os.utime(path, ns=(meta.mtime_ns, meta.mtime_ns), follow_symlinks=False)

    def finish(self) -> None:
        """Directory metadata last, deepest first: writing into them changed their mtimes."""
        for path, meta in reversed(self.directories):
            fd = os.open(path, _OPEN_DIRECTORY)  # O_NOFOLLOW: a link here fails, never follows
            try:
                self._apply(fd, meta, directory=True)
            finally:
                os.close(fd)
        if self.chown_denied:
            self.report.note(
                "owners were not restored: this process may not chown (run as root, or with "
                "CAP_CHOWN as the restore Job does)"
            )
        if self.setid_stripped:
            self.report.note(
                f"setuid/setgid bits of {self.setid_stripped} files were not restored "
                "(pass --keep-setid to restore them)"
            )


def restore_snapshot(
    repository: BackupRepository,
    snapshot: Snapshot,
    target: Path,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    keep_setid: bool = False,
) -> ReadReport:
    """Restore ``snapshot`` into ``target`` and check it: every file against the manifest as
    it is written, the archive against its record, each database with PRAGMA integrity_check.
    ``keep_setid`` restores the setuid/setgid bits of files too.

    Returns the report (``ok`` False names each problem). Raises BadInputError for a target
    that is not empty (without ``force``), StorageError when S3 fails, UnsafeArchiveError when
    the archive would write through a link or more than its manifest and record say,
    OperationFailedError when the target cannot be written.
    """
    prepare_target(target, force)
    started = time.monotonic()
    report = ReadReport(snapshot.volume, snapshot.id)
    limit = (snapshot.record or {}).get("bytes")
    restorer = _Restorer(target, report, keep_setid, limit if isinstance(limit, int) else None)
    try:
        read_snapshot(repository, snapshot, restorer, progress, report)
        restorer.finish()
    except UnsafeArchiveError as exc:
        raise UnsafeArchiveError(
            f"snapshot {snapshot.id} of {snapshot.volume}: refusing its archive: {exc.message}; "
            f"{target} holds a partial restore"
        ) from None
    except OSError as exc:
        raise OperationFailedError(f"cannot restore into {target}: {exc.strerror or exc}") from None
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
