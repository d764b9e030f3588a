"""The journal: what each volume's steps have done, so any re-run resumes instead of restarting.

Local mode keeps it in ``plans/<name>.state.json`` beside the plan (written atomically); cluster
mode in a ConfigMap ``migrator-<plan>`` (see :class:`migrator.workflows.runtime.journal_store.ConfigMapStore`).
Both hold the same JSON document.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from migrator.errors import BadInputError, OperationFailedError

DONE = "done"
FAILED = "failed"
RUNNING = "running"


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class JournalStore(Protocol):
    def load(self) -> dict[str, Any]: ...

    def save(self, document: dict[str, Any]) -> None: ...


class FileStore:
    """A JSON file written atomically (temp file + rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        try:
            loaded: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            raise BadInputError(
                f"journal {self.path} is not valid JSON; move it away to start over"
            ) from None
        return loaded

    def save(self, document: dict[str, Any]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


@dataclass
class Journal:
    """Per volume and step (``preseed``, ``cutover``, ``verify``, ``swap``...): status and figures."""

    store: JournalStore
    plan_name: str

    def _document(self) -> dict[str, Any]:
        document = self.store.load() or {"plan": self.plan_name, "volumes": {}, "releases": {}}
        document.setdefault("volumes", {})
        document.setdefault("releases", {})
        return document

    def step(self, volume: str, step: str) -> dict[str, Any]:
        result: dict[str, Any] = self._document()["volumes"].get(volume, {}).get(step, {})
        return result

    def record(self, volume: str, step: str, status: str, **details: Any) -> None:
        document = self._document()
        entry = {"status": status, "at": now(), **details}
        document["volumes"].setdefault(volume, {})[step] = entry
        self.store.save(document)

    def update(self, change: Callable[[dict[str, Any]], None]) -> None:
        document = self._document()
        change(document)
        self.store.save(document)

    def volumes(self) -> dict[str, Any]:
        volumes: dict[str, Any] = self._document()["volumes"]
        return volumes

    def releases(self) -> dict[str, Any]:
        releases: dict[str, Any] = self._document()["releases"]
        return releases


def on_route(record: dict[str, Any], route: str) -> tuple[dict[str, Any], str | None]:
    """A step's record as it counts for ``route``, and the other route it was made on if any.

    What a cutover or verify did for another source or target does not count for this one:
    ``({}, that route)``. Records written before routes were recorded count.
    """
    recorded = record.get("route")
    if recorded in (None, route):
        return record, None
    return {}, str(recorded)


def journal_path(plan_path: Path) -> Path:
    return plan_path.with_name(plan_path.stem + ".state.json")


class FileLock:
    """An exclusive, non-blocking lock file: two runs of one plan at once are refused."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: Any = None

    def __enter__(self) -> FileLock:
        self.handle = self.path.open("a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise OperationFailedError(
                f"another migrator run of this plan is in progress ({holder}); "
                "wait for it, or stop it, then re-run"
            ) from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"pid {os.getpid()}")
        self.handle.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.truncate(0)
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
