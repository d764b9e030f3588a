"""One walk of a copy's source: this shard's files (lstat only), symlinks as rclone names them,
live SQLite databases left for the cutover."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from migrator.errors import BadInputError

SQLITE_HEADER = b"SQLite format 3\x00"
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")
LINK_SUFFIX = ".rclonelink"

Signature = tuple[int, int]  # (size, mtime_ns)


@dataclass(frozen=True)
class Shard:
    """Index ``index`` of ``count``: the files whose path hash falls in this partition.

    A hash of the path (not of sizes) keeps the partition stable while files change between
    runs, so no file can fall between two shards.
    """

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Shard:
        if not text:
            return cls()
        index, sep, count = text.partition("/")
        if not sep or not index.isdigit() or not count.isdigit():
            raise BadInputError(f"--shard {text!r} must look like INDEX/COUNT, e.g. 0/4")
        shard = cls(int(index), int(count))
        if not 0 <= shard.index < shard.count:
            raise BadInputError(f"--shard {text!r}: INDEX must be in 0..COUNT-1")
        return shard

    def owns(self, relpath: str) -> bool:
        if self.count == 1:
            return True
        return xxhash.xxh3_64_intdigest(os.fsencode(relpath)) % self.count == self.index

    @property
    def suffix(self) -> str:
        return "" if self.count == 1 else f".{self.index}-of-{self.count}"


@dataclass
class SourceTree:
    """One walk of the source: this shard's entries and what was left for the cutover."""

    files: dict[str, Signature] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    empty_dirs: set[str] = field(default_factory=set)
    skipped_sqlite: list[str] = field(default_factory=list)
    total_bytes: int = 0


def is_sqlite(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def walk_source(root: Path, shard: Shard, skip_live_sqlite: bool) -> SourceTree:
    """Walk ``root`` with lstat only; symlinks count as ``NAME.rclonelink`` objects (rclone --links)."""
    tree = SourceTree()
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(root / rel_dir if rel_dir else root) as entries:
            names = []
            empty = True
            for entry in entries:
                empty = False
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(rel)
                    if shard.owns(rel + "/"):
                        tree.dirs.add(rel)
                elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                    names.append((rel, entry.path, st))
        if empty and rel_dir and shard.owns(rel_dir + "/"):
            tree.empty_dirs.add(rel_dir)
        if skip_live_sqlite:
            names = _without_live_sqlite(names, tree)
        for rel, _full, st in names:
            if stat.S_ISLNK(st.st_mode):
                rel += LINK_SUFFIX  # what rclone --links calls it, on both sides
            if shard.owns(rel):
                tree.files[rel] = (st.st_size, st.st_mtime_ns)
                tree.total_bytes += st.st_size
    return tree


def _could_be_sqlite(size: int) -> bool:
    """An SQLite database is a whole number of pages (512 bytes at least): only those are opened."""
    return size > 0 and size % 512 == 0


def _without_live_sqlite(names: list[Any], tree: SourceTree) -> list[Any]:
    """Drop SQLite databases (found by header) and their -wal/-shm/-journal files."""
    databases = {
        rel
        for rel, full, st in names
        if stat.S_ISREG(st.st_mode) and _could_be_sqlite(st.st_size) and is_sqlite(full)
    }
    if not databases:
        return names
    skipped = databases | {db + suffix for db in databases for suffix in SQLITE_COMPANIONS}
    tree.skipped_sqlite.extend(sorted(rel for rel, _f, _s in names if rel in skipped))
    return [item for item in names if item[0] not in skipped]
