"""``migrator demo``: the whole story on this machine in under two minutes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from migrator.cli import cli, handle_errors, json_option
from migrator.errors import Outcome


@cli.command("demo")
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False),
    help="Where to put the sample data, plan and SeaweedFS (kept).",
)
@click.option("--keep", is_flag=True, help="Keep the temporary work directory for inspection.")
@json_option
@handle_errors
def demo_command(**options: Any) -> None:
    """Run plan, pre-seed, cutover, verify, swap and backups against an embedded SeaweedFS."""
    from migrator import ui
    from migrator.workflows.demo import run_demo

    narrator = ui.DemoNarrator(enabled=not options["as_json"])
    work_dir = Path(options["work_dir"]) if options["work_dir"] else None
    summary = run_demo(work_dir, options["keep"], narrator, narrator.observer)
    if options["as_json"]:
        ui.print_json(summary.as_dict())
    else:
        narrator.finish(summary)
    if not summary.ok:
        sys.exit(int(Outcome.FAILED))
