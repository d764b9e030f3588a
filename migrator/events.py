"""The event protocol between the agents (what a Job runs) and the CLI that watches them.

An agent writes one JSON object per line to stdout: ``{"migrator": VERSION, "event": KIND, ...}``.
Executors find those lines among the others in a pod's log (or a local process's output) with
:func:`iter_events` and hand them to the workflows; nothing else of an agent is imported to read
them. ``VERSION`` changes when a field changes meaning or goes away (adding one does not): an
agent image newer than this CLI then fails with one line saying so, instead of being misread.

:data:`FIELDS` is the contract: each kind with the fields it always carries; tests hold every
event the agents emit to it (:func:`problems`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import IO, Any

from migrator.errors import OperationFailedError

VERSION = 1
MARKER = '{"migrator"'

Event = dict[str, Any]
Emit = Callable[[Event], None]

FIELDS: dict[str, tuple[str, ...]] = {
    # copy agent (migrator agent copy)
    "plan": ("files", "bytes", "toCopy", "toCopyBytes", "skippedSqlite"),
    "progress": ("bytes", "files"),
    "vanished": ("files", "count"),
    "attributes": ("checked", "updated", "missing", "errors"),
    "error": ("message",),
    "done": (),
    # verify agent (migrator agent verify)
    "verify-progress": (),
    "difference": ("kind", "path", "detail"),
    "verify-done": ("files", "bytes", "sample"),
    # backup agents (migrator agent backup / restore / drill)
    "start": ("volume",),
    "volume-done": ("volume", "status"),
}


def json_lines(stream: IO[str]) -> Emit:
    """An emitter writing one versioned JSON object per line (what executors parse from logs)."""

    def emit(event: Event) -> None:
        stream.write(json.dumps({"migrator": VERSION, **event}) + "\n")
        stream.flush()

    return emit


def iter_events(lines: Iterator[str]) -> Iterator[Event]:
    """The migrator events among log lines (other lines, and lines cut short, are skipped).

    Raises OperationFailedError on an event of a newer protocol than this CLI speaks.
    """
    for line in lines:
        if not line.startswith(MARKER):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        version = event.get("migrator")
        if not isinstance(version, int) or version > VERSION:
            raise OperationFailedError(
                f"the agent speaks event protocol {version!r}, this migrator only {VERSION}: "
                "use the agent image of this migrator's version (plan --image)"
            )
        yield event


def problems(event: Event) -> list[str]:
    """What makes ``event`` break the contract in :data:`FIELDS` (empty when it holds)."""
    kind = event.get("event")
    if kind not in FIELDS:
        return [f"unknown event kind {kind!r}"]
    return [f"{kind}: no {name!r}" for name in FIELDS[kind] if name not in event]
