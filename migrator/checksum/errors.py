"""Errors of the checksum engine, placed in the tool-wide hierarchy of ``migrator.errors``."""

from __future__ import annotations

from migrator.errors import BadInputError, OperationFailedError


class ManifestError(BadInputError):
    """A manifest file that cannot be read: not a manifest, malformed line, or unsorted."""


class ChecksumError(OperationFailedError):
    """A file or object could not be read for hashing (permission denied, I/O error, S3 error)."""
