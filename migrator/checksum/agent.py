"""What ``migrator agent hash DIR --out FILE`` runs inside a Job: hash a tree into a manifest."""

from __future__ import annotations

import os

from migrator.checksum.local import hash_tree
from migrator.checksum.manifest import ManifestTarget, write_manifest
from migrator.checksum.pipeline import HashStats, Progress


def hash_directory_to_manifest(
    root: str | os.PathLike[str],
    out: ManifestTarget = "-",
    *,
    workers: int | None = None,
    sample: float | None = None,
    cache: str | os.PathLike[str] | None = None,
    compress: bool | None = None,
    progress: Progress | None = None,
) -> HashStats:
    """Hash every entry under ``root`` and write the sorted manifest to ``out``.

    ``out`` is a path (gzip when it ends in ``.gz``, or as ``compress`` says), ``"-"`` for
    stdout, or a binary stream. Other arguments are those of :func:`hash_tree`. Returns the
    run's counters. Raises ChecksumError when the tree cannot be read; a manifest written to
    a path is only put in place once complete.
    """
    stats = HashStats()
    entries = hash_tree(
        root, workers=workers, sample=sample, cache=cache, progress=progress, stats=stats
    )
    write_manifest(entries, out, compress=compress)
    return stats
