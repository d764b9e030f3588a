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
@click.option(
    "--uploader",
    type=click.Choice(["auto", "rclone"]),
    default="auto",
    show_default=True,
    help="auto: S3 destinations are written by migrator's own uploader where that is exactly "
    "what rclone would store (rclone takes the rest); rclone: rclone moves every file.",
)
@click.option(
    "--recheck",
    is_flag=True,
    help="Check the state of the last copy against the destination first: files missing there "
    "or of another size are copied again.",
)
@click.option(
    "--filer",
    metavar="HOST:PORT",
    help="SeaweedFS filer gRPC address (its HTTP port + 10000): set the source's owner, mode and "
    "mtime in the filer entries, which is what a weed mount (the CSI driver) shows.",
)
@click.argument("rclone_flags", nargs=-1, type=click.UNPROCESSED)
@handle_errors
def agent_copy(**options: Any) -> None:
    """Delta-copy one volume with rclone; prints one JSON event per line on stdout."""
    from migrator.copier import CopyRequest, run_copy
    from migrator.events import json_lines
    from migrator.sourcetree import Shard

    request = CopyRequest(
        source=Path(options["source"]),
        dest=options["dest"],
        state=options["state"],
        delete=options["delete"],
        skip_live_sqlite=options["skip_live_sqlite"],
        shard=Shard.parse(options["shard"]),
        rclone_flags=list(options["rclone_flags"]),
        uploader=options["uploader"],
        recheck=options["recheck"],
        filer=options["filer"],
    )
    run_copy(request, json_lines(sys.stdout))


@agent_group.command("verify")
@click.option(
    "--source",
    required=True,
    type=click.Path(file_okay=False),
    help="Source directory (mounted read-only).",
)
@click.option(
    "--dest",
    required=True,
    help="s3://BUCKET/PREFIX/VOLUME (credentials from AWS_*) or a directory.",
)
@click.option(
    "--cache",
    help="Where the hash caches live: s3://BUCKET/PREFIX/.migrator/VOLUME or a directory.",
)
@click.option(
    "--rehash",
    is_flag=True,
    help="Ignore the cached hashes: read every file again, then save fresh caches.",
)
@click.option("--sample", type=float, help="Check only this fraction of files (by path hash).")
@click.option(
    "--strict-metadata", is_flag=True, help="Mode, owner and mtime differences count as failures."
)
@click.option(
    "--state",
    help="s3://BUCKET/PREFIX/.migrator/VOLUME, where the copy keeps its state: the files found "
    "missing or different are left there for 'migrator run --recheck'.",
)
@click.option(
    "--filer",
    metavar="HOST:PORT",
    help="SeaweedFS filer gRPC address: compare owner, mode and mtime as a weed mount shows them "
    "(the filer entries), not as the objects' metadata says.",
)
@handle_errors
def agent_verify(**options: Any) -> None:
    """Hash source and destination, merge-compare; print JSON events (every difference, a summary).

    Exits 0 when the comparison ran, whatever it found: the verdict is in the last event.
    """
    from migrator.events import json_lines
    from migrator.verifier import VerifyRequest, run_verify

    request = VerifyRequest(
        source=Path(options["source"]),
        destination=options["dest"],
        cache=options["cache"],
        rehash=options["rehash"],
        sample=options["sample"],
        strict_metadata=options["strict_metadata"],
        state=options["state"],
        filer=options["filer"],
    )
    run_verify(request, json_lines(sys.stdout))


@agent_group.command("hash")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--out",
    default="-",
    show_default=True,
    help="Manifest file (gzip when it ends in .gz) or - for stdout.",
)
@click.option("--sample", type=float, help="Only this fraction of files (by path hash).")
@click.option(
    "--cache",
    type=click.Path(dir_okay=False),
    help="Hash cache file: unchanged files are not read again.",
)
@handle_errors
def agent_hash(**options: Any) -> None:
    """Hash a tree (xxh3-128) into a sorted manifest (format: docs/manifest-format.md)."""
    from migrator.checksum import hash_directory_to_manifest

    hash_directory_to_manifest(
        options["directory"], options["out"], sample=options["sample"], cache=options["cache"]
    )


# The agent's backup commands attach themselves to the group above.
from migrator.cli import backup_agent  # noqa: E402, F401
