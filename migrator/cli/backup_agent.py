"""The backup commands the Jobs' containers run: ``migrator agent backup``, ``backup-restore``,
``backup-drill`` (``migrator backup ...`` builds those Jobs: :mod:`migrator.cli.backup`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from migrator.cli import handle_errors
from migrator.cli.agent import agent_group
from migrator.errors import BadInputError, VerificationFailedError

F = TypeVar("F", bound=Callable[..., Any])
MIB = 2**20


def retention_options(fn: F) -> F:
    for rule, default, what in reversed(
        [
            ("last", 0, "newest snapshots"),
            ("daily", 7, "days (newest snapshot of each)"),
            ("weekly", 4, "ISO weeks (newest snapshot of each)"),
            ("monthly", 6, "months (newest snapshot of each)"),
        ]
    ):
        fn = click.option(
            f"--keep-{rule}",
            type=click.IntRange(0),
            default=default,
            show_default=True,
            help=f"Keep this many {what}.",
        )(fn)
    return fn


def retention_policy(options: dict[str, Any]) -> Any:
    from migrator.backup.retention import RetentionPolicy

    return RetentionPolicy(
        options["keep_last"], options["keep_daily"], options["keep_weekly"], options["keep_monthly"]
    )


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise BadInputError(f"{option} {value!r} must look like NAME=VALUE")
        pairs[name] = rest
    return pairs


def _agent_repository(url: str) -> Any:
    from migrator.backup.repository import BackupRepository
    from migrator.objectstore import S3Location, S3Settings, make_client

    settings = S3Settings.from_environment(None)
    return BackupRepository(make_client(settings, flexible_checksums=False), S3Location.parse(url))


@agent_group.command("backup")
@click.option("--to", "url", required=True, metavar="s3://BUCKET/PREFIX", help="Backup location.")
@click.option(
    "--volume",
    "volumes",
    multiple=True,
    required=True,
    nargs=2,
    metavar="NAME PATH",
    help="A volume and the directory it is mounted at (repeatable).",
)
@click.option("--app", "apps", multiple=True, metavar="NAME=APP", help="The app of a volume.")
@click.option("--plan-name", help="Recorded in each snapshot.")
@retention_options
@click.option("--tmp-dir", type=click.Path(file_okay=False), help="Where database copies go.")
@click.option(
    "--part-size", type=click.IntRange(5), default=16, show_default=True, help="Upload part MiB."
)
@click.option(
    "--level", type=click.IntRange(1, 19), default=3, show_default=True, help="zstd level."
)
@handle_errors
def agent_backup(**options: Any) -> None:
    """Snapshot each volume to S3 and apply retention; one JSON event per line on stdout."""
    from migrator import ui
    from migrator.backup.agent import VolumeSource, backup_volumes
    from migrator.backup.snapshot import SnapshotOptions
    from migrator.errors import OperationFailedError
    from migrator.events import json_lines

    apps = _pairs(options["apps"], "--app")
    sources = [VolumeSource(name, Path(path), apps.get(name)) for name, path in options["volumes"]]
    snapshot_options = SnapshotOptions(
        part_size=options["part_size"] * MIB,
        level=options["level"],
        plan=options["plan_name"],
        tmp_dir=Path(options["tmp_dir"]) if options["tmp_dir"] else None,
    )
    outcomes = backup_volumes(
        _agent_repository(options["url"]),
        sources,
        retention_policy(options),
        snapshot_options,
        json_lines(sys.stdout),
    )
    for o in outcomes:
        if o["status"] == "done":
            ui.err.print(
                f"{o['volume']}: snapshot {o['snapshot']}: {o['files']} files, {o['bytes']} bytes "
                f"-> {o['archiveBytes']} in {o['seconds']:.1f}s; pruned {len(o['pruned'])}",
                markup=False,
            )
    failed = [f"{o['volume']}: {o['message']}" for o in outcomes if o["status"] != "done"]
    if failed:
        raise OperationFailedError("backup failed for " + "; ".join(failed))


@agent_group.command("backup-restore")
@click.option("--from", "url", required=True, metavar="s3://BUCKET/PREFIX", help="Backup location.")
@click.option("--volume", required=True, help="The volume the snapshot is of.")
@click.option("--snapshot", required=True, help="Snapshot id, or 'latest'.")
@click.option("--to", "target", required=True, type=click.Path(file_okay=False), help="Target.")
@click.option("--force", is_flag=True, help="Replace the content of a non-empty target.")
@click.option("--keep-setid", is_flag=True, help="Restore the setuid/setgid bits of files too.")
@handle_errors
def agent_backup_restore(**options: Any) -> None:
    """Restore one snapshot into a directory (a mounted PVC); JSON events on stdout."""
    from migrator.backup.agent import restore_volume
    from migrator.events import json_lines

    outcome = restore_volume(
        _agent_repository(options["url"]),
        options["volume"],
        options["snapshot"],
        Path(options["target"]),
        options["force"],
        json_lines(sys.stdout),
        options["keep_setid"],
    )
    if not outcome["ok"]:
        raise VerificationFailedError(
            f"restore of {outcome['snapshot']} has {outcome['problemCount']} problem(s): "
            + "; ".join(outcome["problems"][:3])
        )


@agent_group.command("backup-drill")
@click.option("--from", "url", required=True, metavar="s3://BUCKET/PREFIX", help="Backup location.")
@click.option("--volume", "volumes", multiple=True, required=True, help="Volume (repeatable).")
@click.option(
    "--scratch",
    required=True,
    type=click.Path(file_okay=False),
    help="Where to restore (emptyDir).",
)
@click.option(
    "--max-age-hours",
    type=click.IntRange(0),
    help="Fail when the newest snapshot is older than this.",
)
@handle_errors
def agent_backup_drill(**options: Any) -> None:
    """Restore each volume's newest snapshot into scratch space and verify it; exit 1 if any
    problem (or a stale newest snapshot) is found."""
    from migrator.backup.agent import drill_volumes
    from migrator.events import json_lines

    hours = options["max_age_hours"]
    outcomes = drill_volumes(
        _agent_repository(options["url"]),
        list(options["volumes"]),
        Path(options["scratch"]),
        timedelta(hours=hours) if hours is not None else None,
        json_lines(sys.stdout),
    )
    failed = [
        f"{o['volume']}: {'; '.join(o['problems'][:3])}" for o in outcomes if o["status"] != "done"
    ]
    if failed:
        raise VerificationFailedError("restore drill failed for " + "; ".join(failed))
