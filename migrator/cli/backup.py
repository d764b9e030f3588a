"""``migrator backup ...``: nightly config backups, restores and restore drills. The commands their
containers run are in :mod:`migrator.cli.backup_agent`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from migrator.cli import cli, handle_errors, json_option, kube_options
from migrator.cli.backup_agent import retention_options, retention_policy
from migrator.errors import BadInputError, Outcome, VerificationFailedError

F = TypeVar("F", bound=Callable[..., Any])


def plan_option(fn: F) -> F:
    return click.option(
        "--plan", "plan_path", required=True, type=click.Path(dir_okay=False), help="The plan file."
    )(fn)


def endpoint_option(fn: F) -> F:
    return click.option(
        "--s3-endpoint",
        metavar="URL",
        help="S3 endpoint from this machine (default: the plan's, else AWS_ENDPOINT_URL).",
    )(fn)


def _kube(options: dict[str, Any]) -> Any:
    from migrator.kube import KubeClient

    return KubeClient.from_kubeconfig(options.get("kubeconfig"), options.get("context"))


@cli.group("backup")
def backup_group() -> None:
    """Nightly config backups to S3 (SQLite-safe tar.zst snapshots): install the CronJob, run,
    list, restore, verify, prune."""


@backup_group.command("install")
@plan_option
@click.option(
    "--schedule", default="0 3 * * *", show_default=True, help="Cron schedule of the backups (UTC)."
)
@click.option(
    "--drill",
    metavar="weekly|daily|CRON|off",
    default="off",
    show_default=True,
    help="Also a restore drill: restore the newest snapshots into an emptyDir and verify them.",
)
@retention_options
@click.option("--apply", "apply_now", is_flag=True, help="Server-side apply the CronJobs now.")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Write the CronJobs (and a kustomization.yaml) to this directory, e.g. a Flux repo.",
)
@kube_options
@json_option
@handle_errors
def backup_install(**options: Any) -> None:
    """Render the backup CronJob(s) of a plan: print them, write them (--out) or apply them."""
    from migrator import ui
    from migrator.plan import dump_yaml, load_plan
    from migrator.workflows.backup import apply_cronjobs, render_install, write_manifests

    if options["apply_now"] and options["out"]:
        raise BadInputError("give --apply or --out, not both")
    plan = load_plan(options["plan_path"])
    files = render_install(plan, options["schedule"], options["drill"], retention_policy(options))
    if options["out"]:
        written = write_manifests(files, Path(options["out"]))
        if options["as_json"]:
            ui.print_json({"written": [str(p) for p in written]})
        else:
            for path in written:
                ui.out.print(f"wrote {path}", markup=False)
        return
    if options["apply_now"]:
        applied = apply_cronjobs(_kube(options), files)
        if options["as_json"]:
            ui.print_json({"applied": applied})
        else:
            for name in applied:
                ui.out.print(f"cronjob {name} applied (server-side, field manager migrator)")
        return
    if options["as_json"]:
        ui.print_json(list(files.values()))
    else:
        sys.stdout.write("---\n".join(dump_yaml(m) for m in files.values()))


class _Progress:
    """Rich progress on stderr for the agent's events: one row per volume."""

    def __init__(self, enabled: bool) -> None:
        from rich.progress import DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        from migrator import ui

        self.progress = Progress(
            TextColumn("{task.description}"),
            DownloadColumn(binary_units=True),
            TextColumn("{task.fields[files]} files"),
            TransferSpeedColumn(),
            console=ui.err,
            disable=not enabled,
        )
        self.tasks: dict[str, Any] = {}
        self.started = False

    def __enter__(self) -> _Progress:
        return self  # started by the first event: an error before it prints nothing else

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self.progress.__exit__(None, None, None)

    def __call__(self, event: dict[str, Any]) -> None:
        volume, kind = event.get("volume"), event.get("event")
        if not volume:
            return
        if not self.started:
            self.progress.__enter__()
            self.started = True
        if volume not in self.tasks:
            self.tasks[volume] = self.progress.add_task(volume, total=None, files=0)
        if kind == "progress":
            self.progress.update(self.tasks[volume], completed=event["bytes"], files=event["files"])
        elif kind == "volume-done" and event.get("status") == "done":
            self.progress.update(
                self.tasks[volume], completed=event.get("bytes", 0), files=event.get("files", 0)
            )


@backup_group.command("run")
@plan_option
@click.option(
    "--volume",
    "volumes",
    multiple=True,
    metavar="NAME",
    help="Only this config volume (repeatable).",
)
@retention_options
@click.option(
    "--timeout",
    type=click.IntRange(1),
    default=6 * 3600,
    show_default=True,
    help="Seconds to wait for the backup Job (cluster plans).",
)
@kube_options
@json_option
@handle_errors
def backup_run(**options: Any) -> None:
    """Back up config volumes now: exactly what the CronJob runs, on this host for --source-dir
    plans, as a one-off Job on the cluster otherwise; then apply retention."""
    from migrator import ui
    from migrator.plan import load_plan
    from migrator.workflows.backup import config_volumes, local_executor, run_backup

    plan = load_plan(options["plan_path"])
    volumes = config_volumes(plan, options["volumes"])
    if plan.mode == "local":
        executor, name = local_executor(plan), "local"
    else:
        from migrator.executors.kubernetes import KubernetesExecutor

        executor, name = KubernetesExecutor(_kube(options), options["timeout"]), "kubernetes"
    with _Progress(enabled=not options["as_json"]) as progress:
        outcome = run_backup(plan, volumes, retention_policy(options), executor, name, progress)
    if options["as_json"]:
        ui.print_json(outcome.as_dict())
    else:
        _show_run(outcome)
    if not outcome.ok:
        failed = [
            f"{v['volume']}: {v.get('message', 'failed')}"
            for v in outcome.volumes
            if v.get("status") != "done"
        ]
        ui.error("backup failed for " + "; ".join(failed + outcome.failures))
        sys.exit(int(Outcome.FAILED))


def _show_run(outcome: Any) -> None:
    from rich.table import Table

    from migrator import ui
    from migrator.quantity import human_bytes

    table = Table(title=f"backup of plan {outcome.plan} ({outcome.executor})", title_justify="left")
    for column in ("volume", "status", "snapshot", "files", "size", "archive", "seconds", "pruned"):
        table.add_column(column, overflow="fold")
    for v in outcome.volumes:
        table.add_row(
            v["volume"],
            v["status"],
            v.get("snapshot", "-"),
            str(v.get("files", "-")),
            human_bytes(v.get("bytes")),
            human_bytes(v.get("archiveBytes")),
            f"{v['seconds']:.1f}" if "seconds" in v else "-",
            str(len(v.get("pruned", []))),
        )
    ui.out.print(table)
    for v in outcome.volumes:
        for warning in v.get("warnings") or []:
            ui.err.print(f"warning: {v['volume']}: {warning}", markup=False)


@backup_group.command("list")
@plan_option
@click.option("--volume", "volumes", multiple=True, metavar="NAME", help="Only this volume.")
@endpoint_option
@json_option
@handle_errors
def backup_list(**options: Any) -> None:
    """List the snapshots of the plan's config volumes: time, size, files."""
    from rich.table import Table

    from migrator import ui
    from migrator.plan import load_plan
    from migrator.quantity import human_bytes
    from migrator.workflows.backup import config_volumes, list_snapshots, open_repository

    plan = load_plan(options["plan_path"])
    repository = open_repository(plan, options["s3_endpoint"])
    listings = list_snapshots(repository, config_volumes(plan, options["volumes"]))
    if options["as_json"]:
        ui.print_json(
            {
                "location": repository.location.url,
                "snapshots": [s.summary() for listing in listings for s in listing.snapshots],
                "incomplete": {l.volume: sorted(l.incomplete) for l in listings if l.incomplete},  # noqa: E741
            }
        )
        return
    table = Table(title=f"snapshots in {repository.location.url}", title_justify="left")
    for column in ("volume", "snapshot", "time (UTC)", "files", "size", "archive", "app"):
        table.add_column(column, overflow="fold")
    for listing in listings:
        for snapshot in listing.snapshots:
            s = snapshot.summary()
            table.add_row(
                s["volume"],
                s["id"],
                snapshot.time.strftime("%Y-%m-%d %H:%M:%S"),
                str(s["files"]),
                human_bytes(s["bytes"]),
                human_bytes(s["archiveBytes"]),
                s["app"] or "-",
            )
    ui.out.print(table)
    for listing in listings:
        if not listing.snapshots:
            ui.err.print(f"{listing.volume}: no snapshots yet", markup=False)
        if listing.incomplete:
            ui.err.print(
                f"{listing.volume}: {len(listing.incomplete)} incomplete snapshot(s) "
                "(a run that died); 'backup prune' removes them",
                markup=False,
            )


@backup_group.command("restore")
@click.argument("snapshot")
@plan_option
@click.option("--volume", required=True, metavar="NAME", help="The volume the snapshot is of.")
@click.option(
    "--to", "to_dir", type=click.Path(file_okay=False), help="Restore into this (empty) directory."
)
@click.option("--to-pvc", metavar="NAME", help="Restore into this PVC with a Job (cluster plans).")
@click.option("--force", is_flag=True, help="Replace the content of a non-empty target.")
@click.option(
    "--keep-setid",
    is_flag=True,
    help="Restore the setuid/setgid bits of files too (directories always keep setgid).",
)
@click.option(
    "--timeout",
    type=click.IntRange(1),
    default=6 * 3600,
    show_default=True,
    help="Seconds to wait for the restore Job.",
)
@endpoint_option
@kube_options
@json_option
@handle_errors
def backup_restore(**options: Any) -> None:
    """Restore SNAPSHOT (an id from 'backup list', or 'latest') into an empty directory or PVC,
    with mode, owner and mtime; every file is checked against the manifest as it lands."""
    from migrator.plan import load_plan
    from migrator.workflows.backup import (
        open_repository,
        restore_claim_outcome,
        restore_to_directory,
    )

    if bool(options["to_dir"]) == bool(options["to_pvc"]):
        raise BadInputError("give exactly one of --to DIR or --to-pvc NAME")
    plan = load_plan(options["plan_path"])
    volume = plan.volume(options["volume"])
    if options["to_pvc"]:
        result = restore_claim_outcome(
            plan,
            volume,
            options["snapshot"],
            options["to_pvc"],
            options["force"],
            _kube(options),
            options["timeout"],
            options["keep_setid"],
        )
        _finish_report(result, options["as_json"], f"restored into PVC {options['to_pvc']}")
        return
    repository = open_repository(plan, options["s3_endpoint"])
    with _Progress(enabled=not options["as_json"]) as progress:
        report = restore_to_directory(
            repository,
            volume["name"],
            options["snapshot"],
            Path(options["to_dir"]),
            options["force"],
            lambda files, size: progress(
                {"event": "progress", "volume": volume["name"], "files": files, "bytes": size}
            ),
            options["keep_setid"],
        )
    _finish_report(report.as_dict(), options["as_json"], f"restored into {options['to_dir']}")


def _finish_report(report: dict[str, Any], as_json: bool, success: str) -> None:
    """Print a restore/verify report; exit 1 naming the problems when there are any."""
    from migrator import ui
    from migrator.quantity import human_bytes

    if as_json:
        ui.print_json(report)
    else:
        for note in report.get("notes", []):
            ui.err.print(note, markup=False)
        for problem in report.get("problems", []):
            ui.err.print(f"problem: {problem}", markup=False)
        if report.get("ok"):
            ui.out.print(
                f"{report['volume']} {report['snapshot']}: {success}: {report['files']} files, "
                f"{human_bytes(report['bytes'])}, databases {', '.join(report['databases']) or 'none'} "
                "pass PRAGMA integrity_check",
                markup=False,
            )
    if not report.get("ok"):
        count = report.get("problemCount") or len(report.get("problems", []))
        first = (report.get("problems") or ["see above"])[0]
        raise VerificationFailedError(
            f"snapshot {report['snapshot']} of {report['volume']}: {count} problem(s), first: {first}"
        )


@backup_group.command("verify")
@click.argument("snapshot")
@plan_option
@click.option("--volume", required=True, metavar="NAME", help="The volume the snapshot is of.")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    help="Check a directory restored from the snapshot instead of the archive in S3.",
)
@click.option(
    "--strict-metadata", is_flag=True, help="With --dir: mode, owner and mtime must match too."
)
@endpoint_option
@json_option
@handle_errors
def backup_verify(**options: Any) -> None:
    """Download SNAPSHOT and check every file's hash against its manifest, the archive against
    its record, and each database with PRAGMA integrity_check; exit 1 naming any problem."""
    from migrator.plan import load_plan
    from migrator.workflows.backup import open_repository, verify

    plan = load_plan(options["plan_path"])
    volume = plan.volume(options["volume"])
    repository = open_repository(plan, options["s3_endpoint"])
    directory = Path(options["directory"]) if options["directory"] else None
    with _Progress(enabled=not options["as_json"]) as progress:
        _found, report = verify(
            repository,
            volume["name"],
            options["snapshot"],
            directory,
            options["strict_metadata"],
            lambda files, size: progress(
                {"event": "progress", "volume": volume["name"], "files": files, "bytes": size}
            ),
        )
    _finish_report(report.as_dict(), options["as_json"], "verified")


@backup_group.command("prune")
@plan_option
@click.option("--volume", "volumes", multiple=True, metavar="NAME", help="Only this volume.")
@retention_options
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
@endpoint_option
@json_option
@handle_errors
def backup_prune(**options: Any) -> None:
    """Delete snapshots the retention policy does not keep (grandfather-father-son; never the
    newest), and what runs that died left behind."""
    from migrator import ui
    from migrator.plan import load_plan
    from migrator.workflows.backup import config_volumes, open_repository, prune

    plan = load_plan(options["plan_path"])
    repository = open_repository(plan, options["s3_endpoint"])
    policy = retention_policy(options)
    results = prune(
        repository, config_volumes(plan, options["volumes"]), policy, options["dry_run"]
    )
    if options["as_json"]:
        ui.print_json({"policy": policy.describe(), "volumes": [r.as_dict() for r in results]})
        return
    verb = "would delete" if options["dry_run"] else "deleted"
    suffix = " (dry run)" if options["dry_run"] else ""
    for result in results:
        for snapshot_id, rules in result.kept:
            ui.out.print(
                f"{result.volume}: keep {snapshot_id} ({', '.join(rules)}){suffix}", markup=False
            )
        for snapshot_id in result.deleted:
            ui.out.print(f"{result.volume}: {verb} {snapshot_id}{suffix}", markup=False)
        for snapshot_id in result.incomplete:
            ui.out.print(f"{result.volume}: {verb} incomplete {snapshot_id}{suffix}", markup=False)
        ui.out.print(
            f"{result.volume}: kept {len(result.kept)}, {verb} {len(result.deleted)} "
            f"({policy.describe()}){suffix}",
            markup=False,
        )
