"""The checksum engine: parallel xxh3-128 hashing, sorted manifests, merge-compare.

Sources are a local directory (:func:`hash_tree`) and an S3 prefix (:func:`hash_s3_prefix`);
both yield :class:`Entry` values sorted by raw relative path bytes, which
:func:`write_manifest` stores and :func:`read_manifest` streams back, and :func:`compare`
merge-joins in constant memory. The manifest format is in ``docs/manifest-format.md``.
"""

from migrator.checksum.agent import hash_directory_to_manifest
from migrator.checksum.cache import default_cache_dir
from migrator.checksum.compare import (
    CONTENT_KINDS,
    METADATA_KINDS,
    CompareResult,
    Difference,
    compare,
    iter_differences,
)
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
