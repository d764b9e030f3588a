"""Bringing the apps back after swap, rollback or a failed cutover: releases resumed, workloads
scaled back to their recorded replicas once they no longer mount the claims they must not, then
waited for until Ready."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from migrator.journal import Journal, now
from migrator.plan import Plan
from migrator.workflows.swap.cluster import Cluster
from migrator.workflows.swap.context import (
    LEFT_STOPPED,
    Observer,
    ReleaseResult,
    SwapContext,
    SwapOptions,
    SwapSummary,
    WorkloadResult,
    releases_of,
    require_cluster,
    workloads_of,
)


def bring_back(
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
    workloads = workloads_of(phase_volumes)
    blocked = {
        w: why
        for v in phase_volumes
        if v["name"] in blocked_volumes
        for w, why in ((w, blocked_volumes[v["name"]]) for w in workloads_of([v]))
    }
    held: set[str] = set()
    for release in releases_of(plan, workloads):
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
            workload,
            recorded.get(workload),
            blocked.get(workload),
            workload in held,
            workload in managed,
            avoid.get(workload, set()),
        )
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
    bring_back(plan, volumes, {}, {}, context, options, summary, observer)
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
        for workload in workloads_of([volume]):
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
        summary.releases.append(
            ReleaseResult(
                name,
                "left suspended",
                f"{prefix}it was suspended before the migration; resume it yourself (flux resume helmrelease {name})",
            )
        )
    else:
        summary.releases.append(ReleaseResult(name, "resumed", f"{prefix}spec.suspend removed"))
    if options.dry_run:
        return not previous
    # Before the cutover the field was most likely absent; removing it resumes the release and
    # leaves the object as Git has it (an explicit false in Git comes back at the next apply).
    require_cluster(context).patch_helmrelease(
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
    cluster = require_cluster(context)
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
    cluster = require_cluster(context)
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
