"""Where snapshots live in S3 and how they are found, read and deleted.

One volume's snapshots sit under ``<prefix>/<volume>/``, three objects each, named after the
UTC time the snapshot started (``20250114T030000Z``)::

    20250114T030000Z.tar.zst       the archive: tar (pax) compressed with zstd
    20250114T030000Z.manifest.gz   every entry with size, mtime, mode, owner and xxh3-128
    20250114T030000Z.json          the snapshot record (format below), written last

The record is the commit marker: objects of an id without a record are an *incomplete*
snapshot (a run that died), never listed, restored or counted by retention, and deleted by
``prune`` once they are old enough not to belong to a run in progress.
"""

from __future__ import annotations

import gzip
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import xxhash

from migrator.checksum import Entry, ManifestError, read_manifest
from migrator.errors import BadInputError, VerificationFailedError
from migrator.objectstore import (
    S3Location,
    delete_objects,
    get_bytes,
    list_objects,
    open_object,
    put_bytes,
    s3_call,
)

ID_FORMAT = "%Y%m%dT%H%M%SZ"
ARCHIVE, MANIFEST, RECORD = ".tar.zst", ".manifest.gz", ".json"
SUFFIXES = (ARCHIVE, MANIFEST, RECORD)
RECORD_FORMAT = "migrator-backup-snapshot/v1"
LATEST = "latest"
_TICK = timedelta(seconds=1)


def snapshot_id(moment: datetime) -> str:
    """The id (and object name stem) of a snapshot started at ``moment``: ``20250114T030000Z``."""
    return moment.astimezone(UTC).strftime(ID_FORMAT)


def parse_snapshot_id(text: str) -> datetime | None:
    """The UTC start time an id names, or None when ``text`` is not an id."""
    try:
        return datetime.strptime(text, ID_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def is_snapshot_object(key: str) -> bool:
    """Whether the last segment of ``key`` is named like a snapshot's object
    (``20250114T030000Z.tar.zst``, ``.manifest.gz`` or ``.json``)."""
    stem, suffix = _split(key.rsplit("/", 1)[-1])
    return suffix is not None and parse_snapshot_id(stem) is not None


class UnknownSnapshotError(BadInputError):
    def __init__(self, volume: str, name: str, known: list[str]) -> None:
        hint = f"newest: {', '.join(known[-3:])}" if known else "it has none yet"
        super().__init__(
            f"no snapshot {name!r} of volume {volume!r} ({hint}); "
            "list them with 'migrator backup list'"
        )


@dataclass
class Snapshot:
    """One complete snapshot of a volume: its id, archive size, and (once loaded) its record."""

    volume: str
    id: str
    archive_bytes: int
    record: dict[str, Any] | None = None

    @property
    def time(self) -> datetime:
        moment = parse_snapshot_id(self.id)
        assert moment is not None
        return moment

    def summary(self) -> dict[str, Any]:
        """What ``backup list --json`` prints for it."""
        record = self.record or {}
        return {
            "volume": self.volume,
            "id": self.id,
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "archiveBytes": self.archive_bytes,
            "files": record.get("files"),
            "bytes": record.get("bytes"),
            "databases": [d["path"] for d in record.get("databases", [])],
            "app": record.get("app"),
            "migrator": record.get("migrator"),
            "seconds": (record.get("durations") or {}).get("total"),
        }


@dataclass
class VolumeListing:
    """Everything under one volume's prefix, by snapshot id (oldest first)."""

    volume: str
    snapshots: list[Snapshot] = field(default_factory=list)
    incomplete: dict[str, list[str]] = field(default_factory=dict)  # id -> its keys
    keys: dict[str, list[str]] = field(default_factory=dict)  # id -> every key of it
    modified: dict[str, datetime] = field(default_factory=dict)  # id -> newest LastModified

    @property
    def ids(self) -> set[str]:
        return set(self.keys)


class BackupRepository:
    """The snapshots under one ``s3://BUCKET/PREFIX``, through a boto3 client."""

    def __init__(self, client: Any, location: S3Location) -> None:
        self.client, self.location = client, location

    @property
    def bucket(self) -> str:
        return self.location.bucket

    def key(self, volume: str, snapshot: str, suffix: str) -> str:
        return self.location.key(volume, snapshot + suffix)

    def url(self, volume: str, snapshot: str, suffix: str = ARCHIVE) -> str:
        return f"s3://{self.bucket}/{self.key(volume, snapshot, suffix)}"

    def check_access(self) -> None:
        """One cheap listing: raises StorageError for a missing bucket or bad credentials."""
        s3_call(
            f"listing s3://{self.bucket}/{self.location.prefix}",
            lambda: self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=self.location.key("") + "/", MaxKeys=1
            ),
        )

    def list_volume(self, volume: str) -> VolumeListing:
        """Every snapshot (and incomplete one) of ``volume``; records are not loaded."""
        listing = VolumeListing(volume)
        prefix = self.location.key(volume) + "/"
        sizes: dict[str, int] = {}
        has_record: set[str] = set()
        for obj in list_objects(self.client, self.bucket, prefix):
            name = str(obj["Key"])[len(prefix) :]
            stem, suffix = _split(name)
            if suffix is None or "/" in stem or parse_snapshot_id(stem) is None:
                continue  # not ours: leave it alone
            listing.keys.setdefault(stem, []).append(str(obj["Key"]))
            modified = obj.get("LastModified")
            if modified is not None and modified > listing.modified.get(stem, modified - _TICK):
                listing.modified[stem] = modified
            if suffix == ARCHIVE:
                sizes[stem] = int(obj["Size"])
            elif suffix == RECORD:
                has_record.add(stem)
        for stem in sorted(listing.keys):
            if stem in has_record and stem in sizes:
                listing.snapshots.append(Snapshot(volume, stem, sizes[stem]))
            else:
                listing.incomplete[stem] = listing.keys[stem]
        return listing

    def load_records(self, snapshots: list[Snapshot]) -> None:
        """Fetch the records of ``snapshots`` (small objects, a few at a time)."""
        missing = [s for s in snapshots if s.record is None]
        with ThreadPoolExecutor(8) as pool:
            for snapshot, record in zip(
                missing, pool.map(lambda s: self.read_record(s.volume, s.id), missing), strict=True
            ):
                snapshot.record = record

    def read_record(self, volume: str, snapshot: str) -> dict[str, Any]:
        data = get_bytes(self.client, self.bucket, self.key(volume, snapshot, RECORD))
        try:
            record: dict[str, Any] = json.loads(data)
        except ValueError:
            raise VerificationFailedError(
                f"the record of snapshot {snapshot} of {volume} is not valid JSON"
            ) from None
        if record.get("format") != RECORD_FORMAT:
            raise VerificationFailedError(
                f"snapshot {snapshot} of {volume} has an unknown record format "
                f"{record.get('format')!r}; a newer migrator wrote it"
            )
        return record

    def resolve(self, volume: str, name: str) -> Snapshot:
        """The snapshot ``name`` (an id, ``latest``, or an archive key/URL) with its record.

        Raises UnknownSnapshotError when there is no such complete snapshot.
        """
        wanted = name.rstrip("/").rsplit("/", 1)[-1]
        stem, _suffix = _split(wanted)
        listing = self.list_volume(volume)
        known = [s.id for s in listing.snapshots]
        if name == LATEST:
            if not listing.snapshots:
                raise UnknownSnapshotError(volume, name, known)
            found = listing.snapshots[-1]
        else:
            matches = [s for s in listing.snapshots if s.id == stem]
            if not matches:
                raise UnknownSnapshotError(volume, name, known)
            found = matches[0]
        found.record = self.read_record(volume, found.id)
        return found

    def write_manifest(self, volume: str, snapshot: str, data: bytes) -> None:
        put_bytes(
            self.client, self.bucket, self.key(volume, snapshot, MANIFEST), data, "application/gzip"
        )

    def write_record(self, volume: str, snapshot: str, record: dict[str, Any]) -> None:
        data = (json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode()
        put_bytes(
            self.client, self.bucket, self.key(volume, snapshot, RECORD), data, "application/json"
        )

    def manifest_entries(self, snapshot: Snapshot) -> list[Entry]:
        """The snapshot's manifest, checked against the hash in its record.

        Raises VerificationFailedError when the manifest object is damaged.
        """
        data = get_bytes(self.client, self.bucket, self.key(snapshot.volume, snapshot.id, MANIFEST))
        expected = ((snapshot.record or {}).get("manifest") or {}).get("xxh3")
        actual = xxhash.xxh3_128_hexdigest(data)
        if expected and actual != expected:
            raise VerificationFailedError(
                f"the manifest of snapshot {snapshot.id} of {snapshot.volume} is damaged "
                f"(xxh3 {actual}, the record says {expected})"
            )
        try:
            return list(read_manifest(io.BytesIO(data), name=f"manifest of {snapshot.id}"))
        except (ManifestError, OSError, EOFError, gzip.BadGzipFile) as exc:
            raise VerificationFailedError(
                f"the manifest of snapshot {snapshot.id} is unreadable: {exc}"
            ) from None

    def open_archive(self, snapshot: Snapshot) -> io.BufferedReader:
        """A resumable read stream of the snapshot's archive."""
        return open_object(
            self.client, self.bucket, self.key(snapshot.volume, snapshot.id, ARCHIVE)
        )

    def delete(self, keys: list[str]) -> None:
        """Delete a snapshot's objects, its record first: it stops existing in one step."""
        records = [k for k in keys if k.endswith(RECORD)]
        if records:
            delete_objects(self.client, self.bucket, records)
        rest = [k for k in keys if not k.endswith(RECORD)]
        if rest:
            delete_objects(self.client, self.bucket, rest)


def _split(name: str) -> tuple[str, str | None]:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, None
