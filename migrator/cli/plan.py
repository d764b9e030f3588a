"""``migrator plan``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from migrator.cli import cli, handle_errors, json_option, kube_options
from migrator.errors import BadInputError, Outcome


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
    "--s3-ca-bundle",
    metavar="CONFIGMAP[/KEY] | FILE",
    help="CA certificates to trust for the S3 endpoint (a private CA): a ConfigMap key in the "
    "namespace (cluster mode; KEY defaults to ca.crt), or a PEM file (local mode).",
)
@click.option(
    "--filer-grpc",
    metavar="HOST:PORT",
    help="SeaweedFS filer gRPC address (its HTTP port + 10000, e.g. seaweedfs-filer.NS.svc:18888): "
    "the copy sets the source's owner, mode and mtime in the filer entries, which a weed mount "
    "(seaweedfs-csi-driver) shows. Without it, mounts show uid 0 and mode 0660.",
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
@click.option(
    "--backup-endpoint",
    metavar="URL",
    help="S3 endpoint of the backups when they go to another S3 than the copies (off-site); "
    "local mode reads its keys from MIGRATOR_BACKUP_AWS_* variables.",
)
@click.option(
    "--backup-credentials-secret",
    metavar="NAME",
    help="Secret with accessKey/secretKey for the backups' S3 (off-site); cluster mode.",
)
@click.option("--image", help="Agent image the Jobs run.")
@click.option(
    "--pod-security",
    type=click.Choice(["baseline", "restricted"]),
    help="Pod Security level to render the agents for (default: restricted when the namespace "
    "enforces it, else baseline). restricted runs them as the owning app's user.",
)
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
        ui.print_json(result.written)  # the file's content: no defaults added
    else:
        ui.show_plan(result.plan.document, _relative(result.plan.path), _relative(result.jobs_dir))


def _relative(path: Path | None) -> str:
    if path is None:
        return "-"
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
