"""The ``plan`` workflow: discover, classify, resolve the target, probe, lint, write."""

from __future__ import annotations

import dataclasses
import errno
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrator.errors import BadInputError, InvalidPlanError, MigratorError, OperationFailedError
from migrator.inventory import (
    Inventory,
    apply_roles,
    discover_cluster,
    discover_local,
    parse_assignments,
    select_volumes,
)
from migrator.objectstore import S3Settings, probe_bucket
from migrator.plan import Plan, load_plan
from migrator.planmodel import PlanDocument
from migrator.planner import (
    DEFAULT_IMAGE,
    PlanRequest,
    build_plan_document,
    default_plan_path,
    plan_name,
    resolve_target,
    s3_endpoint,
    write_plan_and_jobs,
)
from migrator.quantity import parse_quantity


@dataclass
class PlanResult:
    plan: Plan  # as loaded: the schema's defaults filled in
    jobs_dir: Path
    files: list[Path]
    written: PlanDocument  # as saved in the plan file (what --json prints)


def check_plan_file(path: str) -> list[str]:
    """Every problem of a plan file (empty when valid); a missing file is a BadInputError."""
    try:
        load_plan(path)
    except InvalidPlanError as exc:
        return exc.problems
    return []


def make_plan(options: dict[str, Any]) -> PlanResult:
    """Run the whole planner from CLI-shaped options (see ``migrator plan --help``)."""
    namespace, source_dirs = options.get("namespace"), options.get("source_dirs") or ()
    if bool(namespace) == bool(source_dirs):
        raise BadInputError(
            "give either -n NAMESPACE (cluster mode) or --source-dir NAME=PATH (local mode)"
        )
    request = _request(options)
    if request.backup_endpoint and not request.backup_target:
        raise BadInputError("--backup-endpoint needs --backup-target")
    if namespace:
        inventory = _discover_cluster(options, request)
    else:
        if options.get("s3_credentials_secret"):
            raise BadInputError(
                "--s3-credentials-secret is for cluster mode; local mode reads AWS_* variables"
            )
        if options.get("backup_credentials_secret"):
            raise BadInputError(
                "--backup-credentials-secret is for cluster mode; local mode reads "
                "MIGRATOR_BACKUP_AWS_* variables (with --backup-endpoint)"
            )
        inventory = discover_local(parse_assignments(source_dirs, "--source-dir"))
    apply_roles(inventory, parse_assignments(options.get("roles") or (), "--role"))
    select_volumes(inventory, options.get("volumes") or ())
    if not inventory.volumes:
        raise BadInputError(
            "nothing to plan: no volumes found"
            + (f" in namespace {namespace}" if namespace else "")
        )
    target = resolve_target(request, inventory)
    probe = None
    if options.get("s3_ca_bundle") and target.type != "s3":
        raise BadInputError("--s3-ca-bundle is for s3:// targets")
    if options.get("filer_grpc") and target.type != "s3":
        raise BadInputError("--filer-grpc is for s3:// targets on SeaweedFS")
    if options.get("filer_grpc") and not re.fullmatch(r"[^\s:/]+:\d{1,5}", options["filer_grpc"]):
        raise BadInputError(
            f"--filer-grpc {options['filer_grpc']!r} must be HOST:PORT, the filer's gRPC port (its "
            "HTTP port + 10000), e.g. seaweedfs-filer.tenant-root.svc:18888"
        )
    with tempfile.TemporaryDirectory(prefix="migrator-ca-") as scratch:
        if target.type == "s3":
            if options.get("s3_ca_bundle"):
                _ca_bundle(request, options, Path(scratch))
            probe = _probe(
                inventory, request, target.location.bucket if target.location else "", options
            )
    document = build_plan_document(inventory, request, target, probe)
    out = (
        Path(options["out"])
        if options.get("out")
        else default_plan_path(plan_name(inventory, request))
    )
    try:
        plan, files = write_plan_and_jobs(document, out)
    except OSError as exc:
        raise _write_error(out, exc) from None
    return PlanResult(plan, plan.jobs_dir, files, document)


def _write_error(out: Path, exc: OSError) -> MigratorError:
    """A path that cannot hold the plan is bad input (--out); a full or failing disk is not."""
    where = exc.filename or out
    if str(where) == str(out.with_name(f".{out.name}.tmp")):
        where = out  # the plan is written beside itself first, then renamed
    message = f"cannot write {where}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
        return OperationFailedError(message)
    return BadInputError(f"{message}; choose another --out")


def _request(options: dict[str, Any]) -> PlanRequest:
    capacity = options.get("target_capacity")
    return PlanRequest(
        target=options["target"],
        name=options.get("name"),
        s3_endpoint=options.get("s3_endpoint"),
        credentials_secret=options.get("s3_credentials_secret"),
        move_config=bool(options.get("move_config")),
        target_capacity=parse_quantity(capacity) if capacity else None,
        parallel=options.get("parallel"),
        image=options.get("image") or DEFAULT_IMAGE,
        context=options.get("context"),
        release=options.get("release"),
        backup_target=options.get("backup_target"),
        filer_grpc=options.get("filer_grpc"),
        backup_endpoint=options.get("backup_endpoint"),
        backup_credentials_secret=options.get("backup_credentials_secret"),
        pod_security=options.get("pod_security"),
    )


def _discover_cluster(options: dict[str, Any], request: PlanRequest) -> Inventory:
    from migrator.kube import KubeClient

    kube = KubeClient.from_kubeconfig(options.get("kubeconfig"), options.get("context"))
    namespace = options["namespace"]
    inventory = discover_cluster(kube, namespace, request.release)
    request.namespace_enforce = _enforced_level(kube, namespace)
    if request.target.startswith("s3://"):
        if not request.credentials_secret:
            raise BadInputError(
                "an s3:// target in cluster mode needs --s3-credentials-secret NAME "
                "(the Jobs read accessKey/secretKey from it)"
            )
        request.secret_fields = kube.read_secret_public_fields(
            namespace, request.credentials_secret
        )
    if request.backup_credentials_secret:
        if not request.backup_target:
            raise BadInputError("--backup-credentials-secret needs --backup-target")
        request.backup_secret_fields = kube.read_secret_public_fields(
            namespace, request.backup_credentials_secret
        )
    return inventory


def _enforced_level(kube: Any, namespace: str) -> str | None:
    """The namespace's ``pod-security.kubernetes.io/enforce`` label, if it has one."""
    found = kube.call(
        f"reading namespace {namespace}",
        lambda: kube.core.read_namespace(namespace),
        missing_ok=True,
    )
    labels = (found.metadata.labels or {}) if found is not None else {}
    level = labels.get("pod-security.kubernetes.io/enforce")
    return str(level) if level else None


def _ca_bundle(request: PlanRequest, options: dict[str, Any], scratch: Path) -> None:
    """Resolve --s3-ca-bundle into ``request.ca_bundle`` (what the plan says) and
    ``request.ca_file`` (a file with those certificates, for probing from here)."""
    value = str(options["s3_ca_bundle"])
    if options.get("namespace"):
        from migrator.kube import KubeClient

        name, _, key = value.partition("/")
        kube = KubeClient.from_kubeconfig(options.get("kubeconfig"), options.get("context"))
        text = kube.read_config_map_key(options["namespace"], name, key or "ca.crt")
        where = f"ConfigMap {name!r} key {key or 'ca.crt'!r}"
        request.ca_bundle = {"configMap": name, "key": key or "ca.crt"}
        path = scratch / "ca.crt"
        path.write_text(text)
    else:
        path = Path(value).expanduser().absolute()
        try:
            text = path.read_text(errors="replace")
        except OSError as exc:
            raise BadInputError(f"--s3-ca-bundle {value}: {exc.strerror or exc}") from None
        where = str(path)
        request.ca_bundle = {"path": str(path)}
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise BadInputError(f"--s3-ca-bundle: {where} holds no PEM certificate")
    request.ca_file = str(path)


def _probe(
    inventory: Inventory, request: PlanRequest, bucket: str, options: dict[str, Any]
) -> str | None:
    endpoint = s3_endpoint(request)
    if not endpoint:
        if inventory.mode == "local":
            endpoint = S3Settings.from_environment(None).endpoint
            request.s3_endpoint = endpoint
        if not endpoint:
            raise BadInputError("no S3 endpoint: pass --s3-endpoint URL (or set AWS_ENDPOINT_URL)")
    if options.get("no_probe"):
        return None
    settings = S3Settings.from_environment(endpoint)
    if request.ca_file:
        settings = dataclasses.replace(settings, ca_bundle=request.ca_file)
    return probe_bucket(settings, bucket)
