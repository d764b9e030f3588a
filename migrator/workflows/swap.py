"""The ``swap``, ``rollback`` and ``status`` workflows.

swap: gate (the journal shows the cutover and a passed verify after it) -> the new claims (a static
PV/PVC over the bucket through seaweedfs-csi-driver, or the run's new PVC) -> the claim references
rewritten in GitOps files and/or the HelmRelease in the cluster -> releases resumed -> workloads
back at their recorded replicas and Ready. rollback undoes exactly what the journal says swap and
the cutover did. Each change is journaled as soon as it is made, so a re-run continues.

Nothing here deletes data: old volumes stay, new claims stay (PVs are ``Retain``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from migrator.errors import BadInputError, MigratorError, OperationFailedError
from migrator.journal import DONE, FAILED, RUNNING, FileStore, Journal, journal_path, now
from migrator.kube import KubeClient
from migrator.manifests.swap import (
    SEAWEEDFS_CSI_DRIVER,
    build_seaweedfs_claim,
    build_seaweedfs_volume,
    swap_claim_name,
)
from migrator.plan import Plan
from migrator.values import (
    Change,
    claim_paths,
    merge_patch,
    restore_claims,
    rewrite_claims,
)
from migrator.workflows.swap_cluster import Cluster

SWAP, ROLLBACK = "swap", "rollback"
PARTIAL = "partial"
LEFT_STOPPED = "left stopped"
ROLLED_BACK = "rolled back"
STEP_ORDER = ("preseed", "cutover", "verify", SWAP, ROLLBACK)
DOCS = "docs/how-to/swap-and-rollback.md"


class SwapRefusedError(BadInputError):
    """The journal does not show the volumes cut over and verified: swapping would lose data."""

    def __init__(self, plan: Plan, problems: list[str]) -> None:
        self.problems = problems
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(
            f"refusing to swap: {problems[0]}{more}; finish the cutover and "
            f"'migrator verify --plan {plan.path}' first, or pass --force"
        )


class CSIDriverMissingError(OperationFailedError):
    def __init__(self) -> None:
        super().__init__(
            f"the cluster has no CSIDriver {SEAWEEDFS_CSI_DRIVER}, so apps cannot mount the bucket "
            f"(Cozystack ships SeaweedFS S3-only); install it as {DOCS} explains, then re-run"
        )


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
            "volume": self.volume, "status": self.status, "oldClaim": self.old_claim,
            "newClaim": self.new_claim, "message": self.message, "objects": self.objects,
            "patches": self.patches,
        }  # fmt: skip


@dataclass
class FileResult:
    path: str
    written: bool
    changes: list[dict[str, Any]]
    diff: str
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "written": self.written, "changes": self.changes,
            "diff": self.diff, "notes": self.notes,
        }  # fmt: skip


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
            "workload": self.workload, "replicas": self.replicas, "ready": self.ready,
            "action": self.action, "message": self.message, "events": self.events,
        }  # fmt: skip


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
            "ok": self.ok, "command": self.command, "plan": self.plan, "phase": self.phase,
            "dryRun": self.dry_run, "inCluster": self.in_cluster,
            "nothingToDo": self.nothing_to_do,
            "volumes": [v.as_dict() for v in self.volumes],
            "files": [f.as_dict() for f in self.files],
            "releases": [r.as_dict() for r in self.releases],
            "workloads": [w.as_dict() for w in self.workloads],
            "warnings": self.warnings, "notes": self.notes, "next": self.next_steps,
        }  # fmt: skip


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


def _workloads_of(volumes: list[dict[str, Any]]) -> list[str]:
    return sorted(
        {f"{w['kind']}/{w['name']}" for v in volumes for w in v.get("workloads", []) if w["kind"] != "Pod"}
    )  # fmt: skip


def _releases_of(plan: Plan, workloads: list[str]) -> list[dict[str, Any]]:
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
    if cutover.get("status") != DONE:
        command = f"migrator run --plan {plan.path} --phase {volume['role']} --cutover"
        return f"{name} was not cut over ('{command}')"
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


# --- swap -------------------------------------------------------------------------------------


def swap(plan: Plan, options: SwapOptions, context: SwapContext, observer: Observer) -> SwapSummary:
    """Swap the phase's moved volumes onto their new claims; see the module docstring.

    Raises SwapRefusedError (without --force), CSIDriverMissingError, BadInputError for unreadable
    files; per-volume and per-workload failures are in the summary instead.
    """
    _require_where(options, "swap")
    phase_volumes = plan.volumes_for_phase(options.phase)
    moving = [v for v in phase_volumes if v["action"] == "move"]
    if not moving:
        raise BadInputError(
            f"no volume of phase {options.phase} moves (action: copy keeps them where they are); "
            f"to start the apps again after a copy-only cutover use 'migrator rollback --plan {plan.path} --in-cluster'"
        )
    summary = SwapSummary(SWAP, plan.name, options.phase, options.dry_run, options.in_cluster)
    problems = readiness_problems(plan, context.journal, moving)
    if problems and not options.force:
        raise SwapRefusedError(plan, problems)
    summary.warnings += [f"--force: swapping although {p}" for p in problems]
    texts = {path: read_text(path) for path in options.values_files}
    cluster = _require_cluster(context)
    if plan.spec["target"]["type"] == "s3" and not cluster.has_csi_driver(SEAWEEDFS_CSI_DRIVER):
        raise CSIDriverMissingError()
    with context.lock:
        for volume in moving:
            summary.volumes.append(_new_claim(plan, volume, context, options.dry_run, observer))
        swapped = [v for v in moving if _result(summary, v).status != FAILED]
        mapping = {old_claim(v): _result(summary, v).new_claim for v in swapped}
        by_claim = {old_claim(v): v["name"] for v in swapped}
        releases = [r["name"] for r in _releases_of(plan, _workloads_of(moving))]
        for path, text in texts.items():
            summary.files.append(
                _swap_file(plan, path, text, mapping, by_claim, releases, context, options.dry_run)
            )
        if options.in_cluster:
            for release in releases:
                patches = _point_release(release, mapping, context, summary, options.dry_run)
                _record_cluster_patches(patches, by_claim, context, summary, options.dry_run)
        _finish_swap(summary, swapped, context, options.dry_run)
        if options.in_cluster:
            failed = {
                v["name"]: f"{v['name']} failed to swap"
                for v in moving
                if _result(summary, v).status == FAILED
            }
            avoid = avoid_claims([v for v in moving if v["name"] not in failed], old_claim)
            _bring_back(plan, phase_volumes, failed, avoid, context, options, summary, observer)
    _advise_after_swap(plan, options, summary)
    return summary


def _require_where(options: SwapOptions, command: str) -> None:
    if not options.values_files and not options.in_cluster:
        raise BadInputError(
            f"say where the claim references live: --values-file PATH (your Flux repo; "
            f"repeatable) and/or --in-cluster (patch the HelmReleases); see 'migrator {command} --help'"
        )


def _require_cluster(context: SwapContext) -> Cluster:
    if context.cluster is None:
        raise BadInputError("swap and rollback need a cluster plan")
    return context.cluster


def _result(summary: SwapSummary, volume: dict[str, Any]) -> VolumeResult:
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


def _new_claim(
    plan: Plan, volume: dict[str, Any], context: SwapContext, dry_run: bool, observer: Observer
) -> VolumeResult:
    """Create (or find) the claim the volume moves to and journal the swap's start."""
    cluster = _require_cluster(context)
    result = VolumeResult(
        volume["name"], SWAP, old_claim(volume), swap_claim_name(plan.document, volume)
    )
    try:
        if plan.spec["target"]["type"] == "s3":
            manifests = [
                build_seaweedfs_volume(plan.document, volume),
                build_seaweedfs_claim(plan.document, volume),
            ]
            for manifest in manifests:
                result.objects.append(cluster.ensure(manifest, dry_run))
        else:
            result.objects.append(cluster.require_claim(result.new_claim))
    except MigratorError as exc:
        result.status, result.message = FAILED, exc.message
    for item in result.objects:
        observer.note(
            f"{'(dry run) ' if dry_run else ''}{item['kind']} {item['name']}: {item['action']}"
        )
    if not dry_run:
        _journal_swap_start(context.journal, result)
    return result


def _journal_swap_start(journal: Journal, result: VolumeResult) -> None:
    def change(document: dict[str, Any]) -> None:
        entry = document["volumes"].setdefault(result.volume, {})
        previous = entry.get(SWAP) or {}
        same = (
            previous.get("oldClaim") == result.old_claim
            and previous.get("newClaim") == result.new_claim
        )
        entry[SWAP] = {
            "status": FAILED if result.status == FAILED else RUNNING, "at": now(),
            "oldClaim": result.old_claim, "newClaim": result.new_claim,
            "claimObjects": [{"kind": o["kind"], "name": o["name"]} for o in result.objects],
            "patches": previous.get("patches", []) if same else [],
        }  # fmt: skip
        if result.message:
            entry[SWAP]["message"] = result.message

    journal.update(change)


def _patch_key(patch: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(patch.get(k) for k in ("target", "file", "name", "key", "document", "path"))


def _journal_patches(journal: Journal, volume: str, patches: list[dict[str, Any]]) -> None:
    """Add patches to the volume's swap entry, one per location: the first one recorded holds
    the original text, so a re-run never overwrites it."""

    def change(document: dict[str, Any]) -> None:
        entry = document["volumes"].setdefault(volume, {}).setdefault(SWAP, {"patches": []})
        kept = {_patch_key(p): p for p in entry.setdefault("patches", [])}
        for patch in patches:
            kept.setdefault(_patch_key(patch), patch)
        entry["patches"] = list(kept.values())

    journal.update(change)


def _swap_file(
    plan: Plan,
    path: Path,
    text: str,
    mapping: dict[str, str],
    by_claim: dict[str, str],
    releases: list[str],
    context: SwapContext,
    dry_run: bool,
) -> FileResult:
    rewrite = rewrite_claims(text, mapping, str(path), plan.namespace, releases)
    result = FileResult(
        str(path),
        False,
        [c.as_dict() for c in rewrite.changes],
        rewrite.diff(str(path)),
        rewrite.notes,
    )
    if not rewrite.changes:
        result.notes.append(f"{path}: no claim reference of the moved volumes; unchanged")
    if not rewrite.changed or dry_run:
        return result
    write_text(path, rewrite.text)
    result.written = True
    for change in rewrite.changes:
        patch = {"target": "file", "file": str(path.resolve()), **change.as_dict()}
        _journal_patches(context.journal, by_claim[change.old], [patch])
    return result


def _point_release(
    release: str, mapping: dict[str, str], context: SwapContext, summary: SwapSummary, dry_run: bool
) -> list[dict[str, Any]]:
    """Point a HelmRelease's claim references (spec.values, and ConfigMaps in valuesFrom) from
    the keys of ``mapping`` to its values; returns the patches made (not yet journaled)."""
    cluster = _require_cluster(context)
    found = cluster.get_helmrelease(release)
    if found is None:
        summary.warnings.append(f"HelmRelease {release} not found; its values were not changed")
        return []
    spec = found.get("spec") or {}
    patches = _values_patches(release, spec.get("values") or {}, mapping)
    if patches and not dry_run:
        cluster.patch_helmrelease(
            release, merge_patch((p["path"].split("."), p["new"]) for p in patches)
        )
    for ref in spec.get("valuesFrom") or []:
        if ref.get("kind") == "ConfigMap":
            patches += _swap_configmap(release, ref, mapping, cluster, dry_run)
        else:
            summary.notes.append(
                f"HelmRelease {release} also takes values from Secret {ref.get('name')}; not inspected"
            )
    return patches


def _values_patches(
    release: str, values: dict[str, Any], mapping: dict[str, str]
) -> list[dict[str, Any]]:
    return [
        {"target": "HelmRelease", "name": release, "path": ".".join(("spec", "values", *path)),
         "old": claim, "new": mapping[claim]}
        for path, claim in claim_paths(values)
        if claim in mapping
    ]  # fmt: skip


def _swap_configmap(
    release: str, ref: dict[str, Any], mapping: dict[str, str], cluster: Cluster, dry_run: bool
) -> list[dict[str, Any]]:
    name, key = ref["name"], ref.get("valuesKey") or "values.yaml"
    data = (cluster.get_configmap(name) or {}).get("data") or {}
    if key not in data:
        return []
    base = {"target": "ConfigMap", "name": name, "key": key, "release": release}
    if ref.get("targetPath"):
        if not ref["targetPath"].endswith(".existingClaim") or data[key] not in mapping:
            return []
        patch = {**base, "path": ref["targetPath"], "old": data[key], "new": mapping[data[key]]}
        if not dry_run:
            cluster.patch_configmap(name, {"data": {key: patch["new"]}})
        return [patch]
    rewrite = rewrite_claims(data[key], mapping, f"ConfigMap {name} ({key})")
    if rewrite.changed and not dry_run:
        cluster.patch_configmap(name, {"data": {key: rewrite.text}})
    return [{**base, **change.as_dict()} for change in rewrite.changes]


def _record_cluster_patches(
    patches: list[dict[str, Any]],
    by_claim: dict[str, str],
    context: SwapContext,
    summary: SwapSummary,
    dry_run: bool,
) -> None:
    for patch in patches:
        volume = by_claim[patch["old"]]
        next(r for r in summary.volumes if r.volume == volume).patches.append(patch)
        if not dry_run:
            _journal_patches(context.journal, volume, [patch])


def _finish_swap(
    summary: SwapSummary, swapped: list[dict[str, Any]], context: SwapContext, dry_run: bool
) -> None:
    """Mark each volume swapped when some reference now names its new claim (in this run or an
    earlier one: GitOps files first, --in-cluster later), failed when nothing references it."""
    recorded = context.journal.volumes()
    for volume in swapped:
        result = _result(summary, volume)
        result.patches += [
            {"target": "file", "file": f.path, **c} for f in summary.files for c in f.changes
            if c["old"] == result.old_claim
        ]  # fmt: skip
        earlier = (recorded.get(volume["name"], {}).get(SWAP) or {}).get("patches", [])
        found = bool(result.patches or earlier)
        if not found:
            result.message = (
                f"no reference to claim {result.old_claim} in the files or HelmReleases given"
            )
        if dry_run:
            result.status = "(dry run)"
            continue
        result.status = "swapped" if found else FAILED

        def finish(
            document: dict[str, Any],
            name: str = volume["name"],
            status: str = DONE if found else FAILED,
            message: str = result.message,
        ) -> None:
            entry = document["volumes"].setdefault(name, {}).setdefault(SWAP, {})
            entry.update(status=status, at=now())
            if message:
                entry["message"] = message

        context.journal.update(finish)


def _advise_after_swap(plan: Plan, options: SwapOptions, summary: SwapSummary) -> None:
    """Next steps, and the Flux caveats that apply to what was (or was not) changed."""
    changed = [f.path for f in summary.files if f.changes]
    kustomizations = sorted(
        {r["kustomization"] for r in plan.spec.get("releases", []) if r.get("kustomization")}
    )
    if changed:
        summary.next_steps.append(
            f"commit and push: git add {' '.join(changed)} && git commit -m 'Move "
            f"{', '.join(v.volume for v in summary.volumes)} to SeaweedFS (migrator swap)' && git push"
        )
    if changed and not options.in_cluster:
        for ks in kustomizations:
            namespace, _, name = ks.rpartition("/")
            summary.next_steps.append(
                f"flux reconcile kustomization {name} -n {namespace or 'flux-system'} --with-source"
            )
        summary.next_steps.append(
            f"start the apps on the new claims: migrator swap --plan {plan.path} --in-cluster"
        )
    if options.in_cluster and not options.values_files:
        where = f" of Kustomization {', '.join(kustomizations)}" if kustomizations else ""
        summary.warnings.append(
            f"the claims were changed in the cluster only: Flux re-applies the old values from Git "
            f"at the next reconcile{where} unless you commit the same change "
            f"(migrator swap --plan {plan.path} --values-file FILE)"
        )
    if options.in_cluster:
        summary.notes.append(
            "if your Git manifests set spec.suspend, Flux re-asserts that value at the next reconcile"
        )
    files = "".join(f" --values-file {path}" for path in changed)
    summary.next_steps.append(f"to undo: migrator rollback --plan {plan.path} --in-cluster{files}")


# --- rollback ---------------------------------------------------------------------------------


def rollback(
    plan: Plan, options: SwapOptions, context: SwapContext, observer: Observer
) -> SwapSummary:
    """Undo what swap (and the cutover's quiesce) recorded for the phase: the exact old claim
    references in the files and/or HelmReleases, releases back to their previous suspend value,
    workloads back to their recorded replicas and Ready. Never deletes anything."""
    _require_where(options, "rollback")
    phase_volumes = plan.volumes_for_phase(options.phase)
    summary = SwapSummary(ROLLBACK, plan.name, options.phase, options.dry_run, options.in_cluster)
    texts = {path: read_text(path) for path in options.values_files}
    entries = context.journal.volumes()
    # Rolled-back volumes stay in: a later --in-cluster run still reverts what Flux re-applied.
    swapped = [v for v in phase_volumes if _swap_entry(entries, v).get("newClaim")]
    with context.lock:
        for volume in swapped:
            entry = _swap_entry(entries, volume)
            summary.volumes.append(VolumeResult(
                volume["name"], "unchanged", entry["oldClaim"], entry["newClaim"],
                objects=entry.get("claimObjects", []),
            ))  # fmt: skip
        for path, text in texts.items():
            summary.files.append(
                _rollback_file(path, text, swapped, entries, context, summary, options.dry_run)
            )
        if options.in_cluster:
            _rollback_cluster(plan, swapped, entries, context, summary, options.dry_run)
        partial = _finish_rollback(summary, swapped, entries, context, options.dry_run)
        if options.in_cluster:
            done = [v for v in swapped if v not in partial]
            avoid = avoid_claims(done, lambda v: str(_swap_entry(entries, v)["newClaim"]))
            blocked = {v["name"]: f"{v['name']} is only partly rolled back" for v in partial}
            _bring_back(plan, phase_volumes, blocked, avoid, context, options, summary, observer)
    summary.nothing_to_do = _nothing_done(summary)
    _advise_after_rollback(plan, summary)
    return summary


def _swap_entry(entries: dict[str, Any], volume: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = entries.get(volume["name"], {}).get(SWAP) or {}
    return entry


def _pending(entries: dict[str, Any], volume: dict[str, Any]) -> list[dict[str, Any]]:
    patches: list[dict[str, Any]] = _swap_entry(entries, volume).get("patches", [])
    return patches


def _rollback_file(
    path: Path,
    text: str,
    swapped: list[dict[str, Any]],
    entries: dict[str, Any],
    context: SwapContext,
    summary: SwapSummary,
    dry_run: bool,
) -> FileResult:
    resolved = str(path.resolve())
    recorded = [
        (v, p) for v in swapped for p in _pending(entries, v)
        if p["target"] == "file" and p["file"] == resolved
    ]  # fmt: skip
    rewrite = restore_claims(text, [Change.from_dict(p) for _, p in recorded], str(path))
    result = FileResult(
        str(path),
        False,
        [c.as_dict() for c in rewrite.changes],
        rewrite.diff(str(path)),
        rewrite.notes,
    )
    if not recorded:
        result.notes.append(f"{path}: the journal records no swap change in this file")
    restored = {(c.document, c.path) for c in rewrite.changes}
    done = [(v, p) for v, p in recorded if (p["document"], p["path"]) in restored]
    if rewrite.changed and not dry_run:
        write_text(path, rewrite.text)
        result.written = True
    if not dry_run:
        _journal_restored(context.journal, done)
    for volume, patch in done:
        _result(summary, volume).patches.append(patch)
    return result


def _journal_restored(journal: Journal, done: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """Move restored patches from the volume's swap entry to its rollback entry."""
    if not done:
        return

    def change(document: dict[str, Any]) -> None:
        for volume, patch in done:
            entry = document["volumes"].setdefault(volume["name"], {})
            swap_entry = entry.setdefault(SWAP, {})
            swap_entry["patches"] = [
                p for p in swap_entry.get("patches", []) if _patch_key(p) != _patch_key(patch)
            ]
            rollback_entry = entry.get(ROLLBACK) or {}
            if rollback_entry.get("swapAt") != swap_entry.get("at"):
                rollback_entry = {"swapAt": swap_entry.get("at"), "restored": []}
            rollback_entry["restored"] = [*rollback_entry.get("restored", []), patch]
            rollback_entry.update(status=RUNNING, at=now())
            entry[ROLLBACK] = rollback_entry

    journal.update(change)


def _rollback_cluster(
    plan: Plan,
    swapped: list[dict[str, Any]],
    entries: dict[str, Any],
    context: SwapContext,
    summary: SwapSummary,
    dry_run: bool,
) -> None:
    """Restore the recorded in-cluster patches exactly, then point whatever still names a new
    claim (e.g. values Flux applied from Git after a GitOps swap) back at the old one."""
    cluster = _require_cluster(context)
    for volume in swapped:
        done = []
        for patch in _pending(entries, volume):
            if patch["target"] == "file":
                continue
            problem = cluster.restore(patch, dry_run)
            if problem:
                summary.warnings.append(problem)
                continue
            done.append((volume, patch))
            _result(summary, volume).patches.append(patch)
        if not dry_run:
            _journal_restored(context.journal, done)
    reverse = {
        _swap_entry(entries, v)["newClaim"]: _swap_entry(entries, v)["oldClaim"] for v in swapped
    }
    by_new = {_swap_entry(entries, v)["newClaim"]: v for v in swapped}
    for release in _releases_of(plan, _workloads_of(swapped)):
        reverted = _point_release(release["name"], reverse, context, summary, dry_run)
        for patch in reverted:
            _result(summary, by_new[patch["old"]]).patches.append(patch)
        if not dry_run:
            _journal_restored(context.journal, [(by_new[p["old"]], p) for p in reverted])


def _finish_rollback(
    summary: SwapSummary,
    swapped: list[dict[str, Any]],
    entries: dict[str, Any],
    context: SwapContext,
    dry_run: bool,
) -> list[dict[str, Any]]:
    """Set each volume's outcome and journal it; returns the volumes still partly swapped."""
    partial = []
    for volume in swapped:
        result = _result(summary, volume)
        restored = {_patch_key(p) for p in result.patches}
        left = [p for p in _pending(entries, volume) if _patch_key(p) not in restored]
        result.message = _still_swapped(result, left)
        if left:
            partial.append(volume)
        if dry_run:
            result.status = "(dry run)" if result.patches else "unchanged"
            continue
        if not result.patches and (
            left or _swap_entry(entries, volume).get("status") == ROLLED_BACK
        ):
            result.message = result.message or "already rolled back"
            continue  # nothing of it was restored by this run
        result.status = "partly rolled back" if left else ROLLED_BACK

        def finish(
            document: dict[str, Any],
            name: str = volume["name"],
            status: str = PARTIAL if left else DONE,
        ) -> None:
            entry = document["volumes"].setdefault(name, {})
            rollback_entry = entry.setdefault(ROLLBACK, {"restored": []})
            rollback_entry.update(
                status=status, at=now(), claim=entry.get(SWAP, {}).get("oldClaim")
            )
            if status == DONE:
                entry.setdefault(SWAP, {})["status"] = ROLLED_BACK

        context.journal.update(finish)
    return partial


def _still_swapped(result: VolumeResult, left: list[dict[str, Any]]) -> str:
    files = sorted({p["file"] for p in left if p["target"] == "file"})
    objects = sorted({f"{p['target']} {p['name']}" for p in left if p["target"] != "file"})
    parts = []
    if files:
        parts.append(f"{', '.join(files)} still name {result.new_claim}: re-run with --values-file")
    if objects:
        parts.append(f"{', '.join(objects)} still use {result.new_claim}: re-run with --in-cluster")
    return "; ".join(parts)


def _nothing_done(summary: SwapSummary) -> bool:
    return (
        not any(v.patches for v in summary.volumes)
        and not any(f.changes for f in summary.files)
        and all(r.action == "unchanged" for r in summary.releases)
        and all(
            w.action in ("already running", "not recorded", LEFT_STOPPED) and w.ok
            for w in summary.workloads
        )
    )


def _advise_after_rollback(plan: Plan, summary: SwapSummary) -> None:
    if summary.nothing_to_do:
        summary.notes.append(
            f"nothing to undo for phase {summary.phase}: no swap change left in the journal, "
            "no release suspended by migrator, every workload at its recorded replicas"
        )
        return
    changed = [f.path for f in summary.files if f.changes]
    if changed:
        summary.next_steps.append(
            f"commit and push: git add {' '.join(changed)} && git commit -m 'Roll back "
            f"{', '.join(v.volume for v in summary.volumes)} (migrator rollback)' && git push"
        )
    objects = [f"{o['kind']} {o['name']}" for v in summary.volumes for o in v.objects]
    if objects:
        summary.notes.append(
            f"kept the new claims and their data ({', '.join(objects)}); delete them yourself once "
            "you are sure (the PersistentVolumes are Retain: the bucket keeps the data either way)"
        )


# --- bringing the apps back -------------------------------------------------------------------


def _bring_back(
    plan: Plan,
    phase_volumes: list[dict[str, Any]],
    blocked_volumes: dict[str, str],
    avoid: dict[str, set[str]],
    context: SwapContext,
    options: SwapOptions,
    summary: SwapSummary,
    observer: Observer,
) -> None:
    """Resume the releases migrator suspended and give the workloads their replicas back once
    their pod template no longer mounts the claims in ``avoid[workload]`` (helm-controller has
    re-rendered it; starting earlier would run the app on the old claim). Then wait until they
    are Ready. Workloads of ``blocked_volumes`` (name -> why) are left as they are."""
    workloads = _workloads_of(phase_volumes)
    blocked = {
        w: why for v in phase_volumes if v["name"] in blocked_volumes
        for w, why in ((w, blocked_volumes[v["name"]]) for w in _workloads_of([v]))
    }  # fmt: skip
    held: set[str] = set()
    for release in _releases_of(plan, workloads):
        reasons = [blocked[w] for w in release.get("workloads", []) if w in blocked]
        if reasons:
            summary.releases.append(ReleaseResult(release["name"], "left as is", reasons[0]))
        elif not _resume(release, context, summary, options):
            held |= set(release.get("workloads", []))
    recorded = journal_workloads(context.journal)
    managed = {w for r in plan.spec.get("releases", []) for w in r.get("workloads", [])}
    deadline = time.monotonic() + options.timeout
    for workload in workloads:
        target = WorkloadTarget(
            workload, recorded.get(workload), blocked.get(workload), workload in held,
            workload in managed, avoid.get(workload, set()),
        )  # fmt: skip
        outcome = _restore_workload(target, context, options, deadline, observer)
        summary.workloads.append(outcome)
        if outcome.action == "scaled":
            _journal_restored_workload(context.journal, workload, outcome.replicas, summary.command)
    for outcome in summary.workloads:
        if outcome.action in ("scaled", "already running"):
            _wait_ready(outcome, context, deadline, observer)


def bring_back_after_cutover(
    plan: Plan,
    volumes: list[dict[str, Any]],
    journal: Journal,
    cluster: Cluster,
    timeout: float,
    observer: Observer,
) -> list[str]:
    """After a cutover that failed: resume the releases and scale the workloads of ``volumes``
    back to the replicas the cutover recorded, as rollback does (the apps still mount their old
    claims, which the cutover only read). Returns one note per release and workload."""
    context = SwapContext(journal, contextlib.nullcontext(), cluster)
    options = SwapOptions(in_cluster=True, phase="all", timeout=timeout)
    summary = SwapSummary("run", plan.name, "all", False, True)
    _bring_back(plan, volumes, {}, {}, context, options, summary, observer)
    notes = [f"HelmRelease {r.name}: {r.action} ({r.message})" for r in summary.releases]
    for w in summary.workloads:
        state = "Ready" if w.ready else (w.message or "not Ready")
        notes.append(f"{w.workload}: {w.action}, {w.replicas} replicas, {state}")
    return notes


def journal_workloads(journal: Journal) -> dict[str, Any]:
    """The workloads the cutover stopped, with their previous replicas (read only)."""
    workloads: dict[str, Any] = journal.store.load().get("workloads") or {}
    return workloads


def avoid_claims(
    volumes: list[dict[str, Any]], claim_of: Callable[[dict[str, Any]], str]
) -> dict[str, set[str]]:
    """Per workload, the claims (``claim_of(volume)``) of the volumes it mounts."""
    avoid: dict[str, set[str]] = {}
    for volume in volumes:
        for workload in _workloads_of([volume]):
            avoid.setdefault(workload, set()).add(claim_of(volume))
    return avoid


def _resume(
    release: dict[str, Any], context: SwapContext, summary: SwapSummary, options: SwapOptions
) -> bool:
    """Restore a release migrator suspended; False when it stays suspended (it was before)."""
    name = release["name"]
    record = context.journal.releases().get(name) or {}
    if not record.get("suspendedByMigrator"):
        summary.releases.append(ReleaseResult(name, "unchanged", "not suspended by migrator"))
        return True
    previous = bool(record.get("previousSuspend", False))
    prefix = "(dry run) " if options.dry_run else ""
    if previous:
        summary.releases.append(ReleaseResult(
            name, "left suspended",
            f"{prefix}it was suspended before the migration; resume it yourself (flux resume helmrelease {name})",
        ))  # fmt: skip
    else:
        summary.releases.append(ReleaseResult(name, "resumed", f"{prefix}spec.suspend removed"))
    if options.dry_run:
        return not previous
    # Before the cutover the field was most likely absent; removing it resumes the release and
    # leaves the object as Git has it (an explicit false in Git comes back at the next apply).
    _require_cluster(context).patch_helmrelease(
        name, {"spec": {"suspend": True if previous else None}}
    )

    def remember(document: dict[str, Any]) -> None:
        entry = document["releases"].setdefault(name, {})
        entry.update(suspendedByMigrator=False, restoredAt=now(), restoredBy=summary.command)

    context.journal.update(remember)
    return not previous


@dataclass
class WorkloadTarget:
    """One workload to bring back and what stands in its way."""

    name: str  # Kind/name
    record: dict[str, Any] | None  # the cutover's journal entry (previousReplicas)
    blocked: str | None  # why it must be left as is
    held: bool  # its release stays suspended
    managed: bool  # a HelmRelease of the plan renders it
    avoid: set[str]  # claims its pod template must no longer mount


def _restore_workload(
    target: WorkloadTarget,
    context: SwapContext,
    options: SwapOptions,
    deadline: float,
    observer: Observer,
) -> WorkloadResult:
    workload, avoid = target.name, target.avoid
    if target.record is None:
        return WorkloadResult(workload, 0, True, "not recorded", "not stopped by migrator")
    replicas = int(target.record.get("previousReplicas", 0))
    if target.blocked:
        return WorkloadResult(workload, replicas, False, "left as is", target.blocked)
    if target.held or replicas == 0:
        why = (
            "its release stays suspended" if target.held else "it had 0 replicas before the cutover"
        )
        return WorkloadResult(workload, 0, True, LEFT_STOPPED, why)
    cluster = _require_cluster(context)
    kind, name = workload.split("/", 1)
    current = cluster.get_workload(kind, name)
    if current is None:
        return WorkloadResult(workload, replicas, False, "not found", f"{workload} does not exist")
    if options.dry_run:
        off = f" once it no longer mounts {', '.join(sorted(avoid))}" if avoid else ""
        return WorkloadResult(
            workload, replicas, True, "(dry run)", f"would scale to {replicas}{off}"
        )
    if avoid & template_claims(current):
        current = _wait_for_render(target, current, cluster, deadline, observer)
        if avoid & template_claims(current):
            return WorkloadResult(
                workload, replicas, False, LEFT_STOPPED, _not_rendered(target, cluster)
            )
    if int((current.get("spec") or {}).get("replicas") or 0) > 0:
        return WorkloadResult(workload, replicas, False, "already running")
    cluster.scale(kind, name, replicas)
    observer.note(f"{workload}: scaled to {replicas}")
    return WorkloadResult(workload, replicas, False, "scaled")


def _wait_for_render(
    target: WorkloadTarget,
    current: dict[str, Any],
    cluster: Cluster,
    deadline: float,
    observer: Observer,
) -> dict[str, Any]:
    """Wait for helm-controller to re-render the workload off ``target.avoid``; its last state."""
    if not target.managed:
        return current  # no HelmRelease renders it: nobody will change it
    observer.note(
        f"waiting for helm-controller to re-render {target.name} off {', '.join(sorted(target.avoid))}"
    )
    kind, name = target.name.split("/", 1)
    found = cluster.wait_for(
        kind, name, lambda obj: not target.avoid & template_claims(obj), deadline
    )
    return found or current


def _not_rendered(target: WorkloadTarget, cluster: Cluster) -> str:
    claims = ", ".join(sorted(target.avoid))
    if not target.managed:
        return (
            f"still mounts {claims} and no HelmRelease of the plan renders it: point it at the new "
            "claim yourself, then re-run"
        )
    return (
        f"still mounts {claims}: helm-controller has not applied the values (check "
        f"'flux get helmreleases -n {cluster.namespace}'); re-run with a longer --timeout"
    )


def _journal_restored_workload(journal: Journal, workload: str, replicas: int, by: str) -> None:
    def remember(document: dict[str, Any]) -> None:
        entry = document.setdefault("workloads", {}).setdefault(workload, {})
        entry.update(restoredReplicas=replicas, restoredAt=now(), restoredBy=by)

    journal.update(remember)


def _wait_ready(
    outcome: WorkloadResult, context: SwapContext, deadline: float, observer: Observer
) -> None:
    cluster = _require_cluster(context)
    kind, name = outcome.workload.split("/", 1)
    observer.note(f"waiting for {outcome.workload} to be Ready ({outcome.replicas} replicas)")
    found = cluster.wait_for(
        kind, name, lambda obj: workload_ready(obj, outcome.replicas), deadline
    )
    if found is not None and workload_ready(found, outcome.replicas):
        outcome.ready = True
        observer.note(f"{outcome.workload}: Ready")
        return
    ready = int(((found or {}).get("status") or {}).get("readyReplicas") or 0)
    outcome.message = f"not Ready within the timeout ({ready}/{outcome.replicas} ready)"
    outcome.events = cluster.pod_events(found) if found else []


def template_claims(workload: dict[str, Any]) -> set[str]:
    """Claim names the workload's pod template mounts."""
    volumes = (
        (((workload.get("spec") or {}).get("template") or {}).get("spec") or {}).get("volumes")
    ) or []
    return {
        v["persistentVolumeClaim"]["claimName"] for v in volumes if v.get("persistentVolumeClaim")
    }


def workload_ready(workload: dict[str, Any], replicas: int) -> bool:
    """All wanted replicas updated to the current template and Ready."""
    status = workload.get("status") or {}
    generation = int(workload["metadata"].get("generation") or 0)
    return (
        int(status.get("observedGeneration") or 0) >= generation
        and int(status.get("readyReplicas") or 0) >= replicas
        and int(status.get("updatedReplicas") or 0) >= replicas
    )


# --- status -----------------------------------------------------------------------------------


STATE_NAMES = {
    ("preseed", DONE): "pre-seeded", ("preseed", FAILED): "pre-seed failed", ("preseed", RUNNING): "pre-seeding",
    ("cutover", DONE): "cut over", ("cutover", FAILED): "cutover failed", ("cutover", RUNNING): "cutting over",
    ("verify", FAILED): "verify failed", ("verify", RUNNING): "verifying",
    (SWAP, DONE): "swapped", (SWAP, FAILED): "swap failed", (SWAP, RUNNING): "swapping",
    (SWAP, "rolled back"): "swapped",
    (ROLLBACK, DONE): "rolled back", (ROLLBACK, PARTIAL): "partly rolled back", (ROLLBACK, RUNNING): "rolling back",
}  # fmt: skip


def volume_state(entry: dict[str, Any]) -> tuple[str, str, str]:
    """(state, since, detail) of one volume from its journal entry; ``planned`` when empty."""
    best: tuple[str, int, str, str] | None = None
    for order, step in enumerate(STEP_ORDER):
        record = entry.get(step)
        if not record:
            continue
        status = str(record.get("status", ""))
        if step == "verify" and status == DONE:
            state = "verified" if record.get("ok") is True else "verify failed"
        else:
            state = STATE_NAMES.get((step, status), f"{step} {status}")
        candidate = (str(record.get("at", "")), order, state, _detail(step, record))
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    if best is None:
        return "planned", "", ""
    return best[2], best[0], best[3]


def _detail(step: str, record: dict[str, Any]) -> str:
    if step == SWAP:
        message = f": {record['message']}" if record.get("message") else ""
        return f"{record.get('oldClaim')} -> {record.get('newClaim')}{message}"
    if step == ROLLBACK:
        return f"back on {record.get('claim')}" if record.get("claim") else ""
    return str(record.get("message") or "")


def status(plan: Plan, journal: Journal) -> dict[str, Any]:
    """Where each volume of the plan stands, from the journal."""
    entries = journal.volumes()
    volumes = []
    for volume in plan.volumes:
        entry = entries.get(volume["name"], {})
        state, since, detail = volume_state(entry)
        volumes.append({
            "volume": volume["name"], "role": volume["role"], "action": volume["action"],
            "state": state, "since": since, "detail": detail,
            "steps": {step: entry[step].get("status") for step in STEP_ORDER if entry.get(step)},
        })  # fmt: skip
    return {
        "plan": plan.name,
        "volumes": volumes,
        "releases": journal.releases(),
        "workloads": journal_workloads(journal),
    }
