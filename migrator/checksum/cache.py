"""Re-verify caches: a sorted text file read by merge-join and rewritten as a run goes.

A cache line is ``escaped-path TAB key... TAB value...``: for a local tree the key is
``size mtime_ns inode`` and the value the digest; for S3 the key is ``size etag last_modified``
and the value the digest plus the metadata the GET returned. Both sides visit paths in sorted
order, so reading needs no index and constant memory. The new cache is written beside the old
one and replaces it only when a run completes.
"""

from __future__ import annotations

import contextlib
import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from migrator.checksum.entry import escape_path, unescape_path

CACHE_HEADER = "#migrator-hash-cache v1"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/migrator/hash-cache`` (``~/.cache/...`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "migrator" / "hash-cache"


class CacheReader:
    """Answers ``lookup(path)`` for ascending paths from a cache file made for ``identity``.

    A missing, unreadable or foreign cache (another root, another format) answers nothing.
    """

    def __init__(self, path: Path | None, identity: str) -> None:
        self._lines: Iterator[str] = iter(())
        self._current: tuple[bytes, list[str]] | None = None
        self._stream: IO[str] | None = None
        if path is None or not path.exists():
            return
        try:
            stream: IO[str] = gzip.open(path, "rt", encoding="utf-8", newline="\n")  # noqa: SIM115 (kept open for the run)
            header = stream.readline().rstrip("\n")
        except (OSError, EOFError, UnicodeDecodeError):
            return
        if header != f"{CACHE_HEADER} {identity}":
            stream.close()
            return
        self._stream = stream
        self._lines = iter(stream)
        self._advance()

    def _advance(self) -> None:
        try:
            fields = next(self._lines).rstrip("\n").split("\t")
            self._current = (unescape_path(fields[0]), fields[1:])
        except (StopIteration, OSError, EOFError, ValueError, IndexError):
            self._current = None

    def lookup(self, path: bytes) -> list[str] | None:
        """The stored fields for ``path``; paths must be asked in ascending byte order."""
        while self._current is not None and self._current[0] < path:
            self._advance()
        if self._current is not None and self._current[0] == path:
            return self._current[1]
        return None

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


class CacheWriter:
    """Writes a new cache next to ``path``; :meth:`commit` moves it into place."""

    def __init__(self, path: Path | None, identity: str) -> None:
        self._path = path
        self._stream: IO[str] | None = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        self._stream = gzip.open(  # noqa: SIM115 (kept open for the run)
            self._temporary, "wt", encoding="utf-8", newline="\n", compresslevel=1
        )
        self._stream.write(f"{CACHE_HEADER} {identity}\n")

    def add(self, path: bytes, fields: list[str]) -> None:
        """Record ``fields`` for ``path`` (ascending order, as visited)."""
        if self._stream is not None:
            self._stream.write(escape_path(path) + "\t" + "\t".join(fields) + "\n")

    def commit(self) -> None:
        """Finish the new cache and replace the old one."""
        if self._stream is None or self._path is None:
            return
        self._stream.close()
        self._stream = None
        os.replace(self._temporary, self._path)

    def discard(self) -> None:
        """Drop the new cache (the run did not complete); the old one stays."""
        if self._stream is None:
            return
        self._stream.close()
        self._stream = None
        with contextlib.suppress(OSError):
            self._temporary.unlink()
