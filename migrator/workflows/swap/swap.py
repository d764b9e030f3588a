"""``swap``: the phase's moved volumes onto their new claims (see the package docstring)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from migrator.errors import BadInputError, MigratorError, OperationFailedError
from migrator.journal import DONE, FAILED, RUNNING, Journal, now
from migrator.manifests.swap import (
    SEAWEEDFS_CSI_DRIVER,
    build_seaweedfs_claim,
    build_seaweedfs_volume,
    swap_claim_name,
)
from migrator.plan import Plan
from migrator.values import claim_paths, merge_patch, rewrite_claims
from migrator.workflows.swap.bring_back import avoid_claims, bring_back
from migrator.workflows.swap.cluster import Cluster
from migrator.workflows.swap.context import (
    SWAP,
    FileResult,
    Observer,
    SwapContext,
    SwapOptions,
    SwapSummary,
    VolumeResult,
    old_claim,
    patch_key,
    read_text,
    readiness_problems,
    releases_of,
    require_cluster,
    require_where,
    volume_result,
    workloads_of,
    write_text,
)

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


def swap(plan: Plan, options: SwapOptions, context: SwapContext, observer: Observer) -> SwapSummary:
    """Swap the phase's moved volumes onto their new claims; see the package docstring.

    Raises SwapRefusedError (without --force), CSIDriverMissingError, BadInputError for unreadable
    files; per-volume and per-workload failures are in the summary instead.
    """
    require_where(options, "swap")
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
    cluster = require_cluster(context)
    if plan.spec["target"]["type"] == "s3" and not cluster.has_csi_driver(SEAWEEDFS_CSI_DRIVER):
        raise CSIDriverMissingError()
    with context.lock:
        for volume in moving:
            summary.volumes.append(_new_claim(plan, volume, context, options.dry_run, observer))
        swapped = [v for v in moving if volume_result(summary, v).status != FAILED]
        mapping = {old_claim(v): volume_result(summary, v).new_claim for v in swapped}
        by_claim = {old_claim(v): v["name"] for v in swapped}
        releases = [r["name"] for r in releases_of(plan, workloads_of(moving))]
        for path, text in texts.items():
            summary.files.append(
                _swap_file(plan, path, text, mapping, by_claim, releases, context, options.dry_run)
            )
        if options.in_cluster:
            for release in releases:
                patches = point_release(release, mapping, context, summary, options.dry_run)
                _record_cluster_patches(patches, by_claim, context, summary, options.dry_run)
        _finish_swap(summary, swapped, context, options.dry_run)
        if options.in_cluster:
            failed = {
                v["name"]: f"{v['name']} failed to swap"
                for v in moving
                if volume_result(summary, v).status == FAILED
            }
            avoid = avoid_claims([v for v in moving if v["name"] not in failed], old_claim)
            bring_back(plan, phase_volumes, failed, avoid, context, options, summary, observer)
    _advise_after_swap(plan, options, summary)
    return summary


def _new_claim(
    plan: Plan, volume: dict[str, Any], context: SwapContext, dry_run: bool, observer: Observer
) -> VolumeResult:
    """Create (or find) the claim the volume moves to and journal the swap's start."""
    cluster = require_cluster(context)
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
            "status": FAILED if result.status == FAILED else RUNNING,
            "at": now(),
            "oldClaim": result.old_claim,
            "newClaim": result.new_claim,
            "claimObjects": [{"kind": o["kind"], "name": o["name"]} for o in result.objects],
            "patches": previous.get("patches", []) if same else [],
        }
        if result.message:
            entry[SWAP]["message"] = result.message

    journal.update(change)


def _journal_patches(journal: Journal, volume: str, patches: list[dict[str, Any]]) -> None:
    """Add patches to the volume's swap entry, one per location: the first one recorded holds
    the original text, so a re-run never overwrites it."""

    def change(document: dict[str, Any]) -> None:
        entry = document["volumes"].setdefault(volume, {}).setdefault(SWAP, {"patches": []})
        kept = {patch_key(p): p for p in entry.setdefault("patches", [])}
        for patch in patches:
            kept.setdefault(patch_key(patch), patch)
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


def point_release(
    release: str, mapping: dict[str, str], context: SwapContext, summary: SwapSummary, dry_run: bool
) -> list[dict[str, Any]]:
    """Point a HelmRelease's claim references (spec.values, and ConfigMaps in valuesFrom) from
    the keys of ``mapping`` to its values; returns the patches made (not yet journaled)."""
    cluster = require_cluster(context)
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
        {
            "target": "HelmRelease",
            "name": release,
            "path": ".".join(("spec", "values", *path)),
            "old": claim,
            "new": mapping[claim],
        }
        for path, claim in claim_paths(values)
        if claim in mapping
    ]


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
        result = volume_result(summary, volume)
        result.patches += [
            {"target": "file", "file": f.path, **c}
            for f in summary.files
            for c in f.changes
            if c["old"] == result.old_claim
        ]
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
