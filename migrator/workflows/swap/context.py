"""What swap, rollback and bringing the apps back share: the options, results and summary, the
journal, Lease and cluster of a run (``swap_context``), the plan's shape (the volumes' claims,
workloads and releases, ``readiness_problems``) and the values files read and written."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from migrator.errors import BadInputError
from migrator.journal import DONE, FAILED, FileStore, Journal, journal_path, on_route
from migrator.kube import KubeClient
from migrator.plan import Plan, volume_route
from migrator.workflows.swap.cluster import Cluster

SWAP, ROLLBACK = "swap", "rollback"
PARTIAL = "partial"
LEFT_STOPPED = "left stopped"
ROLLED_BACK = "rolled back"
STEP_ORDER = ("preseed", "cutover", "verify", SWAP, ROLLBACK)


class Observer(Protocol):
    def note(self, message: str) -> None: ...


@dataclass
class SwapOptions:
    """What the user asked for."""

    values_files: list[Path] = field(default_factory=list)
    in_cluster: bool = False
    dry_run: bool = False
    force: bool = False
    phase: str = "all"
    timeout: float = 600.0


@dataclass
class VolumeResult:
    volume: str
    status: str  # swapped | rolled back | partial | unchanged | failed | (dry run)
    old_claim: str
    new_claim: str
    message: str = ""
    objects: list[dict[str, Any]] = field(default_factory=list)
    patches: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "volume": self.volume,
            "status": self.status,
            "oldClaim": self.old_claim,
            "newClaim": self.new_claim,
            "message": self.message,
            "objects": self.objects,
            "patches": self.patches,
        }


@dataclass
class FileResult:
    path: str
    written: bool
    changes: list[dict[str, Any]]
    diff: str
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "written": self.written,
            "changes": self.changes,
            "diff": self.diff,
            "notes": self.notes,
        }


@dataclass
class ReleaseResult:
    name: str
    action: str  # resumed | left suspended | suspend restored | unchanged
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "action": self.action, "message": self.message}


@dataclass
class WorkloadResult:
    workload: str
    replicas: int
    ready: bool
    action: str  # scaled | already running | left stopped | not recorded | not found | (dry run)
    message: str = ""
    events: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Ready, or rightly left alone (not stopped by migrator, or stopped on purpose)."""
        return self.ready

    def as_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "replicas": self.replicas,
            "ready": self.ready,
            "action": self.action,
            "message": self.message,
            "events": self.events,
        }


@dataclass
class SwapSummary:
    command: str
    plan: str
    phase: str
    dry_run: bool
    in_cluster: bool
    volumes: list[VolumeResult] = field(default_factory=list)
    files: list[FileResult] = field(default_factory=list)
    releases: list[ReleaseResult] = field(default_factory=list)
    workloads: list[WorkloadResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)
    nothing_to_do: bool = False

    @property
    def ok(self) -> bool:
        return all(v.status != FAILED for v in self.volumes) and all(w.ok for w in self.workloads)

    def problems(self) -> list[str]:
        """One line per failed volume or workload, for the closing error message."""
        failed = [f"{v.volume}: {v.message}" for v in self.volumes if v.status == FAILED]
        return failed + [f"{w.workload}: {w.message}" for w in self.workloads if not w.ok]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "command": self.command,
            "plan": self.plan,
            "phase": self.phase,
            "dryRun": self.dry_run,
            "inCluster": self.in_cluster,
            "nothingToDo": self.nothing_to_do,
            "volumes": [v.as_dict() for v in self.volumes],
            "files": [f.as_dict() for f in self.files],
            "releases": [r.as_dict() for r in self.releases],
            "workloads": [w.as_dict() for w in self.workloads],
            "warnings": self.warnings,
            "notes": self.notes,
            "next": self.next_steps,
        }


# --- context ----------------------------------------------------------------------------------


@dataclass
class SwapContext:
    journal: Journal
    lock: contextlib.AbstractContextManager[Any]
    cluster: Cluster | None = None


def open_journal(plan: Plan, options: dict[str, Any]) -> Journal:
    """The plan's journal: the file beside a local plan, the ConfigMap of a cluster plan."""
    if plan.mode == "local":
        if plan.path is None:
            raise BadInputError("a local plan needs a plan file")
        return Journal(FileStore(journal_path(plan.path)), plan.name)
    return _cluster_journal(plan, _kube(plan, options))


def swap_context(plan: Plan, options: dict[str, Any], dry_run: bool) -> SwapContext:
    """Cluster, journal and run Lease for swap/rollback (no Lease in a dry run: it writes)."""
    if plan.mode != "cluster" or not plan.namespace:
        raise BadInputError(
            "swap and rollback need a cluster plan (made with -n NAMESPACE); a --source-dir plan "
            "has no claims to swap: point your app at the copied data yourself"
        )
    from migrator.workflows.runtime.lease import LeaseLock

    kube = _kube(plan, options)
    if dry_run:
        return SwapContext(
            _cluster_journal(plan, kube), contextlib.nullcontext(), Cluster(kube, plan.namespace)
        )
    lock = LeaseLock(kube, plan.namespace, plan.name)
    return SwapContext(
        _cluster_journal(plan, kube, lock.ensure_held), lock, Cluster(kube, plan.namespace)
    )


def _kube(plan: Plan, options: dict[str, Any]) -> KubeClient:
    kube = KubeClient.from_kubeconfig(
        options.get("kubeconfig"), options.get("context") or plan.spec["source"].get("context")
    )
    if plan.namespace:
        kube.require_namespace(plan.namespace)
    return kube


def _cluster_journal(
    plan: Plan, kube: KubeClient, guard: Callable[[], None] | None = None
) -> Journal:
    from migrator.workflows.runtime.journal_store import ConfigMapStore

    return Journal(ConfigMapStore(kube, plan.namespace or "", plan.name, guard), plan.name)


# --- the plan's shape -------------------------------------------------------------------------


def old_claim(volume: dict[str, Any]) -> str:
    return str(volume["source"].get("pvc") or volume["name"])


def workloads_of(volumes: list[dict[str, Any]]) -> list[str]:
    return sorted(
        {
            f"{w['kind']}/{w['name']}"
            for v in volumes
            for w in v.get("workloads", [])
            if w["kind"] != "Pod"
        }
    )


def releases_of(plan: Plan, workloads: list[str]) -> list[dict[str, Any]]:
    wanted = set(workloads)
    return [r for r in plan.spec.get("releases", []) if wanted & set(r.get("workloads", []))]


def readiness_problems(plan: Plan, journal: Journal, volumes: list[dict[str, Any]]) -> list[str]:
    """Why the journal does not allow swapping these volumes (empty when it does): each needs a
    done cutover and, after it, a full verify (not a sample) that passed."""
    entries = journal.volumes()
    problems = []
    for volume in volumes:
        cutover = entries.get(volume["name"], {}).get("cutover") or {}
        verify = entries.get(volume["name"], {}).get("verify") or {}
        problem = _readiness_problem(plan, volume, cutover, verify)
        if problem:
            problems.append(problem)
    return problems


def _readiness_problem(
    plan: Plan, volume: dict[str, Any], cutover: dict[str, Any], verify: dict[str, Any]
) -> str | None:
    name = volume["name"]
    command = f"migrator run --plan {plan.path} --phase {volume['role']} --cutover"
    route = volume_route(plan.spec, volume)
    cutover, moved = on_route(cutover, route)
    verify, verified_elsewhere = on_route(verify, route)
    if moved:
        return (
            f"{name} was cut over on another route ({moved}); the plan now says {route}: "
            f"cut over again ('{command}') and verify"
        )
    if cutover.get("status") != DONE:
        return f"{name} was not cut over ('{command}')"
    if verified_elsewhere:
        return f"{name} was not verified on the plan's route ({route}) since its cutover"
    if not verify or str(verify.get("at", "")) < str(cutover.get("at", "")):
        return f"{name} was not verified since its cutover"
    if verify.get("ok") is not True:
        if verify.get("error"):
            return f"the last verify of {name} failed: {verify['error']}"
        count = f" ({verify['differences']})" if verify.get("differences") else ""
        return f"the last verify of {name} found differences{count}"
    if verify.get("status") != DONE:
        return f"the last verify of {name} is {verify.get('status')}"
    if verify.get("sample") not in (None, 1, 1.0):
        return f"the last verify of {name} checked a sample ({verify['sample']}); run a full one"
    return _mount_metadata_problem(plan, name, verify)


def _mount_metadata_problem(plan: Plan, name: str, verify: dict[str, Any]) -> str | None:
    """Apps read a moved s3 volume through a weed mount, which shows the filer entries' owner,
    mode and mtime: the copy must have set them, and a strict verify must have compared them."""
    target = plan.spec["target"]
    if target["type"] != "s3":
        return None
    if not target.get("filer"):
        return (
            f"the plan has no filer gRPC address, so a mount of {name} shows every file as uid 0, "
            "mode 0660: re-plan with --filer-grpc HOST:PORT, re-run the cutover, then "
            f"'migrator verify --plan {plan.path} --strict-metadata'"
        )
    if verify.get("mountMetadata") is not True:
        return (
            f"the last verify of {name} did not compare owner, mode and mtime as the mount shows "
            f"them: run 'migrator verify --plan {plan.path} --strict-metadata'"
        )
    return None


# --- shared by swap, rollback and bringing the apps back ---------------------------------------


def require_where(options: SwapOptions, command: str) -> None:
    if not options.values_files and not options.in_cluster:
        raise BadInputError(
            f"say where the claim references live: --values-file PATH (your Flux repo; "
            f"repeatable) and/or --in-cluster (patch the HelmReleases); see 'migrator {command} --help'"
        )


def require_cluster(context: SwapContext) -> Cluster:
    if context.cluster is None:
        raise BadInputError("swap and rollback need a cluster plan")
    return context.cluster


def volume_result(summary: SwapSummary, volume: dict[str, Any]) -> VolumeResult:
    return next(r for r in summary.volumes if r.volume == volume["name"])


def read_text(path: Path) -> str:
    """A values file's exact text (no newline translation). Raises BadInputError."""
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise BadInputError(f"values file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read values file {str(path)!r}: {exc}") from None


def write_text(path: Path, text: str) -> None:
    """Replace a file atomically, keeping its permissions (a symlink's target is replaced)."""
    target = path.resolve()
    tmp = target.with_name(f".{target.name}.migrator.tmp")
    tmp.write_bytes(text.encode("utf-8"))
    os.chmod(tmp, target.stat().st_mode & 0o7777)
    tmp.replace(target)


def patch_key(patch: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(patch.get(k) for k in ("target", "file", "name", "key", "document", "path"))
