"""Manifest files: one line per entry, sorted by raw path bytes, read and written as streams.

The format is documented in ``docs/manifest-format.md``. A manifest whose name ends in ``.gz``
is gzip-compressed (level 1: the hex digests do not compress, the rest does; see the doc);
reading detects gzip by its magic bytes whatever the name.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from migrator.checksum.entry import (
    DIRECTORY,
    FILE,
    OTHER,
    SYMLINK,
    Entry,
    escape_path,
    unescape_path,
)
from migrator.checksum.errors import ManifestError

HEADER = "#migrator-manifest v1"
FIELDS = "#fields path type size mtime mode uid gid xxh3"
_TYPES = frozenset((FILE, SYMLINK, DIRECTORY, OTHER))
_GZIP_MAGIC = b"\x1f\x8b"

ManifestTarget = str | os.PathLike[str] | BinaryIO


def format_mtime(mtime_ns: int | None) -> str:
    """Nanoseconds since the epoch as ``SECONDS.NNNNNNNNN`` (``-`` when unknown)."""
    if mtime_ns is None:
        return "-"
    seconds, nanos = divmod(mtime_ns, 1_000_000_000)
    return f"{seconds}.{nanos:09d}"


def parse_mtime(text: str) -> int | None:
    """Inverse of :func:`format_mtime`."""
    if text == "-":
        return None
    seconds, _, nanos = text.partition(".")
    return int(seconds) * 1_000_000_000 + int(nanos.ljust(9, "0")[:9] or 0)


def _optional(value: int | None) -> str:
    return "-" if value is None else str(value)


def format_entry(entry: Entry) -> str:
    """One manifest line (with its newline) for ``entry``."""
    mode = "-" if entry.mode is None else f"{entry.mode:04o}"
    return (
        f"{escape_path(entry.path)}\t{entry.type}\t{entry.size}\t{format_mtime(entry.mtime_ns)}\t"
        f"{mode}\t{_optional(entry.uid)}\t{_optional(entry.gid)}\t{entry.xxh3 or '-'}\n"
    )


def parse_entry(line: str) -> Entry:
    """Parse one manifest line (without or with its newline); raises ValueError if malformed."""
    fields = line.rstrip("\n").split("\t")
    if len(fields) != 8:
        raise ValueError(f"expected 8 tab-separated fields, found {len(fields)}")
    path, kind, size, mtime, mode, uid, gid, xxh3 = fields
    if kind not in _TYPES:
        raise ValueError(f"unknown entry type {kind!r}")
    return Entry(
        unescape_path(path),
        kind,
        int(size),
        parse_mtime(mtime),
        None if mode == "-" else int(mode, 8),
        None if uid == "-" else int(uid),
        None if gid == "-" else int(gid),
        None if xxh3 == "-" else xxh3,
    )


@contextlib.contextmanager
def _open_for_writing(target: ManifestTarget, compress: bool | None) -> Iterator[IO[str]]:
    """A text stream to ``target``; a path gets a temporary file renamed into place at the end."""
    temporary: Path | None = None
    final: Path | None = None
    if isinstance(target, str | os.PathLike) and str(target) != "-":
        final = Path(target)
        temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        raw: BinaryIO = temporary.open("wb")
        compress = final.suffix == ".gz" if compress is None else compress
    elif isinstance(target, str | os.PathLike):
        raw = sys.stdout.buffer
    else:
        raw = target
    zipped = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) if compress else None
    sink = cast(IO[bytes], zipped or raw)
    text = io.TextIOWrapper(sink, encoding="utf-8", newline="\n", write_through=False)
    try:
        yield text
        text.flush()
    except BaseException:
        if temporary is not None:
            raw.close()
            temporary.unlink(missing_ok=True)
        raise
    text.detach()
    if zipped is not None:
        zipped.close()
    if temporary is not None and final is not None:
        raw.close()
        os.replace(temporary, final)
    else:
        raw.flush()


def write_manifest(
    entries: Iterable[Entry], target: ManifestTarget, *, compress: bool | None = None
) -> int:
    """Write ``entries`` (already sorted by path) to a path, ``"-"`` (stdout) or a binary stream.

    ``compress`` None means gzip when the path ends in ``.gz``. Returns the number of entries
    written. Raises ManifestError if the entries are not strictly sorted by path bytes.
    """
    count = 0
    previous: bytes | None = None
    with _open_for_writing(target, compress) as out:
        out.write(f"{HEADER}\n{FIELDS}\n")
        for entry in entries:
            if previous is not None and entry.path <= previous:
                raise ManifestError(
                    f"entries out of order: {escape_path(entry.path)!r} after "
                    f"{escape_path(previous)!r}"
                )
            previous = entry.path
            out.write(format_entry(entry))
            count += 1
    return count


@contextlib.contextmanager
def _open_for_reading(source: ManifestTarget) -> Iterator[IO[str]]:
    with contextlib.ExitStack() as stack:
        raw: IO[bytes]
        if not isinstance(source, str | os.PathLike):
            raw = source
        elif str(source) == "-":
            raw = sys.stdin.buffer
        else:
            raw = stack.enter_context(Path(source).open("rb"))
        buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(cast(Any, raw))
        binary: IO[bytes] = buffered
        if buffered.peek(2)[:2] == _GZIP_MAGIC:
            binary = cast(IO[bytes], gzip.GzipFile(fileobj=buffered, mode="rb"))
        text = io.TextIOWrapper(binary, encoding="utf-8", newline="\n")
        try:
            yield text
        finally:
            text.detach()


def read_manifest(source: ManifestTarget, *, name: str | None = None) -> Iterator[Entry]:
    """Stream the entries of a manifest from a path, ``"-"`` (stdin) or a binary stream.

    Plain or gzip (detected by magic bytes). Raises ManifestError, naming the line, when the
    header is missing, a line is malformed, or the entries are not strictly sorted.
    """
    label = name or (str(source) if isinstance(source, str | os.PathLike) else "manifest")
    with _open_for_reading(source) as lines:
        header = lines.readline().rstrip("\n")
        if header != HEADER:
            raise ManifestError(f"{label} is not a migrator manifest (first line {header!r})")
        previous = b""
        for number, line in enumerate(lines, start=2):
            if line.startswith("#"):
                continue
            try:
                entry = parse_entry(line)
            except ValueError as exc:
                raise ManifestError(f"{label}, line {number}: {exc}") from None
            if entry.path <= previous:
                raise ManifestError(f"{label}, line {number}: entries are not sorted by path")
            previous = entry.path
            yield entry
