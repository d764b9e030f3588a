"""What the backup containers run (``migrator agent backup``, ``backup-restore``,
``backup-drill``): the same code a host runs in local mode, reporting JSON events.

Per-volume resilience: a volume that fails is reported and the others go on; retention runs
only after a volume's snapshot succeeded. Events are one JSON object per line on stdout (the
executors read them from the pod logs); the last is ``done`` with every volume's outcome.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from migrator.backup.prune import prune_volume
from migrator.backup.repository import BackupRepository
from migrator.backup.restore import restore_snapshot
from migrator.backup.retention import RetentionPolicy
from migrator.backup.snapshot import SnapshotOptions, create_snapshot, utc_now
from migrator.backup.verify import verify_directory
from migrator.errors import MigratorError
from migrator.events import Emit

PROGRESS_SECONDS = 0.5


@dataclass(frozen=True)
class VolumeSource:
    """A volume to back up: its name, the directory it is mounted at, the app it belongs to."""

    name: str
    path: Path
    app: str | None = None


class _Throttled:
    """Progress events at most every PROGRESS_SECONDS."""

    def __init__(self, emit: Emit, volume: str) -> None:
        self.emit, self.volume, self.last = emit, volume, 0.0

    def __call__(self, files: int, size: int) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_SECONDS:
            self.last = now
            self.emit({"event": "progress", "volume": self.volume, "files": files, "bytes": size})


def backup_volumes(
    repository: BackupRepository,
    sources: list[VolumeSource],
    policy: RetentionPolicy,
    options: SnapshotOptions,
    emit: Emit,
) -> list[dict[str, Any]]:
    """Snapshot each volume, then apply retention to it; returns one outcome per volume."""
    outcomes = []
    for source in sources:
        emit({"event": "start", "volume": source.name, "path": str(source.path)})
        outcome: dict[str, Any] = {"volume": source.name}
        try:
            volume_options = SnapshotOptions(
                **{**options.__dict__, "app": source.app or options.app}
            )
            record = create_snapshot(
                repository, source.name, source.path, volume_options, _Throttled(emit, source.name)
            )
            outcome.update(_snapshot_outcome(record))
            pruned = prune_volume(repository, source.name, policy)
            outcome["pruned"] = pruned.deleted + pruned.incomplete
            outcome["status"] = "done"
        except MigratorError as exc:
            outcome.update(status="failed", message=exc.message)
            emit({"event": "error", "volume": source.name, "message": exc.message})
        emit({"event": "volume-done", **outcome})
        outcomes.append(outcome)
    emit({"event": "done", "ok": all(o["status"] == "done" for o in outcomes), "volumes": outcomes})
    return outcomes


def _snapshot_outcome(record: dict[str, Any]) -> dict[str, Any]:
    archive = record["archive"]
    return {
        "snapshot": record["id"],
        "files": record["files"],
        "bytes": record["bytes"],
        "archiveBytes": archive["bytes"],
        "seconds": record["durations"]["total"],
        "databases": [d["path"] for d in record["databases"]],
        "warnings": record["warnings"],
    }


def restore_volume(
    repository: BackupRepository,
    volume: str,
    snapshot: str,
    target: Path,
    force: bool,
    emit: Emit,
    keep_setid: bool = False,
) -> dict[str, Any]:
    """Restore one snapshot into ``target``; returns the report as a dict (``ok`` says it all)."""
    found = repository.resolve(volume, snapshot)
    emit({"event": "start", "volume": volume, "snapshot": found.id, "to": str(target)})
    report = restore_snapshot(
        repository, found, target, force, _Throttled(emit, volume), keep_setid
    )
    outcome = report.as_dict()
    emit({"event": "done", **outcome})
    return outcome


def drill_volumes(
    repository: BackupRepository,
    volumes: list[str],
    scratch: Path,
    max_age: timedelta | None,
    emit: Emit,
    clock: Callable[[], datetime] = utc_now,
) -> list[dict[str, Any]]:
    """Restore each volume's newest snapshot into ``scratch``, verify it, and clean up.

    A volume fails when it has no snapshot, when the newest is older than ``max_age``, when
    the restore finds a problem, or when the restored tree differs from the manifest.
    """
    outcomes = []
    for volume in volumes:
        emit({"event": "start", "volume": volume})
        outcome: dict[str, Any] = {"volume": volume}
        target = scratch / volume
        try:
            outcome.update(_drill_one(repository, volume, target, max_age, emit, clock))
        except MigratorError as exc:
            outcome.update(status="failed", problems=[exc.message])
        finally:
            shutil.rmtree(target, ignore_errors=True)
        if outcome["status"] == "failed":
            emit({"event": "error", "volume": volume, "message": "; ".join(outcome["problems"])})
        emit({"event": "volume-done", **outcome})
        outcomes.append(outcome)
    emit({"event": "done", "ok": all(o["status"] == "done" for o in outcomes), "volumes": outcomes})
    return outcomes


def _drill_one(
    repository: BackupRepository,
    volume: str,
    target: Path,
    max_age: timedelta | None,
    emit: Emit,
    clock: Callable[[], datetime],
) -> dict[str, Any]:
    snapshot = repository.resolve(volume, "latest")
    age = clock() - snapshot.time
    outcome: dict[str, Any] = {
        "snapshot": snapshot.id,
        "ageHours": round(age.total_seconds() / 3600, 1),
    }
    problems = []
    if max_age is not None and age > max_age:
        problems.append(
            f"the newest snapshot {snapshot.id} is {age.total_seconds() / 3600:.0f}h old "
            f"(more than {max_age.total_seconds() / 3600:.0f}h): are the nightly backups failing?"
        )
    restored = restore_snapshot(repository, snapshot, target, True, _Throttled(emit, volume))
    problems += restored.problems
    owners = not any("owners were not restored" in note for note in restored.notes)
    if restored.ok:
        checked = verify_directory(
            repository, snapshot, target, strict_metadata=owners, file_setid=False
        )
        problems += checked.problems
        outcome.update(files=checked.files, bytes=checked.bytes, databases=checked.databases)
    outcome.update(status="failed" if problems else "done", problems=problems)
    return outcome
