"""Nightly config backups: SQLite-safe snapshots streamed as tar + zstd to S3, retention, restore,
verify and restore drills.

Layout in the bucket (``docs/how-to/backups.md``)::

    <prefix>/<volume>/<YYYYMMDDTHHMMSSZ>.tar.zst      the archive (multipart upload)
    <prefix>/<volume>/<YYYYMMDDTHHMMSSZ>.manifest.gz  every entry with its xxh3-128 (manifest v1)
    <prefix>/<volume>/<YYYYMMDDTHHMMSSZ>.json         the snapshot record, written last

A snapshot exists once its record does: the record is the commit marker.
"""
