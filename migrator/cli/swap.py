"""``migrator swap``, ``migrator rollback`` and ``migrator status``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from migrator.cli import cli, handle_errors, json_option, kube_options
from migrator.errors import Outcome

F = TypeVar("F", bound=Callable[..., Any])


def _swap_options(fn: F) -> F:
    """Options swap and rollback share."""
    for option in reversed(
        [
            click.option(
                "--plan",
                "plan_path",
                required=True,
                type=click.Path(dir_okay=False),
                help="The plan file.",
            ),
            click.option(
                "--phase",
                type=click.Choice(["config", "media", "all"]),
                default="all",
                show_default=True,
                help="Which volumes (and the apps that mount them).",
            ),
            click.option(
                "--values-file",
                "values_files",
                multiple=True,
                type=click.Path(dir_okay=False, path_type=Path),
                metavar="PATH",
                help="A values file or HelmRelease manifest in your Flux repo to rewrite (repeatable; "
                "multi-document files are fine). Only the claim lines change.",
            ),
            click.option(
                "--in-cluster",
                is_flag=True,
                help="Patch the HelmReleases (or their valuesFrom ConfigMaps) in the cluster, restore "
                "their suspend value and the workloads' replicas, and wait until they are Ready.",
            ),
            click.option(
                "--timeout",
                type=click.IntRange(1),
                default=600,
                show_default=True,
                help="Seconds to wait for helm-controller to re-render the workloads and for them to be Ready.",
            ),
        ]
    ):
        fn = option(fn)
    return fn


class _Progress:
    """Progress notes on stderr (silent with --json)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def note(self, message: str) -> None:
        from migrator import ui

        if self.enabled:
            ui.err.print(escape(message), markup=True)


def _run(command: str, options: dict[str, Any]) -> None:
    from migrator import ui
    from migrator.plan import load_plan
    from migrator.workflows.swap.context import SwapOptions, swap_context
    from migrator.workflows.swap.rollback import rollback
    from migrator.workflows.swap.swap import swap

    plan = load_plan(options["plan_path"])
    request = SwapOptions(
        values_files=list(options["values_files"]),
        in_cluster=options["in_cluster"],
        dry_run=options["dry_run"],
        force=options.get("force", False),
        phase=options["phase"],
        timeout=float(options["timeout"]),
    )
    context = swap_context(plan, options, options["dry_run"])
    run = swap if command == "swap" else rollback
    summary = run(plan, request, context, _Progress(not options["as_json"]))
    if options["as_json"]:
        ui.print_json(summary.as_dict())
    else:
        _show_summary(summary)
    if not summary.ok:
        ui.error(f"{command} incomplete: " + "; ".join(summary.problems()))
        sys.exit(int(Outcome.FAILED))


@cli.command("swap")
@_swap_options
@kube_options
@click.option(
    "--dry-run", is_flag=True, help="Show the diffs and what would change; write nothing."
)
@click.option(
    "--force",
    is_flag=True,
    help="Swap even if the journal does not show a cutover and a passed verify (warns).",
)
@json_option
@handle_errors
def swap_command(**options: Any) -> None:
    """Point the apps at the migrated data: new claims, rewritten claim references, apps back up.

    Refuses unless the phase's moved volumes were cut over and their last verify passed. For an
    s3:// target each volume gets a static PersistentVolume (seaweedfs-csi-driver) and a PVC
    <volume>-seaweedfs; for a pvc: target the run's PVC is used. Claim references are rewritten in
    --values-file files (GitOps: commit and push them) and/or with --in-cluster.
    """
    _run("swap", options)


@cli.command("rollback")
@_swap_options
@kube_options
@click.option(
    "--dry-run", is_flag=True, help="Show the diffs and what would change; write nothing."
)
@json_option
@handle_errors
def rollback_command(**options: Any) -> None:
    """Undo a swap (or a failed cutover): exact old claim references, releases and replicas back.

    Uses the journal: restores the claim references swap changed (files and/or in-cluster),
    resumes the releases migrator suspended (or restores their previous suspend value), scales the
    workloads back to their recorded replicas and waits until they are Ready. Never deletes the
    new data or the old volumes.
    """
    _run("rollback", options)


@cli.command("status")
@click.option(
    "--plan", "plan_path", required=True, type=click.Path(dir_okay=False), help="The plan file."
)
@kube_options
@json_option
@handle_errors
def status_command(**options: Any) -> None:
    """Where each volume stands: planned, pre-seeded, cut over, verified, swapped, rolled back."""
    from migrator import ui
    from migrator.plan import load_plan
    from migrator.workflows.swap.context import open_journal
    from migrator.workflows.swap.status import status

    plan = load_plan(options["plan_path"])
    report = status(plan, open_journal(plan, options))
    if options["as_json"]:
        ui.print_json(report)
        return
    table = Table(title=f"Plan {plan.name}", title_justify="left")
    for column in ("volume", "role", "action", "state", "since", "detail"):
        table.add_column(column, overflow="fold")
    for v in report["volumes"]:
        table.add_row(
            v["volume"], v["role"], v["action"], v["state"], v["since"] or "-", v["detail"]
        )
    ui.out.print(table)
    for name, release in sorted(report["releases"].items()):
        state = (
            "suspended by migrator"
            if release.get("suspendedByMigrator")
            else "not suspended by migrator"
        )
        ui.out.print(f"HelmRelease {escape(name)}: {state}", markup=True)
    for name, workload in sorted(report["workloads"].items()):
        ui.out.print(
            f"{escape(name)}: {workload.get('previousReplicas', '?')} replicas before the cutover"
            + (f", restored {workload['restoredAt']}" if workload.get("restoredAt") else ""),
            markup=True,
        )


# --- rendering --------------------------------------------------------------------------------


def _show_diff(diff: str) -> None:
    from migrator import ui

    for line in diff.splitlines():
        style = "green" if line.startswith("+") else "red" if line.startswith("-") else ""
        if line.startswith(("+++", "---", "@@")):
            style = "bold" if not line.startswith("@@") else "cyan"
        ui.out.print(Text(line, style=style))


def _show_summary(summary: Any) -> None:
    from migrator import ui

    dry = " (dry run)" if summary.dry_run else ""
    for warning in summary.warnings:
        ui.err.print(f"[yellow]WARNING[/] {escape(warning)}", markup=True)
    for result in summary.files:
        if result.diff:
            _show_diff(result.diff)
        for note in result.notes:
            ui.err.print(escape(note), markup=True)
        if result.changes:
            verb = "would change" if not result.written else "changed"
            ui.out.print(
                f"{escape(result.path)}: {verb} {len(result.changes)} claim reference(s){dry}",
                markup=True,
            )
    if summary.volumes:
        _volume_table(summary, dry)
    for release in summary.releases:
        detail = f" ({escape(release.message)})" if release.message else ""
        ui.out.print(f"HelmRelease {escape(release.name)}: {release.action}{detail}", markup=True)
    for workload in summary.workloads:
        detail = f": {escape(workload.message)}" if workload.message else ""
        if workload.action == "(dry run)":
            ui.out.print(f"{escape(workload.workload)}{detail} (dry run)", markup=True)
            continue
        mark = "[green]Ready[/]" if workload.ready else "[red]not Ready[/]"
        ui.out.print(f"{escape(workload.workload)}: {workload.action}, {mark}{detail}", markup=True)
        for event in workload.events:
            ui.out.print(f"  {escape(event)}", markup=True)
    for note in summary.notes:
        ui.out.print(escape(note), markup=True)
    if summary.next_steps:
        ui.out.print("Next:")
        for step in summary.next_steps:
            ui.out.print(f"  {escape(step)}", markup=True)


def _volume_table(summary: Any, dry: str) -> None:
    from migrator import ui

    title = f"{summary.command} of plan {summary.plan} ({summary.phase}){dry}"
    table = Table(title=title, title_justify="left")
    for column in ("volume", "status", "old claim", "new claim", "changed", "message"):
        table.add_column(column, overflow="fold")
    for v in summary.volumes:
        table.add_row(v.volume, v.status, v.old_claim, v.new_claim, str(len(v.patches)), v.message)
    ui.out.print(table)
    for v in summary.volumes:
        for patch in v.patches:
            if patch["target"] != "file":
                where = f"{patch['target']} {patch['name']}" + (
                    f" ({patch['key']})" if patch.get("key") else ""
                )
                ui.out.print(
                    f"{escape(where)}: {escape(patch['path'])}: {escape(patch['old'])} -> {escape(patch['new'])}{dry}",
                    markup=True,
                )
