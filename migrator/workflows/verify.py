"""The ``verify`` workflow: one verify Job per volume (source and destination hashed side by side,
merge-compared), run by the same executors as the copies, a few volumes at once, results recorded
in the journal."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from migrator.errors import BadInputError
from migrator.manifests.verify import build_verify_job, with_verify_options
from migrator.plan import Plan, volume_route
from migrator.planmodel import PlanVolume
from migrator.workflows.run import RunContext, load_manifest

MAX_KEPT_DIFFERENCES = 10_000
UNRENDERED_HINT = (
    "this plan records no verify Jobs (written before they were rendered): they were built now; "
    "re-run 'migrator plan' to render them into its jobs directory for review ({plan})"
)
# Volumes verified at once: each is a Job (a process or a pod) hashing with its own workers.
DEFAULT_PARALLEL_VOLUMES = 4


class VerifyObserver(Protocol):
    def volume_started(self, volume: str) -> None: ...

    def hashing(self, volume: str, event: dict[str, Any]) -> None: ...

    def volume_finished(self, volume: str, outcome: VolumeVerdict) -> None: ...


@dataclass
class VolumeVerdict:
    name: str
    ok: bool
    files: int = 0
    bytes: int = 0
    differences: int = 0
    metadata_differences: int = 0
    seconds: float = 0.0
    hashed_files: dict[str, int] = field(default_factory=dict)
    error: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "files": self.files,
            "bytes": self.bytes,
            "differences": self.differences,
            "metadataDifferences": self.metadata_differences,
            "counts": self.counts,
            "seconds": self.seconds,
            "hashedFiles": self.hashed_files,
            "error": self.error,
        }


@dataclass
class VerifyReport:
    plan: str
    sample: float | None
    volumes: list[VolumeVerdict] = field(default_factory=list)
    differences: list[dict[str, str]] = field(default_factory=list)
    truncated: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.volumes)

    @property
    def failed(self) -> bool:
        """An operational failure (not a difference): the outcome is exit 3, not 1."""
        return any(v.error for v in self.volumes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "sample": self.sample,
            "volumes": [
                {
                    "name": v.name,
                    "files": v.files,
                    "bytes": v.bytes,
                    "differences": v.differences,
                    "hashedFiles": v.hashed_files,
                    **({"error": v.error} if v.error else {}),
                }
                for v in self.volumes
            ],
            "differences": self.differences,
            "truncated": self.truncated,
            **({"notes": self.notes} if self.notes else {}),
        }


def verify_plan(
    plan: Plan,
    volumes: list[PlanVolume],
    context: RunContext,
    observer: VerifyObserver,
    sample: float | None = None,
    strict_metadata: bool = False,
    cache: bool = True,
    report_stream: Any = None,
    parallel: int | None = None,
) -> VerifyReport:
    """Verify the volumes side by side, at most ``parallel`` at once (default
    min(volumes, DEFAULT_PARALLEL_VOLUMES)); every difference goes to ``report_stream`` (if given)
    as ``kind\tvolume\tpath``, one whole line at a time.

    Returns the report with the volumes (and their kept differences) in the order given, as a
    one-at-a-time verify would; the observer's methods are called from the verifying threads.
    Raises BadInputError for a sample outside (0, 1].
    """
    if sample is not None and not 0 < sample <= 1:
        raise BadInputError(f"--sample {sample} must be a fraction in (0, 1]")
    report = VerifyReport(plan.name, sample)
    if any("verify" not in v["copy"]["jobs"] for v in volumes):
        report.notes.append(UNRENDERED_HINT.format(plan=plan.path or plan.name))
    shared = _Shared(report_stream)
    slots = [_Slot(volume) for volume in volumes]
    pending: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
    for slot in slots:
        pending.put(slot)
    workers = max(1, min(parallel or DEFAULT_PARALLEL_VOLUMES, len(slots)))

    def work() -> None:
        # Each volume's verify is mostly waiting on its Job (a process or a pod): threads suffice.
        while True:
            try:
                slot = pending.get_nowait()
            except queue.Empty:
                return
            if shared.failed.is_set():  # as one at a time would: no new volume after an error
                slot.finished.set()
                continue
            try:
                slot.verdict = _verify_volume(
                    plan,
                    slot.volume,
                    context,
                    observer,
                    slot,
                    sample,
                    strict_metadata,
                    cache,
                    shared,
                )
                with shared.lock:  # Journal.record reads, changes and saves the whole document
                    _record(plan, context, slot.verdict, sample, strict_metadata)
            except BaseException as exc:  # re-raised in the calling thread
                slot.exception = exc
                shared.failed.set()
            finally:
                slot.finished.set()

    with context.lock:
        # Daemon threads: after Ctrl-C the main thread leaves at once, as it did before, even
        # while a cluster Job is still being watched.
        threads = [
            threading.Thread(target=work, daemon=True, name=f"verify-{i}") for i in range(workers)
        ]
        for thread in threads:
            thread.start()
        try:
            for slot in slots:
                # Wake up often: Python runs signal handlers (Ctrl-C) in the main thread only.
                while not slot.finished.wait(0.25):
                    pass
        except KeyboardInterrupt:
            context.stop()
            raise
    for slot in slots:
        if slot.exception is not None:
            raise slot.exception
        assert slot.verdict is not None
        report.volumes.append(slot.verdict)
        room = MAX_KEPT_DIFFERENCES - len(report.differences)
        report.differences.extend(slot.differences[:room])
        report.truncated = report.truncated or slot.dropped or len(slot.differences) > room
    return report


class _Shared:
    """What the verifying threads share: the report stream and the journal, behind one lock."""

    def __init__(self, report_stream: Any) -> None:
        self.report_stream = report_stream
        self.lock = threading.Lock()
        self.failed = threading.Event()  # a volume raised: start no other

    def write_difference(self, line: str) -> None:
        if self.report_stream is not None:
            with self.lock:
                self.report_stream.write(line)


@dataclass
class _Slot:
    """One volume's verify: its verdict and kept differences, merged in plan order at the end."""

    volume: PlanVolume
    verdict: VolumeVerdict | None = None
    differences: list[dict[str, str]] = field(default_factory=list)
    dropped: bool = False
    exception: BaseException | None = None
    finished: threading.Event = field(default_factory=threading.Event)

    def keep(self, difference: dict[str, str]) -> None:
        # Each volume keeps at most the report's cap: merged in order, the report keeps exactly
        # what a one-volume-at-a-time verify kept.
        if len(self.differences) < MAX_KEPT_DIFFERENCES:
            self.differences.append(difference)
        else:
            self.dropped = True


def _record(
    plan: Plan,
    context: RunContext,
    verdict: VolumeVerdict,
    sample: float | None,
    strict_metadata: bool,
) -> None:
    context.journal.record(
        verdict.name,
        "verify",
        "done" if verdict.ok else "failed",
        ok=verdict.ok,
        files=verdict.files,
        bytes=verdict.bytes,
        differences=verdict.differences,
        sample=sample,
        error=verdict.error,
        mountMetadata=strict_metadata and bool(plan.spec["target"].get("filer")),
        route=volume_route(plan.spec, plan.volume(verdict.name)),
    )


def _verify_volume(
    plan: Plan,
    volume: PlanVolume,
    context: RunContext,
    observer: VerifyObserver,
    slot: _Slot,
    sample: float | None,
    strict_metadata: bool,
    cache: bool,
    shared: _Shared,
) -> VolumeVerdict:
    name = volume["name"]
    manifest = verify_manifest(plan, volume, sample, strict_metadata, cache)
    verdict = VolumeVerdict(name, ok=False)
    observer.volume_started(name)

    def on_event(_index: int, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "difference":
            shared.write_difference(f"{event['kind']}\t{name}\t{event['path']}\n")
            slot.keep({"volume": name, "path": event["path"], "kind": event["kind"]})
        elif kind == "verify-progress":
            observer.hashing(name, event)
        elif kind == "verify-done":
            counts = event.get("differences", {})
            verdict.ok = bool(event.get("ok"))
            verdict.files, verdict.bytes = event.get("files", 0), event.get("bytes", 0)
            verdict.counts = {k: v for k, v in counts.items() if v}
            verdict.differences = sum(
                counts.get(k, 0) for k in ("missing", "extra", "type", "size", "checksum")
            )
            verdict.metadata_differences = sum(counts.get(k, 0) for k in ("mode", "owner", "mtime"))
            verdict.seconds = event.get("seconds", 0.0)
            verdict.hashed_files = event.get("hashedFiles", {})

    result = context.executor.run_job(manifest, on_event)
    if not result.succeeded:
        verdict.ok, verdict.error = False, result.message or "the verify Job failed"
    observer.volume_finished(name, verdict)
    return verdict


def verify_manifest(
    plan: Plan, volume: PlanVolume, sample: float | None, strict_metadata: bool, cache: bool
) -> dict[str, Any]:
    """The volume's verify Job as reviewed in ``jobs/<plan>/`` (``copy.jobs.verify``) with the
    run-time options applied, as ``run`` applies ``--recheck`` to its copy Jobs; built now for a
    plan written before verify Jobs were rendered."""
    if "verify" in volume["copy"]["jobs"]:
        manifest = load_manifest(plan, volume, "verify")
    else:
        # the manifests take plain dicts until converted to the plan model (#14)
        manifest = build_verify_job(plan.document, cast(dict[str, Any], volume))
    return with_verify_options(manifest, sample, strict_metadata, cache)
