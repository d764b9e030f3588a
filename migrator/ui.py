"""Rich rendering for humans (tables to stdout, progress and notes to stderr) and JSON twins."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from migrator.quantity import human_bytes

# Off a terminal (pipes, CI logs) rich assumes 80 columns; tables of paths need more.
_WIDTH = None if sys.stdout.isatty() else 160
out = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err = Console(
    stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 160
)


def print_json(data: Any) -> None:
    """One JSON document on stdout (stable key order as built)."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def error(message: str) -> None:
    """The one-line error every failure ends with."""
    err.print(f"[bold red]Error:[/] {escape(message)}", markup=True, highlight=False)


def plan_table(document: dict[str, Any]) -> Table:
    spec = document["spec"]
    table = Table(title=f"Plan {document['metadata']['name']}", title_justify="left")
    for column in ("volume", "role", "action", "size", "workloads", "source", "target", "shards"):
        table.add_column(column, overflow="fold")
    for volume in spec["volumes"]:
        source = volume["source"]
        size = source.get("usedBytes") or source.get("capacityBytes")
        workloads = ", ".join(
            f"{w['kind']}/{w['name']}:{w['mountPath']}" for w in volume.get("workloads", [])
        )
        target = volume["target"].get("url") or volume["target"].get("pvc", "")
        where = source.get("pvc") or source.get("path", "")
        if source.get("storageClass"):
            where += f" ({source['storageClass']})"
        table.add_row(
            volume["name"],
            volume["role"],
            volume["action"],
            human_bytes(size),
            workloads or "-",
            where,
            target,
            str(volume["copy"]["shards"]),
        )
    return table


def show_plan(document: dict[str, Any], plan_path: str, jobs_dir: str) -> None:
    out.print(plan_table(document))
    out.print(f"Agent image: {document['spec']['image']}", markup=False)
    security = document["spec"].get("podSecurity")
    if security:
        out.print(f"Pod Security: {security['level']} ({security['reason']})", markup=False)
    for finding in document["spec"].get("warnings", []):
        style = "yellow" if finding["severity"] == "warning" else "cyan"
        label = finding["severity"].upper()
        code = escape(f"[{finding['code']}]")
        out.print(f"[{style}]{label}[/] {code} {escape(finding['message'])}", markup=True)
    out.print(f"Plan written to {plan_path}; Job manifests in {jobs_dir}/")


class RunProgress:
    """Rich progress on stderr: one row per volume and a total (bytes, files, rate, ETA)."""

    def __init__(self, enabled: bool = True, verbose: bool = False) -> None:
        """``verbose``: print every error the copies report (a line per file), not only the
        outcome of each volume."""
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TextColumn("{task.fields[files]} files"),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
            disable=not enabled,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.shards: dict[str, dict[int, tuple[int, int, int, int]]] = {}
        self.total: Any = None
        self.printed: set[tuple[str, str]] = set()
        self.verbose = verbose

    def __enter__(self) -> RunProgress:
        self.progress.__enter__()
        self.total = self.progress.add_task("total", total=0, files="0/0")
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def volume_started(self, volume: str, step: str, shards: int) -> None:
        label = f"{volume} ({step}{f', {shards} shards' if shards > 1 else ''})"
        self.tasks[volume] = self.progress.add_task(label, total=None, files="0/?")
        self.shards[volume] = {}

    def event(self, volume: str, index: int, event: dict[str, Any]) -> None:
        kind = event.get("event")
        shards = self.shards.setdefault(volume, {})
        done_bytes, total_bytes, done_files, total_files = shards.get(index, (0, 0, 0, 0))
        if kind == "plan":
            total_bytes, total_files = event.get("toCopyBytes", 0), event.get("toCopy", 0)
        elif kind == "progress":
            done_bytes, done_files = event.get("bytes", 0), event.get("files", 0)
        elif kind == "done":
            done_bytes, done_files = total_bytes, total_files
        elif kind == "error":
            message = str(event.get("message") or "")
            if event.get("object") and str(event["object"]) not in message:
                message = f"{event['object']}: {message}"
            # A retried pod often fails the same way; without -v the volume's outcome says why.
            if self.verbose and message and (volume, message) not in self.printed:
                self.printed.add((volume, message))
                err.print(f"  {volume}: {escape(message)}", markup=True)
            return
        shards[index] = (done_bytes, total_bytes, done_files, total_files)
        self._refresh(volume)

    def _refresh(self, volume: str) -> None:
        values = self.shards[volume].values()
        done_b, total_b = sum(v[0] for v in values), sum(v[1] for v in values)
        done_f, total_f = sum(v[2] for v in values), sum(v[3] for v in values)
        self.progress.update(
            self.tasks[volume], completed=done_b, total=total_b or None, files=f"{done_f}/{total_f}"
        )
        all_values = [v for shard in self.shards.values() for v in shard.values()]
        self.progress.update(
            self.total,
            completed=sum(v[0] for v in all_values),
            total=sum(v[1] for v in all_values),
            files=f"{sum(v[2] for v in all_values)}/{sum(v[3] for v in all_values)}",
        )

    def volume_finished(self, volume: str, outcome: Any) -> None:
        task = self.tasks.get(volume)
        if task is not None:
            total = self.progress.tasks[task].total or 0
            self.progress.update(task, completed=total, total=total)
        mark = "[green]done[/]" if outcome.status == "done" else f"[red]{outcome.status}[/]"
        # Why a volume failed ends the run in its Error line (and with -v here too).
        shown = outcome.message and (outcome.status != "failed" or self.verbose)
        detail = f": {escape(outcome.message)}" if shown else ""
        self.progress.console.print(f"{volume}: {mark}{detail}", markup=True)

    def note(self, message: str) -> None:
        self.progress.console.print(escape(message), markup=True)


def show_run_summary(summary: Any) -> None:
    table = Table(
        title=f"{summary.step} of plan {summary.plan} ({summary.phase})", title_justify="left"
    )
    for column in (
        "volume",
        "status",
        "files",
        "size",
        "copied",
        "copied size",
        "deleted",
        "message",
    ):
        table.add_column(column, overflow="fold")
    for v in summary.volumes:
        table.add_row(
            v.volume,
            v.status,
            str(v.files),
            human_bytes(v.bytes),
            str(v.copied),
            human_bytes(v.copied_bytes),
            str(v.deleted),
            v.message,
        )
    out.print(table)
    for note in summary.notes:
        out.print(escape(note), markup=True)


class VerifyProgress:
    """Rich progress on stderr while volumes are hashed: files and bytes per side."""

    def __init__(self, enabled: bool = True) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=err,
            disable=not enabled,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> VerifyProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def volume_started(self, volume: str) -> None:
        self.tasks[volume] = self.progress.add_task(
            f"verify {volume}", total=None, detail="hashing"
        )

    def hashing(self, volume: str, event: dict[str, Any]) -> None:
        detail = (
            f"source {event.get('sourceFiles', 0)} files {human_bytes(event.get('sourceBytes', 0))}, "
            f"destination {event.get('destinationFiles', 0)} files {human_bytes(event.get('destinationBytes', 0))}"
        )
        self.progress.update(self.tasks[volume], detail=detail)

    def volume_finished(self, volume: str, verdict: Any) -> None:
        state = (
            "[green]identical[/]" if verdict.ok else f"[red]{verdict.differences} differences[/]"
        )
        if verdict.error:
            state = f"[red]failed: {escape(verdict.error)}[/]"
        self.progress.update(self.tasks[volume], total=1, completed=1, detail=state)


def show_verify_report(report: Any) -> None:
    title = f"verify of plan {report.plan}" + (
        f" (SAMPLE of {report.sample:.1%} of files)" if report.sample else ""
    )
    table = Table(title=title, title_justify="left")
    for column in ("volume", "result", "files", "size", "rate", "differences", "metadata"):
        table.add_column(column)
    for v in report.volumes:
        rate = human_bytes(int(v.bytes / v.seconds)) + "/s" if v.seconds else "-"
        result = "error" if v.error else ("identical" if v.ok else "DIFFERENT")
        counts = ", ".join(
            f"{k} {n}" for k, n in sorted(v.counts.items()) if k not in ("mode", "owner", "mtime")
        )
        table.add_row(
            v.name,
            result,
            str(v.files),
            human_bytes(v.bytes),
            rate,
            counts or "0",
            str(v.metadata_differences),
        )
    out.print(table)
    for difference in report.differences[:20]:
        out.print(
            f"  {difference['kind']:9} {escape(difference['volume'])}: {escape(difference['path'])}",
            markup=True,
        )
    if len(report.differences) > 20:
        out.print(
            f"  ... and {len(report.differences) - 20} more (write them all with --report FILE)"
        )
    for note in report.notes:
        out.print(escape(note), markup=True)
    if report.sample:
        out.print(
            f"This was a SAMPLE: {report.sample:.1%} of files (selected by path hash) were checked."
        )


def show_repair(command: str) -> None:
    """How to repair what verify found: the run that checks the copy state against the
    destination and copies again what is missing or of another size there."""
    out.print(
        f"To repair: {escape(command)} (add --cutover once the apps are stopped): it copies "
        "again every file missing at the destination or of another size",
        markup=True,
    )


class _Quiet:
    """An observer that shows nothing (the demo's --json mode)."""

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class DemoNarrator:
    """Narrates the demo's steps on stderr; progress bars for copies and verifies."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.number = 0

    def step(self, title: str, detail: str = "") -> None:
        self.number += 1
        if self.enabled:
            err.print(
                f"\n[bold cyan]{self.number}. {escape(title)}[/]"
                + (f"  [dim]{escape(detail)}[/]" if detail else ""),
                markup=True,
            )

    def result(self, text: str, ok: bool = True) -> None:
        if self.enabled:
            mark = "[green]✓[/]" if ok else "[yellow]![/]"
            err.print(f"   {mark} {escape(text)}", markup=True)

    def observer(self, verify: bool = False) -> Any:
        if not self.enabled:
            return _Quiet()
        return VerifyProgress() if verify else RunProgress()

    def finish(self, summary: Any) -> None:
        verdict = "[bold green]demo passed[/]" if summary.ok else "[bold red]demo failed[/]"
        out.print(f"\n{verdict} in {summary.seconds:.0f}s", markup=True)
        if summary.kept:
            out.print(f"Work directory kept for inspection: {summary.work_dir}")
