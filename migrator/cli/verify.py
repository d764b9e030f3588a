"""``migrator verify``: prove, file by file, that the destination holds what the source held."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

import click

from migrator.cli import cli, handle_errors, json_option, kube_options
from migrator.errors import BadInputError, Outcome

if TYPE_CHECKING:
    from migrator.planmodel import PlanVolume


def repair_command(plan_path: str, volumes: list[PlanVolume], report: Any) -> str:
    """The ``migrator run`` that recopies what verify found damaged ("" when nothing differs)."""
    different = {v.name for v in report.volumes if not v.ok and not v.error}
    roles = {volume["role"] for volume in volumes if volume["name"] in different}
    if not roles:
        return ""
    phase = roles.pop() if len(roles) == 1 else "all"
    return f"migrator run --plan {plan_path} --phase {phase} --recheck"


@cli.command("verify")
@click.option(
    "--plan", "plan_path", required=True, type=click.Path(dir_okay=False), help="The plan file."
)
@click.option(
    "--phase",
    type=click.Choice(["config", "media", "all"]),
    default="all",
    show_default=True,
    help="Which volumes.",
)
@click.option(
    "--volume", "volumes", multiple=True, metavar="NAME", help="Only these volumes (repeatable)."
)
@click.option(
    "--sample",
    type=float,
    metavar="FRACTION",
    help="Check a deterministic fraction of files (by path hash).",
)
@click.option("--strict-metadata", is_flag=True, help="Mode, owner and mtime differences fail too.")
@click.option(
    "--no-cache",
    is_flag=True,
    help="Hash everything again, ignoring the caches of the last verify; the fresh hashes are "
    "saved for the next.",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Write every difference to this file (kind, volume, path); - for stdout.",
)
@click.option(
    "--executor", type=click.Choice(["kubernetes", "local"]), help="Where the verify Jobs run."
)
@click.option(
    "--timeout",
    type=click.IntRange(1),
    default=24 * 3600,
    show_default=True,
    help="Seconds to wait for each Job.",
)
@kube_options
@json_option
@handle_errors
def verify_command(**options: Any) -> None:
    """Hash source and destination of each volume (xxh3-128) and name every difference."""
    from migrator import ui
    from migrator.plan import load_plan, volume_named, volumes_in_phase
    from migrator.workflows.run import make_context
    from migrator.workflows.verify import verify_plan

    plan = load_plan(options["plan_path"])
    known = plan.model["spec"]["volumes"]
    volumes = [volume_named(known, n) for n in options["volumes"]] or volumes_in_phase(
        known, options["phase"]
    )
    context = make_context(plan, options)
    with (
        _report_file(options["report"]) as report_stream,
        ui.VerifyProgress(enabled=not options["as_json"]) as progress,
    ):
        report = verify_plan(
            plan,
            volumes,
            context,
            progress,
            sample=options["sample"],
            strict_metadata=options["strict_metadata"],
            cache=not options["no_cache"],
            report_stream=report_stream,
        )
    repair = repair_command(options["plan_path"], volumes, report)
    if options["as_json"]:
        ui.print_json({**report.as_dict(), **({"repair": repair} if repair else {})})
    else:
        ui.show_verify_report(report)
        if repair:
            ui.show_repair(repair)
    if report.failed:
        failed = ", ".join(v.name for v in report.volumes if v.error)
        ui.error(f"verification could not run for {failed}; fix the cause and re-run")
        sys.exit(int(Outcome.FAILED))
    if not report.ok:
        sys.exit(int(Outcome.DIFFERENCES))


@contextlib.contextmanager
def _report_file(path: str | None) -> Iterator[IO[str] | None]:
    """The --report file, opened before any hashing: a path that cannot be written is bad input."""
    if path is None or path == "-":
        yield sys.stdout if path == "-" else None
        return
    try:
        stream = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise BadInputError(f"--report {path}: {exc.strerror or exc}") from None
    with stream:
        yield stream
