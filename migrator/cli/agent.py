"""``migrator agent ...``: what the Job containers run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from migrator.cli import cli, handle_errors


@cli.group("agent")
def agent_group() -> None:
    """Commands the Job containers run (also usable by hand on a host)."""


@agent_group.command("copy", context_settings={"ignore_unknown_options": True})
@click.option(
    "--source",
    required=True,
    type=click.Path(file_okay=False),
    help="Source directory (mounted read-only).",
)
@click.option(
    "--dest", required=True, help="rclone destination, e.g. dest:BUCKET/PREFIX/VOLUME or /mnt/dest."
)
@click.option("--state", help="rclone path where the state of the last copy lives (S3 targets).")
@click.option(
    "--delete",
    is_flag=True,
    help="Final sync: delete what the source no longer has (inside --dest only).",
)
@click.option(
    "--skip-live-sqlite",
    is_flag=True,
    help="Leave SQLite databases (found by header) for the cutover.",
)
@click.option(
    "--shard", metavar="INDEX/COUNT", help="Copy only this partition of the files (Indexed Jobs)."
)
@click.argument("rclone_flags", nargs=-1, type=click.UNPROCESSED)
@handle_errors
def agent_copy(**options: Any) -> None:
    """Delta-copy one volume with rclone; prints one JSON event per line on stdout."""
    from migrator.copier import CopyRequest, Shard, json_lines, run_copy

    request = CopyRequest(
        source=Path(options["source"]),
        dest=options["dest"],
        state=options["state"],
        delete=options["delete"],
        skip_live_sqlite=options["skip_live_sqlite"],
        shard=Shard.parse(options["shard"]),
        rclone_flags=list(options["rclone_flags"]),
    )
    run_copy(request, json_lines(sys.stdout))
