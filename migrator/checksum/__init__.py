"""The checksum engine: parallel xxh3-128 hashing, sorted manifests, merge-compare.

Sources are a local directory (:func:`hash_tree`) and an S3 prefix (:func:`hash_s3_prefix`);
both yield :class:`Entry` values sorted by raw relative path bytes, which
:func:`write_manifest` stores and :func:`read_manifest` streams back, and :func:`compare`
merge-joins in constant memory.
"""

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
from migrator.checksum.local import HashStats, hash_tree
from migrator.checksum.manifest import read_manifest, write_manifest

__all__ = [
    "DIRECTORY",
    "FILE",
    "OTHER",
    "SYMLINK",
    "ChecksumError",
    "Entry",
    "HashStats",
    "ManifestError",
    "escape_path",
    "hash_tree",
    "in_sample",
    "read_manifest",
    "unescape_path",
    "write_manifest",
]
