"""``rollback``: undo exactly what swap (and the cutover's quiesce) recorded in the journal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from migrator.journal import DONE, RUNNING, Journal, now
from migrator.plan import Plan
from migrator.values import Change, restore_claims
from migrator.workflows.swap.bring_back import avoid_claims, bring_back
from migrator.workflows.swap.context import (
    LEFT_STOPPED,
    PARTIAL,
    ROLLBACK,
    ROLLED_BACK,
    SWAP,
    FileResult,
    Observer,
    SwapContext,
    SwapOptions,
    SwapSummary,
    VolumeResult,
    patch_key,
    read_text,
    releases_of,
    require_cluster,
    require_where,
    volume_result,
    workloads_of,
    write_text,
)
from migrator.workflows.swap.swap import point_release


def rollback(
    plan: Plan, options: SwapOptions, context: SwapContext, observer: Observer
) -> SwapSummary:
    """Undo what swap (and the cutover's quiesce) recorded for the phase: the exact old claim
    references in the files and/or HelmReleases, releases back to their previous suspend value,
    workloads back to their recorded replicas and Ready. Never deletes anything."""
    require_where(options, "rollback")
    phase_volumes = plan.volumes_for_phase(options.phase)
    summary = SwapSummary(ROLLBACK, plan.name, options.phase, options.dry_run, options.in_cluster)
    texts = {path: read_text(path) for path in options.values_files}
    entries = context.journal.volumes()
    # Rolled-back volumes stay in: a later --in-cluster run still reverts what Flux re-applied.
    swapped = [v for v in phase_volumes if _swap_entry(entries, v).get("newClaim")]
    with context.lock:
        for volume in swapped:
            entry = _swap_entry(entries, volume)
            summary.volumes.append(
                VolumeResult(
                    volume["name"],
                    "unchanged",
                    entry["oldClaim"],
                    entry["newClaim"],
                    objects=entry.get("claimObjects", []),
                )
            )
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
            bring_back(plan, phase_volumes, blocked, avoid, context, options, summary, observer)
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
        (v, p)
        for v in swapped
        for p in _pending(entries, v)
        if p["target"] == "file" and p["file"] == resolved
    ]
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
        volume_result(summary, volume).patches.append(patch)
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
                p for p in swap_entry.get("patches", []) if patch_key(p) != patch_key(patch)
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
    cluster = require_cluster(context)
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
            volume_result(summary, volume).patches.append(patch)
        if not dry_run:
            _journal_restored(context.journal, done)
    reverse = {
        _swap_entry(entries, v)["newClaim"]: _swap_entry(entries, v)["oldClaim"] for v in swapped
    }
    by_new = {_swap_entry(entries, v)["newClaim"]: v for v in swapped}
    for release in releases_of(plan, workloads_of(swapped)):
        reverted = point_release(release["name"], reverse, context, summary, dry_run)
        for patch in reverted:
            volume_result(summary, by_new[patch["old"]]).patches.append(patch)
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
        result = volume_result(summary, volume)
        restored = {patch_key(p) for p in result.patches}
        left = [p for p in _pending(entries, volume) if patch_key(p) not in restored]
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
