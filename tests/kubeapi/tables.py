"""Server-side printing: ``meta.k8s.io/v1 Table`` responses, as ``kubectl get`` asks for."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .resources import ResourceType

Obj = dict[str, Any]
Column = tuple[str, str, Callable[[Obj], Any]]


def wants_table(accept: str) -> bool:
    """Whether the Accept header asks for a Table."""
    return "as=Table" in accept


def age(obj: Obj) -> str:
    """``5s``, ``3m``, ``2h`` or ``4d`` since creation, like kubectl prints it."""
    created = obj["metadata"].get("creationTimestamp")
    if not created:
        return "<unknown>"
    seconds = int((datetime.now(UTC) - datetime.fromisoformat(created)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _status(obj: Obj) -> Obj:
    return obj.get("status") or {}


def _pod_ready(pod: Obj) -> str:
    statuses = _status(pod).get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    return f"{ready}/{len((pod.get('spec') or {}).get('containers') or [])}"


def _restarts(pod: Obj) -> int:
    return sum(s.get("restartCount", 0) for s in _status(pod).get("containerStatuses") or [])


def _replicas_ready(obj: Obj) -> str:
    return f"{_status(obj).get('readyReplicas', 0)}/{obj['spec'].get('replicas', 1)}"


def _condition(kind: str) -> Callable[[Obj], str]:
    def read(obj: Obj) -> str:
        found = [c for c in _status(obj).get("conditions") or [] if c.get("type") == kind]
        return found[0].get("status", "Unknown") if found else "Unknown"
    return read


_COLUMNS: dict[str, list[Column]] = {
    "Pod": [("Ready", "string", _pod_ready), ("Status", "string", lambda o: _status(o).get(
        "phase", "")), ("Restarts", "integer", _restarts)],
    "Deployment": [("Ready", "string", _replicas_ready),
                   ("Up-to-date", "integer", lambda o: _status(o).get("updatedReplicas", 0)),
                   ("Available", "integer", lambda o: _status(o).get("availableReplicas", 0))],
    "StatefulSet": [("Ready", "string", _replicas_ready)],
    "Job": [("Completions", "string", lambda o: f"{_status(o).get('succeeded', 0)}/"
             f"{o['spec'].get('completions', 1)}")],
    "PersistentVolumeClaim": [
        ("Status", "string", lambda o: _status(o).get("phase", "")),
        ("Volume", "string", lambda o: o["spec"].get("volumeName", "")),
        ("StorageClass", "string", lambda o: o["spec"].get("storageClassName", ""))],
    "HelmRelease": [("Ready", "string", _condition("Ready")),
                    ("Suspended", "string", lambda o: str(o["spec"].get("suspend", False)))],
}


def _partial_metadata(obj: Obj) -> Obj:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": {k: v for k, v in obj["metadata"].items() if k != "managedFields"}}


def to_table(resource: ResourceType, listing: Obj) -> Obj:
    """Render a list response as a Table (Name, kind-specific columns, Age)."""
    columns: list[Column] = [("Name", "string", lambda o: o["metadata"]["name"]),
                             *_COLUMNS.get(resource.kind, []), ("Age", "string", age)]
    definitions = [{"name": name, "type": kind, "format": "name" if name == "Name" else "",
                    "description": "", "priority": 0} for name, kind, _ in columns]
    rows = [{"cells": [read(obj) for _, _, read in columns], "object": _partial_metadata(obj)}
            for obj in listing["items"]]
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": listing["metadata"],
            "columnDefinitions": definitions, "rows": rows}
