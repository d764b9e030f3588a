"""The ``run`` workflow: pre-seed (live, repeatable) or cutover (quiesce, final delta sync).

Per-volume resilience: a failing volume is reported and the others go on; the journal records
every step so a re-run resumes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import yaml

from migrator.errors import BadInputError
from migrator.executors import EventSink, Executor, JobResult, completions
from migrator.journal import (
    DONE,
    FAILED,
    RUNNING,
    FileLock,
    FileStore,
    Journal,
    journal_path,
    on_route,
)
from migrator.manifests.copy import with_recheck
from migrator.plan import Plan, volume_route, volumes_in_phase
from migrator.planmodel import PlanVolume

Step = Literal["preseed", "cutover"]
PRESEED: Final = "preseed"
CUTOVER: Final = "cutover"


class RunObserver(Protocol):
    """What the UI gets told: volume starts, agent events, volume ends."""

    def volume_started(self, volume: str, step: str, shards: int) -> None: ...

    def event(self, volume: str, index: int, event: dict[str, Any]) -> None: ...

    def volume_finished(self, volume: str, outcome: VolumeOutcome) -> None: ...

    def note(self, message: str) -> None: ...


@dataclass
class VolumeOutcome:
    volume: str
    step: str
    status: str  # done | failed | skipped
    message: str = ""
    files: int = 0
    bytes: int = 0
    copied: int = 0
    copied_bytes: int = 0
    deleted: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "volume": self.volume,
            "step": self.step,
            "status": self.status,
            "message": self.message,
            "files": self.files,
            "bytes": self.bytes,
            "copied": self.copied,
            "copiedBytes": self.copied_bytes,
            "deleted": self.deleted,
        }


@dataclass
class RunSummary:
    plan: str
    phase: str
    step: str
    executor: str
    dry_run: bool
    volumes: list[VolumeOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(v.status != FAILED for v in self.volumes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "plan": self.plan,
            "phase": self.phase,
            "step": self.step,
            "executor": self.executor,
            "dryRun": self.dry_run,
            "volumes": [v.as_dict() for v in self.volumes],
            "notes": self.notes,
        }


@dataclass
class RunContext:
    """Everything a run needs besides the plan: the executor, journal, lock and quiesce hooks."""

    executor: Executor
    executor_name: str
    journal: Journal
    lock: contextlib.AbstractContextManager[Any]
    quiesce: Callable[[list[PlanVolume], bool], list[str]] | None = None
    # After a failed cutover: start the apps the quiesce stopped again (notes of what it did).
    bring_back: Callable[[list[PlanVolume], RunObserver], list[str]] | None = None

    def stop(self) -> None:
        """Stop running work after Ctrl-C (local processes; cluster Jobs keep running)."""
        terminate = getattr(self.executor, "terminate", None)
        if terminate is not None:
            terminate()


def load_manifest(
    plan: Plan, volume: PlanVolume, step: Literal["preseed", "cutover", "verify"]
) -> dict[str, Any]:
    """The rendered Job of a volume's step, as reviewed in ``jobs/<plan>/``."""
    path = plan.jobs_dir / volume["copy"]["jobs"][step]
    try:
        manifest: dict[str, Any] = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise BadInputError(
            f"{path} is missing; re-run 'migrator plan' to render the Jobs"
        ) from None
    return manifest


def local_context(plan: Plan, parallel: int | None) -> RunContext:
    """Local executor, journal file and lock file beside the plan."""
    from migrator.executors.local import LocalExecutor, local_claims

    if plan.path is None:
        raise BadInputError("a local run needs a plan file")
    volumes = plan.model["spec"]["volumes"]
    claims = local_claims(volumes)
    missing = [v["name"] for v in volumes if not v["source"].get("path")]
    if missing:
        raise BadInputError(
            f"volumes {', '.join(missing)} are PVCs: run them with --executor kubernetes"
        )
    journal = Journal(FileStore(journal_path(plan.path)), plan.name)
    lock_path = plan.path.with_name(plan.path.stem + ".lock")
    return RunContext(LocalExecutor(claims, parallel), "local", journal, FileLock(lock_path))


def make_context(plan: Plan, options: dict[str, Any]) -> RunContext:
    """The executor the user asked for (default: local for --source-dir plans)."""
    kind = options.get("executor") or ("local" if plan.mode == "local" else "kubernetes")
    if kind == "local":
        return local_context(plan, options.get("parallel"))
    from migrator.workflows.runtime.context import kubernetes_context

    return kubernetes_context(plan, options)


def run_plan(
    plan: Plan,
    phase: str,
    cutover: bool,
    context: RunContext,
    observer: RunObserver,
    dry_run: bool = False,
    keep_down: bool = False,
    recheck: bool = False,
) -> RunSummary:
    """Run one phase's copy Jobs (pre-seed, or with ``cutover`` the final sync) for every volume.

    With ``recheck`` each copy first checks the state of its last copy against the destination
    (what is missing there or of another size is copied again), and a finished cutover runs again.
    A cutover that fails brings the apps back (``context.bring_back``) unless ``keep_down``.
    """
    volumes = volumes_in_phase(plan.model["spec"]["volumes"], phase)
    if not volumes:
        raise BadInputError(f"plan {plan.name} has no {phase} volumes")
    step: Step = CUTOVER if cutover else PRESEED
    summary = RunSummary(plan.name, phase, step, context.executor_name, dry_run)
    # A dry run writes nothing, not even the Lease: a read-only account can review a cutover.
    with contextlib.nullcontext() if dry_run else context.lock:
        if cutover and context.quiesce is not None:
            summary.notes += context.quiesce(volumes, dry_run)
        for volume in volumes:
            outcome = _run_volume(
                plan, volume, step, context, observer, dry_run, recheck, summary.notes
            )
            summary.volumes.append(outcome)
        if cutover and not dry_run and not summary.ok and context.bring_back is not None:
            summary.notes += _after_failed_cutover(volumes, context, observer, keep_down)
    if cutover and not dry_run and summary.ok:
        summary.notes.append(
            "cutover done: the apps stay stopped and their releases suspended until "
            f"'migrator swap --plan {plan.path}' (or 'migrator rollback')"
        )
    return summary


def _after_failed_cutover(
    volumes: list[PlanVolume], context: RunContext, observer: RunObserver, keep_down: bool
) -> list[str]:
    if keep_down:
        return [
            "cutover failed: the apps stay stopped and their releases suspended (--keep-down); "
            "fix the cause and re-run the same command to finish the cutover"
        ]
    assert context.bring_back is not None
    # The apps write to their old volumes again: a volume synced in this cutover is stale now.
    for volume in volumes:
        entry = context.journal.step(volume["name"], CUTOVER)
        if entry.get("status") == DONE:
            context.journal.record(
                volume["name"],
                CUTOVER,
                FAILED,
                job=entry.get("job"),
                message="the apps were brought back after a failed cutover; it syncs again next time",
            )
    note = "cutover failed: bringing the apps back on their old volumes (--keep-down: leave them)"
    return [note, *context.bring_back(volumes, observer)]


def _run_volume(
    plan: Plan,
    volume: PlanVolume,
    step: Step,
    context: RunContext,
    observer: RunObserver,
    dry_run: bool,
    recheck: bool,
    notes: list[str],
) -> VolumeOutcome:
    name = volume["name"]
    manifest = load_manifest(plan, volume, step)
    if recheck:
        manifest = with_recheck(manifest)
    route = volume_route(plan.model["spec"], volume)
    previous, moved = on_route(context.journal.step(name, step), route)
    if moved:  # the plan was re-written with another source or target: that record is void
        note = (
            f"{name}: the journal's {step} copied {moved}; the plan now says {route}, "
            f"so its {step} runs again"
        )
        observer.note(note)
        notes.append(note)
    if step == CUTOVER and previous.get("status") == DONE and not recheck:
        return VolumeOutcome(name, step, "skipped", "already cut over", **_figures(previous))
    if dry_run:
        observer.note(f"(dry run) would run Job {manifest['metadata']['name']} for {name}")
        return VolumeOutcome(name, step, "skipped", "(dry run)")
    # An interrupted sharded run keeps its finished shards (same Job spec, same partitions).
    resume = (
        previous.get("status") == RUNNING and previous.get("job") == manifest["metadata"]["name"]
    )
    done_indexes = frozenset(previous.get("completedIndexes", [])) if resume else frozenset()
    context.journal.record(
        name,
        step,
        RUNNING,
        job=manifest["metadata"]["name"],
        completedIndexes=sorted(done_indexes),
        route=route,
    )
    observer.volume_started(name, step, completions(manifest))
    sink: EventSink = lambda index, event: observer.event(name, index, event)  # noqa: E731
    result = context.executor.run_job(manifest, sink, done_indexes)
    outcome = _outcome(name, step, result)
    figures = {
        k: v
        for k, v in outcome.as_dict().items()
        if k in ("files", "bytes", "copied", "copiedBytes", "deleted")
    }
    context.journal.record(
        name,
        step,
        outcome.status,
        job=manifest["metadata"]["name"],
        completedIndexes=sorted(done_indexes | set(result.completed_indexes)),
        message=result.message,
        route=route,
        **figures,
    )
    observer.volume_finished(name, outcome)
    return outcome


def _outcome(name: str, step: str, result: JobResult) -> VolumeOutcome:
    outcome = VolumeOutcome(name, step, DONE if result.succeeded else FAILED, result.message)
    for done in result.done_events:
        outcome.files += done.get("files", 0)
        outcome.bytes += done.get("bytes", 0)
        outcome.copied += done.get("copied", 0)
        outcome.copied_bytes += done.get("copiedBytes", 0)
        outcome.deleted += done.get("deleted", 0)
    return outcome


def _figures(entry: dict[str, Any]) -> dict[str, int]:
    return {
        "files": entry.get("files", 0),
        "bytes": entry.get("bytes", 0),
        "copied": entry.get("copied", 0),
        "copied_bytes": entry.get("copiedBytes", 0),
        "deleted": entry.get("deleted", 0),
    }


@contextlib.contextmanager
def no_lock() -> Iterator[None]:
    yield
