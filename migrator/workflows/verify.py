"""The ``verify`` workflow: one verify Job per volume (source and destination hashed side by side,
merge-compared), run by the same executors as the copies, results recorded in the journal."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from migrator.errors import BadInputError
from migrator.manifests.verify import build_verify_job, with_verify_options
from migrator.plan import Plan
from migrator.workflows.run import RunContext, load_manifest

MAX_KEPT_DIFFERENCES = 10_000
UNRENDERED_HINT = (
    "this plan records no verify Jobs (written before they were rendered): they were built now; "
    "re-run 'migrator plan' to render them into its jobs directory for review ({plan})"
)


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
        return {"name": self.name, "ok": self.ok, "files": self.files, "bytes": self.bytes,
                "differences": self.differences, "metadataDifferences": self.metadata_differences,
                "counts": self.counts, "seconds": self.seconds, "hashedFiles": self.hashed_files,
                "error": self.error}  # fmt: skip


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
                {"name": v.name, "files": v.files, "bytes": v.bytes, "differences": v.differences,
                 "hashedFiles": v.hashed_files, **({"error": v.error} if v.error else {})}
                for v in self.volumes
            ],
            "differences": self.differences,
            "truncated": self.truncated,
            **({"notes": self.notes} if self.notes else {}),
        }  # fmt: skip


def verify_plan(
    plan: Plan,
    volumes: list[dict[str, Any]],
    context: RunContext,
    observer: VerifyObserver,
    sample: float | None = None,
    strict_metadata: bool = False,
    cache: bool = True,
    report_stream: Any = None,
) -> VerifyReport:
    """Verify each volume; every difference goes to ``report_stream`` (if given) as ``kind\\tvolume\\tpath``."""
    if sample is not None and not 0 < sample <= 1:
        raise BadInputError(f"--sample {sample} must be a fraction in (0, 1]")
    report = VerifyReport(plan.name, sample)
    if any("verify" not in v["copy"]["jobs"] for v in volumes):
        report.notes.append(UNRENDERED_HINT.format(plan=plan.path or plan.name))
    with context.lock:
        for volume in volumes:
            verdict = _verify_volume(
                plan,
                volume,
                context,
                observer,
                report,
                sample,
                strict_metadata,
                cache,
                report_stream,
            )
            report.volumes.append(verdict)
            context.journal.record(
                volume["name"], "verify", "done" if verdict.ok else "failed", ok=verdict.ok,
                files=verdict.files, bytes=verdict.bytes, differences=verdict.differences,
                sample=sample, error=verdict.error,
                mountMetadata=strict_metadata and bool(plan.spec["target"].get("filer")),
            )  # fmt: skip
    return report


def _verify_volume(
    plan: Plan, volume: dict[str, Any], context: RunContext, observer: VerifyObserver, report: VerifyReport,
    sample: float | None, strict_metadata: bool, cache: bool, report_stream: Any,
) -> VolumeVerdict:  # fmt: skip
    name = volume["name"]
    manifest = verify_manifest(plan, volume, sample, strict_metadata, cache)
    verdict = VolumeVerdict(name, ok=False)
    observer.volume_started(name)

    def on_event(_index: int, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "difference":
            if report_stream is not None:
                report_stream.write(f"{event['kind']}\t{name}\t{event['path']}\n")
            if len(report.differences) < MAX_KEPT_DIFFERENCES:
                report.differences.append(
                    {"volume": name, "path": event["path"], "kind": event["kind"]}
                )
            else:
                report.truncated = True
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
    plan: Plan, volume: dict[str, Any], sample: float | None, strict_metadata: bool, cache: bool
) -> dict[str, Any]:
    """The volume's verify Job as reviewed in ``jobs/<plan>/`` (``copy.jobs.verify``) with the
    run-time options applied, as ``run`` applies ``--recheck`` to its copy Jobs; built now for a
    plan written before verify Jobs were rendered."""
    if "verify" in volume["copy"]["jobs"]:
        manifest = load_manifest(plan, volume, "verify")
    else:
        manifest = build_verify_job(plan.document, volume)
    return with_verify_options(manifest, sample, strict_metadata, cache)
