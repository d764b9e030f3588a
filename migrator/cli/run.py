"""``migrator run``."""

from __future__ import annotations

import sys
from typing import Any

import click

from migrator.cli import cli, handle_errors, json_option, kube_options
from migrator.errors import Outcome


@cli.command("run")
@click.option(
    "--plan", "plan_path", required=True, type=click.Path(dir_okay=False), help="The plan file."
)
@click.option(
    "--phase",
    type=click.Choice(["config", "media", "all"]),
    required=True,
    help="Which volumes to copy.",
)
@click.option(
    "--cutover",
    is_flag=True,
    help="Stop the apps (suspend Flux, scale to 0) and run the final delta sync.",
)
@click.option(
    "--executor",
    type=click.Choice(["kubernetes", "local"]),
    help="Where the Jobs run (default: local for --source-dir plans, kubernetes otherwise).",
)
@click.option(
    "--parallel", type=click.IntRange(1, 64), help="Pods of a sharded Job running at once."
)
@click.option(
    "--timeout",
    type=click.IntRange(1),
    default=24 * 3600,
    show_default=True,
    help="Seconds to wait for each Job.",
)
@click.option(
    "--recheck",
    is_flag=True,
    help="Check what the last copy recorded against the destination first: files missing "
    "there or of another size are copied again (after damage that verify found).",
)
@click.option(
    "--keep-down",
    is_flag=True,
    help="After a failed cutover, leave the apps stopped (default: bring them back).",
)
@kube_options
@click.option("--dry-run", is_flag=True, help="Say what would run; change nothing.")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Show every error the copies report (a line per file), not only why a volume failed.",
)
@json_option
@handle_errors
def run_command(**options: Any) -> None:
    """Run a phase's copy Jobs: a live pre-seed, or with --cutover the final sync."""
    from migrator import ui
    from migrator.plan import load_plan
    from migrator.workflows.run import make_context, run_plan

    plan = load_plan(options["plan_path"])
    context = make_context(plan, options)
    with ui.RunProgress(enabled=not options["as_json"], verbose=options["verbose"]) as progress:
        try:
            summary = run_plan(
                plan,
                options["phase"],
                options["cutover"],
                context,
                progress,
                options["dry_run"],
                keep_down=options["keep_down"],
                recheck=options["recheck"],
            )
        except KeyboardInterrupt:
            context.stop()
            raise
    if options["as_json"]:
        ui.print_json(summary.as_dict())
    else:
        ui.show_run_summary(summary)
    if not summary.ok:
        failed = "; ".join(
            f"{v.volume}: {v.message}" if v.message else v.volume
            for v in summary.volumes
            if v.status == "failed"
        )
        ui.error(f"copy failed for {failed}; fix the cause and re-run the same command to resume")
        sys.exit(int(Outcome.FAILED))
