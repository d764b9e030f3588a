"""Apply a retention policy to one volume's snapshots in S3, and clear what dead runs left.

The choice is :func:`migrator.backup.retention.select_snapshots` (pure); this module lists,
deletes and reports. Incomplete snapshots (objects without a record) and multipart uploads are
removed only once they are older than ``INCOMPLETE_GRACE``, so a backup running right now is
never disturbed. With ``dry_run`` nothing is deleted and the result says what would be.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from migrator.backup.repository import BackupRepository, VolumeListing
from migrator.backup.retention import RetentionPolicy, select_snapshots
from migrator.backup.snapshot import utc_now
from migrator.objectstore import abort_stale_uploads

INCOMPLETE_GRACE = timedelta(hours=6)


@dataclass
class PruneResult:
    volume: str
    dry_run: bool
    kept: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    aborted_uploads: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "volume": self.volume,
            "dryRun": self.dry_run,
            "kept": [{"id": i, "rules": list(r)} for i, r in self.kept],
            "deleted": self.deleted,
            "incompleteDeleted": self.incomplete,
            "abortedUploads": self.aborted_uploads,
        }


def prune_volume(
    repository: BackupRepository,
    volume: str,
    policy: RetentionPolicy,
    dry_run: bool = False,
    clock: Callable[[], datetime] = utc_now,
    listing: VolumeListing | None = None,
) -> PruneResult:
    """Delete the snapshots of ``volume`` that ``policy`` does not keep (never the newest).

    Raises StorageError when listing or deleting fails.
    """
    listing = listing or repository.list_volume(volume)
    by_time = {s.time: s for s in listing.snapshots}
    decision = select_snapshots(by_time, policy)
    result = PruneResult(volume, dry_run)
    result.kept = [(by_time[t].id, rules) for t, rules in decision.keep.items()]
    result.deleted = [by_time[t].id for t in decision.delete]
    cutoff = clock() - INCOMPLETE_GRACE
    result.incomplete = [
        stem for stem in listing.incomplete if listing.modified.get(stem, clock()) < cutoff
    ]
    if dry_run:
        return result
    for stem in [*result.deleted, *result.incomplete]:
        repository.delete(listing.keys[stem])
    prefix = repository.location.key(volume) + "/"
    result.aborted_uploads = abort_stale_uploads(
        repository.client, repository.bucket, prefix, INCOMPLETE_GRACE.total_seconds()
    )
    return result
