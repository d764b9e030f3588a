"""The checksum engine: parallel xxh3-128 hashing, sorted manifests, merge-compare.

Sources are a local directory (:func:`hash_tree`) and an S3 prefix (:func:`hash_s3_prefix`);
both yield :class:`Entry` values sorted by raw relative path bytes, which
:func:`write_manifest` stores and :func:`read_manifest` streams back, and :func:`compare`
merge-joins in constant memory. The manifest format is in ``docs/manifest-format.md``.

Imports are lazy: a verify that hashes a local tree does not pay for the S3 modules, and a 0.1 s
job is dominated by interpreter start-up and imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Eager: the submodule ``compare`` would otherwise shadow the function of that name.
from migrator.checksum.compare import (
    CONTENT_KINDS,
    METADATA_KINDS,
    CompareResult,
    Difference,
    compare,
    iter_differences,
)

if TYPE_CHECKING:
    from migrator.checksum.agent import hash_directory_to_manifest
    from migrator.checksum.cache import default_cache_dir
    from migrator.checksum.entry import (
        DIRECTORY,
        FILE,
        OTHER,
        SYMLINK,
        Entry,
        escape_path,
        in_sample,
        unescape_path,
    )
    from migrator.checksum.errors import ChecksumError, ManifestError
    from migrator.checksum.local import hash_tree
    from migrator.checksum.manifest import read_manifest, write_manifest
    from migrator.checksum.pipeline import HashStats, Progress
    from migrator.checksum.s3 import hash_s3_prefix

_HOMES = {
    "hash_directory_to_manifest": "migrator.checksum.agent",
    "default_cache_dir": "migrator.checksum.cache",
    "DIRECTORY": "migrator.checksum.entry",
    "FILE": "migrator.checksum.entry",
    "OTHER": "migrator.checksum.entry",
    "SYMLINK": "migrator.checksum.entry",
    "Entry": "migrator.checksum.entry",
    "escape_path": "migrator.checksum.entry",
    "in_sample": "migrator.checksum.entry",
    "unescape_path": "migrator.checksum.entry",
    "ChecksumError": "migrator.checksum.errors",
    "ManifestError": "migrator.checksum.errors",
    "hash_tree": "migrator.checksum.local",
    "read_manifest": "migrator.checksum.manifest",
    "write_manifest": "migrator.checksum.manifest",
    "HashStats": "migrator.checksum.pipeline",
    "Progress": "migrator.checksum.pipeline",
    "hash_s3_prefix": "migrator.checksum.s3",
}

__all__ = [
    "CONTENT_KINDS",
    "DIRECTORY",
    "FILE",
    "METADATA_KINDS",
    "OTHER",
    "SYMLINK",
    "ChecksumError",
    "CompareResult",
    "Difference",
    "Entry",
    "HashStats",
    "ManifestError",
    "Progress",
    "compare",
    "default_cache_dir",
    "escape_path",
    "hash_directory_to_manifest",
    "hash_s3_prefix",
    "hash_tree",
    "in_sample",
    "iter_differences",
    "read_manifest",
    "unescape_path",
    "write_manifest",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
