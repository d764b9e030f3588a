"""Merge-join two sorted entry streams in constant memory and name every difference."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from migrator.checksum.entry import FILE, Entry, escape_path
from migrator.checksum.errors import ManifestError

# Content differences: a copy with any of these lost data.
MISSING = "missing"  # at the source, not at the destination
EXTRA = "extra"  # at the destination, not at the source
TYPE = "type"  # a file at one side, a symlink or directory at the other
SIZE = "size"
CHECKSUM = "checksum"
CONTENT_KINDS = (MISSING, EXTRA, TYPE, SIZE, CHECKSUM)

# Metadata differences: reported always, failing only with strict metadata.
MODE = "mode"
OWNER = "owner"
MTIME = "mtime"
METADATA_KINDS = (MODE, OWNER, MTIME)


class Difference(NamedTuple):
    """One difference: its kind, the raw path, and the source and destination entries."""

    kind: str
    path: bytes
    source: Entry | None
    destination: Entry | None

    @property
    def name(self) -> str:
        """The path as escaped text."""
        return escape_path(self.path)

    @property
    def is_content(self) -> bool:
        """True for a difference in existence, type, size or content."""
        return self.kind in CONTENT_KINDS

    def describe(self) -> str:
        """A one-line human description, e.g. ``size  media/a.mkv: 1024 != 512``."""
        src, dst = self.source, self.destination
        detail = ""
        if src is not None and dst is not None:
            if self.kind == SIZE:
                detail = f": {src.size} != {dst.size}"
            elif self.kind == CHECKSUM:
                detail = f": {src.xxh3} != {dst.xxh3}"
            elif self.kind == TYPE:
                detail = f": {src.type} != {dst.type}"
            elif self.kind == MODE:
                detail = f": {src.mode or 0:04o} != {dst.mode or 0:04o}"
            elif self.kind == OWNER:
                detail = f": {src.uid}:{src.gid} != {dst.uid}:{dst.gid}"
            elif self.kind == MTIME:
                detail = f": {src.mtime_ns} != {dst.mtime_ns}"
        return f"{self.kind}\t{self.name}{detail}"


class CompareResult:
    """What a comparison found.

    ``counts`` has one key per difference kind; ``differences`` keeps the first ``limit`` of
    them (``truncated`` says whether more were found). ``ok`` is the verdict: no content
    difference, and no metadata difference either when strict metadata was asked.
    (A plain class: importing ``dataclasses`` costs ~10 ms of a one-shot hashing job.)
    """

    def __init__(self, strict_metadata: bool) -> None:
        self.strict_metadata = strict_metadata
        self.source_entries = 0
        self.destination_entries = 0
        self.matched = 0
        self.source_bytes = 0
        self.counts: Counter[str] = Counter()
        self.differences: list[Difference] = []
        self.truncated = False

    @property
    def content_differences(self) -> int:
        """Number of differences in existence, type, size or content."""
        return sum(self.counts[kind] for kind in CONTENT_KINDS)

    @property
    def metadata_differences(self) -> int:
        """Number of mode, owner and mtime differences."""
        return sum(self.counts[kind] for kind in METADATA_KINDS)

    @property
    def ok(self) -> bool:
        """True when the copy passes."""
        failing = self.content_differences
        if self.strict_metadata:
            failing += self.metadata_differences
        return failing == 0

    def summary(self) -> dict[str, object]:
        """A JSON-ready summary (for ``--json``)."""
        return {
            "ok": self.ok,
            "strict_metadata": self.strict_metadata,
            "source_entries": self.source_entries,
            "destination_entries": self.destination_entries,
            "matched": self.matched,
            "source_bytes": self.source_bytes,
            "differences": {kind: self.counts[kind] for kind in CONTENT_KINDS + METADATA_KINDS},
            "truncated": self.truncated,
        }


def _content_difference(src: Entry, dst: Entry) -> str | None:
    if src.type != dst.type:
        return TYPE
    if src.size != dst.size:
        return SIZE
    if src.xxh3 != dst.xxh3:
        return CHECKSUM
    return None


def _metadata_differences(src: Entry, dst: Entry, mtime_window_ns: int) -> Iterator[str]:
    """Metadata kinds that differ; a side that does not know a value never differs."""
    if src.mode is not None and dst.mode is not None and src.mode != dst.mode:
        yield MODE
    if (src.uid is not None and dst.uid is not None and src.uid != dst.uid) or (
        src.gid is not None and dst.gid is not None and src.gid != dst.gid
    ):
        yield OWNER
    # Directory and symlink times change as a copy fills them in: only files are compared.
    if (
        src.type == FILE
        and src.mtime_ns is not None
        and dst.mtime_ns is not None
        and abs(src.mtime_ns - dst.mtime_ns) > mtime_window_ns
    ):
        yield MTIME


def _checked(entries: Iterable[Entry], side: str) -> Iterator[Entry]:
    previous: bytes | None = None
    for entry in entries:
        if previous is not None and entry.path <= previous:
            raise ManifestError(
                f"{side} entries are not sorted: {escape_path(entry.path)!r} after "
                f"{escape_path(previous)!r}"
            )
        previous = entry.path
        yield entry


def iter_differences(
    source: Iterable[Entry],
    destination: Iterable[Entry],
    *,
    mtime_window_ns: int = 0,
    on_match: Callable[[Entry, Entry], None] | None = None,
) -> Iterator[Difference]:
    """Yield the differences between two path-sorted entry streams, in path order.

    Memory is constant: one entry of each side is held at a time. A pair with a content
    difference is not also checked for metadata. mtimes within ``mtime_window_ns`` are equal.
    Raises ManifestError if either stream is not strictly sorted by path bytes.
    """
    src_iter = _checked(source, "source")
    dst_iter = _checked(destination, "destination")
    src = next(src_iter, None)
    dst = next(dst_iter, None)
    while src is not None or dst is not None:
        if dst is None or (src is not None and src.path < dst.path):
            assert src is not None
            yield Difference(MISSING, src.path, src, None)
            src = next(src_iter, None)
        elif src is None or dst.path < src.path:
            yield Difference(EXTRA, dst.path, None, dst)
            dst = next(dst_iter, None)
        else:
            kind = _content_difference(src, dst)
            if kind is not None:
                yield Difference(kind, src.path, src, dst)
            else:
                if on_match is not None:
                    on_match(src, dst)
                for meta in _metadata_differences(src, dst, mtime_window_ns):
                    yield Difference(meta, src.path, src, dst)
            src = next(src_iter, None)
            dst = next(dst_iter, None)


def compare(
    source: Iterable[Entry],
    destination: Iterable[Entry],
    *,
    strict_metadata: bool = False,
    mtime_window_ns: int = 0,
    limit: int = 1000,
    on_difference: Callable[[Difference], None] | None = None,
) -> CompareResult:
    """Compare two path-sorted entry streams (a copy's source and destination).

    Returns a CompareResult with counts of every kind and the first ``limit`` differences;
    ``on_difference`` sees every difference as it is found (to stream them to a file). Memory
    stays constant whatever the number of entries. Raises ManifestError on unsorted input.
    """
    result = CompareResult(strict_metadata=strict_metadata)

    def count_source(entries: Iterable[Entry]) -> Iterator[Entry]:
        for entry in entries:
            result.source_entries += 1
            result.source_bytes += entry.size
            yield entry

    def count_destination(entries: Iterable[Entry]) -> Iterator[Entry]:
        for entry in entries:
            result.destination_entries += 1
            yield entry

    def matched(_src: Entry, _dst: Entry) -> None:
        result.matched += 1

    for difference in iter_differences(
        count_source(source),
        count_destination(destination),
        mtime_window_ns=mtime_window_ns,
        on_match=matched,
    ):
        result.counts[difference.kind] += 1
        if len(result.differences) < limit:
            result.differences.append(difference)
        else:
            result.truncated = True
        if on_difference is not None:
            on_difference(difference)
    return result
