"""The archive format: a tar (pax) stream of one volume, written and read without seeking.

Members come in manifest order (raw path bytes, a directory sorting as ``name/``) with the
databases' consistent copies at the end; the volume root is the member ``.``. Headers carry
whole-second mtimes and numeric owners; the manifest beside the archive has the exact values
(nanosecond mtimes) and each file's xxh3-128, and restores apply the manifest's.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from migrator.errors import OperationFailedError

BLOCK = 512
RECORD = 20 * BLOCK  # what tar pads the end of an archive to
FLUSH_AT = 1 << 20
SKIP_TOP = frozenset({b"lost+found"})  # made by mkfs on every ext4 PVC


@dataclass(frozen=True)
class Item:
    """One walked entry: relative path bytes (``b"."`` for the root), kind, and its lstat."""

    path: bytes
    kind: str  # f l d o
    st: os.stat_result
    empty: bool = False  # directories: nothing inside

    @property
    def sort_key(self) -> bytes:
        return self.path + b"/" if self.kind == "d" else self.path


def walk_tree(root: Path, skip_top: frozenset[bytes] = SKIP_TOP) -> list[Item]:
    """Every entry under ``root`` (root first), sorted like a manifest; symlinks are not followed.

    Raises OperationFailedError when a directory cannot be listed.
    """
    root_bytes = os.fsencode(root)
    found: list[tuple[bytes, str, os.stat_result]] = []
    empty: set[bytes] = set()
    pending = [b""]
    while pending:
        rel_dir = pending.pop()
        directory = os.path.join(root_bytes, rel_dir) if rel_dir else root_bytes
        try:
            with os.scandir(directory) as listing:
                entries = list(listing)
        except OSError as exc:
            raise OperationFailedError(f"cannot list {os.fsdecode(directory)}: {exc}") from None
        if rel_dir and not entries:
            empty.add(rel_dir)
        for entry in entries:
            if not rel_dir and entry.name in skip_top:
                continue
            rel = rel_dir + b"/" + entry.name if rel_dir else entry.name
            st = entry.stat(follow_symlinks=False)
            kind = _kind(st.st_mode)
            found.append((rel, kind, st))
            if kind == "d":
                pending.append(rel)
    items = [Item(rel, kind, st, rel in empty) for rel, kind, st in found]
    items.sort(key=lambda item: item.sort_key)
    return [Item(b".", "d", os.lstat(root)), *items]


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "f"
    if stat.S_ISDIR(mode):
        return "d"
    if stat.S_ISLNK(mode):
        return "l"
    return "o"


_TYPES = {"f": b"0", "d": b"5", "l": b"2"}
_OCTAL_LIMITS = (8**7, 8**11)  # 8-byte and 12-byte numeric fields


def tar_header(
    path: bytes, kind: str, size: int, st: os.stat_result, linkname: bytes = b""
) -> bytes:
    """A tar header for one member (numeric owners, whole-second mtime).

    Short ASCII names with ordinary numbers get a plain ustar header built here (tarfile takes
    ~30 µs a header, which shows on 20,000 covers); anything else gets tarfile's pax header.
    """
    size = size if kind == "f" else 0
    mtime = st.st_mtime_ns // 1_000_000_000
    name = path + b"/" if kind == "d" else path
    small, large = _OCTAL_LIMITS
    if (
        len(name) <= 100
        and len(linkname) <= 100
        and name.isascii()
        and linkname.isascii()
        and 0 <= st.st_uid < small
        and 0 <= st.st_gid < small
        and size < large
        and 0 <= mtime < large
    ):
        return _ustar(name, kind, size, mtime, st, linkname)
    return _pax(path, kind, size, mtime, st, linkname)


def _ustar(
    name: bytes, kind: str, size: int, mtime: int, st: os.stat_result, linkname: bytes
) -> bytes:
    header = b"".join(
        (
            name.ljust(100, b"\0"),
            b"%07o\0" % stat.S_IMODE(st.st_mode),
            b"%07o\0" % st.st_uid,
            b"%07o\0" % st.st_gid,
            b"%011o\0" % size,
            b"%011o\0" % mtime,
            b"        ",  # the checksum counts itself as spaces
            _TYPES[kind],
            linkname.ljust(100, b"\0"),
            b"ustar\x0000",
            bytes(32 + 32 + 8 + 8 + 155 + 12),
        )
    )
    checksum = b"%06o\0 " % sum(header)
    return header[:148] + checksum + header[156:]


def _pax(
    path: bytes, kind: str, size: int, mtime: int, st: os.stat_result, linkname: bytes
) -> bytes:
    info = tarfile.TarInfo(os.fsdecode(path))
    info.type = {"f": tarfile.REGTYPE, "d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE}[kind]
    info.size, info.mtime = size, mtime
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    if kind == "l":
        info.linkname = os.fsdecode(linkname)
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class TarWriter:
    """Writes tar members to ``sink`` in large writes (small members are batched)."""

    def __init__(self, sink: Callable[[bytes], object]) -> None:
        self.sink = sink
        self.buffer = bytearray()
        self.written = 0

    def write(self, data: bytes) -> None:
        if len(data) >= FLUSH_AT:
            self.flush()
            self.sink(data)
        else:
            self.buffer += data
            if len(self.buffer) >= FLUSH_AT:
                self.flush()
        self.written += len(data)

    def pad(self, size: int) -> None:
        """Pad a member's data of ``size`` bytes to the next block."""
        remainder = size % BLOCK
        if remainder:
            self.write(bytes(BLOCK - remainder))

    def flush(self) -> None:
        if self.buffer:
            self.sink(bytes(self.buffer))
            self.buffer.clear()

    def close(self) -> None:
        """Two zero blocks end the archive; pad it to a whole record like tar does."""
        end = 2 * BLOCK
        total = self.written + end
        end += (RECORD - total % RECORD) % RECORD
        self.write(bytes(end))
        self.flush()


def member_path(name: str) -> bytes:
    """A member name as a safe relative path (``b"."`` for the root).

    Raises OperationFailedError for absolute names and names that climb out with ``..``.
    """
    raw = os.fsencode(name)
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    if raw.startswith(b"/") or b".." in parts:
        raise OperationFailedError(f"the archive holds an unsafe path {name!r}; refusing it")
    return b"/".join(parts) or b"."
