"""Executors run the rendered Job manifests: on the cluster, or on this host with the same command."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

# (completion index, event from the agent's JSON lines)
EventSink = Callable[[int, dict[str, Any]], None]


@dataclass
class JobResult:
    """How one Job ended."""

    name: str
    succeeded: bool
    completed_indexes: list[int] = field(default_factory=list)
    failed_pods: int = 0
    message: str = ""
    done_events: list[dict[str, Any]] = field(default_factory=list)


class Executor(Protocol):
    def run_job(
        self,
        manifest: dict[str, Any],
        on_event: EventSink,
        skip_indexes: frozenset[int] = frozenset(),
    ) -> JobResult: ...


def completions(manifest: dict[str, Any]) -> int:
    return int(manifest["spec"].get("completions") or 1)


def is_indexed(manifest: dict[str, Any]) -> bool:
    return bool(manifest["spec"].get("completionMode") == "Indexed")
