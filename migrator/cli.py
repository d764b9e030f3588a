"""The ``migrator`` command line: thin click commands over the library.

Each command parses its options, calls one core function, and turns domain errors into a one-line
``Error: ...`` with the exit code of the tool's contract (see :mod:`migrator.errors`).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from migrator import __version__
from migrator.errors import BadInputError, MigratorError, Outcome

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Map domain exceptions to ``Error: ...`` and the outcome's exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from migrator import ui

        try:
            return fn(*args, **kwargs)
        except MigratorError as exc:
            ui.error(exc.message)
            sys.exit(int(exc.outcome))
        except KeyboardInterrupt:
            ui.error("interrupted; re-run the same command to resume")
            sys.exit(int(Outcome.INTERRUPTED))

    return wrapper  # type: ignore[return-value]


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(fn)


def kube_options(fn: F) -> F:
    fn = click.option("--context", help="kubeconfig context to use.")(fn)
    fn = click.option(
        "--kubeconfig",
        type=click.Path(dir_okay=False),
        help="Path of the kubeconfig (default: $KUBECONFIG or ~/.kube/config).",
    )(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="migrator")
def cli() -> None:
    """Move Kubernetes workload data to new storage, prove nothing was lost, swap the apps over,
    and keep nightly backups."""


@cli.command("plan")
@click.option("-n", "--namespace", help="Plan the PVCs of this namespace (cluster mode).")
@click.option("--release", help="Only the volumes of this Flux HelmRelease.")
@kube_options
@click.option(
    "--source-dir",
    "source_dirs",
    multiple=True,
    metavar="NAME=PATH",
    help="Plan a directory on this host as volume NAME (local mode; repeatable).",
)
@click.option(
    "--target",
    metavar="s3://BUCKET[/PREFIX] | pvc:CLASS",
    help="Where the volumes go: objects under PREFIX/NAME/, or a new PVC per volume.",
)
@click.option(
    "--s3-endpoint",
    metavar="URL",
    help="S3 endpoint URL (default: from the Secret or AWS_ENDPOINT_URL).",
)
@click.option(
    "--s3-credentials-secret",
    metavar="NAME",
    help="Secret with accessKey/secretKey (e.g. bucket-<bucket>-<user>-credentials); cluster mode.",
)
@click.option(
    "--role",
    "roles",
    multiple=True,
    metavar="NAME=config|media",
    help="Override a volume's role (repeatable).",
)
@click.option(
    "--volume",
    "volumes",
    multiple=True,
    metavar="NAME",
    help="Plan only these volumes (repeatable).",
)
@click.option(
    "--move-config",
    is_flag=True,
    help="Move config volumes too (SQLite on FUSE/network storage is unsafe).",
)
@click.option(
    "--target-capacity",
    metavar="SIZE",
    help="Known destination capacity (bucket quota or max PVC size), e.g. 2Ti.",
)
@click.option("--parallel", type=click.IntRange(1, 64), help="Shards (copy pods) per media volume.")
@click.option(
    "--backup-target", metavar="s3://BUCKET/PREFIX", help="Where nightly config backups go."
)
@click.option("--image", help="Agent image the Jobs run.")
@click.option("--name", help="Plan name (default: release, namespace, or 'local').")
@click.option(
    "--out", type=click.Path(dir_okay=False), help="Plan file (default: plans/<name>.yaml)."
)
@click.option("--no-probe", is_flag=True, help="Do not contact the target at all.")
@click.option(
    "--check",
    "check_path",
    type=click.Path(dir_okay=False),
    metavar="PLAN",
    help="Only validate a plan file and report every error.",
)
@json_option
@handle_errors
def plan_command(**options: Any) -> None:
    """Inspect volumes and write a reviewable migration plan plus its Job manifests."""
    from migrator import ui
    from migrator.workflows.plan import check_plan_file, make_plan

    if options["check_path"]:
        problems = check_plan_file(options["check_path"])
        if options["as_json"]:
            ui.print_json({"ok": not problems, "problems": problems})
        else:
            for problem in problems:
                ui.err.print(problem, markup=False)
            if not problems:
                ui.out.print(f"{options['check_path']}: valid plan")
        if problems:
            ui.error(f"{options['check_path']} is not a valid plan ({len(problems)} problems)")
            sys.exit(int(Outcome.BAD_INPUT))
        return
    if not options["target"]:
        raise BadInputError("--target is required: s3://BUCKET[/PREFIX] or pvc:STORAGECLASS")
    result = make_plan(options)
    if options["as_json"]:
        ui.print_json(result.plan.document)
    else:
        ui.show_plan(result.plan.document, _relative(result.plan.path), _relative(result.jobs_dir))


def _relative(path: Path | None) -> str:
    if path is None:
        return "-"
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="migrator")


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
@kube_options
@click.option("--dry-run", is_flag=True, help="Say what would run; change nothing.")
@json_option
@handle_errors
def run_command(**options: Any) -> None:
    """Run a phase's copy Jobs: a live pre-seed, or with --cutover the final sync."""
    from migrator import ui
    from migrator.plan import load_plan
    from migrator.workflows.run import make_context, run_plan

    plan = load_plan(options["plan_path"])
    context = make_context(plan, options)
    with ui.RunProgress(enabled=not options["as_json"]) as progress:
        try:
            summary = run_plan(
                plan, options["phase"], options["cutover"], context, progress, options["dry_run"]
            )
        except KeyboardInterrupt:
            context.stop()
            raise
    if options["as_json"]:
        ui.print_json(summary.as_dict())
    else:
        ui.show_run_summary(summary)
    if not summary.ok:
        failed = ", ".join(v.volume for v in summary.volumes if v.status == "failed")
        ui.error(f"copy failed for {failed}; fix the cause and re-run the same command to resume")
        sys.exit(int(Outcome.FAILED))


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


if __name__ == "__main__":
    main()
