"""The Kubernetes side of swap and rollback: claim objects, HelmRelease and ConfigMap values,
workload scale and readiness, pod events. Every call goes through :class:`KubeClient`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from migrator.errors import OperationFailedError
from migrator.kube import FIELD_MANAGER, KubeClient
from migrator.values import Change, merge_patch, restore_claims
from migrator.workflows.runtime.workloads import (
    patch_release,
    read_release,
    read_workload,
    scale,
    selector_of,
    wait_for_workload,
)

APPLY = "application/apply-patch+yaml"


class Cluster:
    """The Kubernetes calls swap and rollback make, through :class:`KubeClient`."""

    def __init__(self, kube: KubeClient, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace

    def has_csi_driver(self, name: str) -> bool:
        return any(d["metadata"]["name"] == name for d in self.kube.list_csi_drivers())

    def _read(self, what: str, fn: Callable[[], Any]) -> dict[str, Any] | None:
        found = self.kube.call(what, fn, missing_ok=True)
        return None if found is None else dict(self.kube._dict(found))

    def ensure(self, manifest: dict[str, Any], dry_run: bool) -> dict[str, Any]:
        """Server-side apply a claim object unless one of that name exists and differs."""
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        current = self._get_claim_object(kind, name)
        if current is not None:
            conflict = _conflict(current, manifest)
            if conflict:
                raise OperationFailedError(
                    f"{kind} {name} already exists and {conflict}; delete or rename it, then re-run"
                )
            return {"kind": kind, "name": name, "action": "exists", "manifest": manifest}
        if not dry_run:
            self._apply(manifest)
        return {
            "kind": kind,
            "name": name,
            "action": "would create" if dry_run else "created",
            "manifest": manifest,
        }

    def _get_claim_object(self, kind: str, name: str) -> dict[str, Any] | None:
        if kind == "PersistentVolume":
            return self._read(
                f"reading PersistentVolume {name}",
                lambda: self.kube.core.read_persistent_volume(name),
            )
        return self._read(
            f"reading PersistentVolumeClaim {name}",
            lambda: self.kube.core.read_namespaced_persistent_volume_claim(name, self.namespace),
        )

    def _apply(self, manifest: dict[str, Any]) -> None:
        name, core = manifest["metadata"]["name"], self.kube.core
        if manifest["kind"] == "PersistentVolume":
            self.kube.call(
                f"creating PersistentVolume {name}",
                lambda: core.patch_persistent_volume(
                    name, manifest, field_manager=FIELD_MANAGER, force=True, _content_type=APPLY
                ),
            )
        else:
            self.kube.call(
                f"creating PersistentVolumeClaim {name}",
                lambda: core.patch_namespaced_persistent_volume_claim(
                    name,
                    self.namespace,
                    manifest,
                    field_manager=FIELD_MANAGER,
                    force=True,
                    _content_type=APPLY,
                ),
            )

    def require_claim(self, name: str) -> dict[str, Any]:
        if self._get_claim_object("PersistentVolumeClaim", name) is None:
            raise OperationFailedError(
                f"PersistentVolumeClaim {name} (the run's target) does not exist in {self.namespace}; "
                "was the plan run with this target?"
            )
        return {"kind": "PersistentVolumeClaim", "name": name, "action": "exists"}

    def get_helmrelease(self, name: str) -> dict[str, Any] | None:
        return read_release(self.kube, self.namespace, name)

    def patch_helmrelease(self, name: str, body: dict[str, Any]) -> None:
        patch_release(self.kube, self.namespace, name, body)

    def get_configmap(self, name: str) -> dict[str, Any] | None:
        return self._read(
            f"reading ConfigMap {name}",
            lambda: self.kube.core.read_namespaced_config_map(name, self.namespace),
        )

    def patch_configmap(self, name: str, body: dict[str, Any]) -> None:
        self.kube.call(
            f"patching ConfigMap {name}",
            lambda: self.kube.core.patch_namespaced_config_map(name, self.namespace, body),
        )

    def restore(self, patch: dict[str, Any], dry_run: bool) -> str:
        """Put a recorded in-cluster patch back; '' when done, else why it was left alone."""
        if patch["target"] == "HelmRelease":
            return self._restore_helmrelease(patch, dry_run)
        return self._restore_configmap(patch, dry_run)

    def _restore_helmrelease(self, patch: dict[str, Any], dry_run: bool) -> str:
        found = self.get_helmrelease(patch["name"])
        path = patch["path"].split(".")
        current = _get_path(found or {}, path)
        if current not in (patch["new"], patch["old"]):
            return f"HelmRelease {patch['name']} {patch['path']} is now {current!r}, not {patch['new']!r}: changed since the swap, left alone"
        if current == patch["new"] and not dry_run:
            self.patch_helmrelease(patch["name"], merge_patch([(path, patch["old"])]))
        return ""

    def _restore_configmap(self, patch: dict[str, Any], dry_run: bool) -> str:
        name, key = patch["name"], patch["key"]
        text = ((self.get_configmap(name) or {}).get("data") or {}).get(key)
        if text is None:
            return f"ConfigMap {name} has no key {key} any more; nothing to restore"
        if "oldText" not in patch:  # a targetPath value: the whole key is the claim
            if text not in (patch["new"], patch["old"]):
                return f"ConfigMap {name} {key} is now {text!r}: changed since the swap, left alone"
            restored = patch["old"]
        else:
            rewrite = restore_claims(text, [Change.from_dict(patch)], f"ConfigMap {name} ({key})")
            if not rewrite.changes:
                return "; ".join(rewrite.notes)
            restored = rewrite.text
        if restored != text and not dry_run:
            self.patch_configmap(name, {"data": {key: restored}})
        return ""

    def get_workload(self, kind: str, name: str) -> dict[str, Any] | None:
        return read_workload(self.kube, self.namespace, kind, name)

    def scale(self, kind: str, name: str, replicas: int) -> None:
        scale(self.kube, self.namespace, kind, name, replicas)

    def wait_for(
        self, kind: str, name: str, done: Callable[[dict[str, Any]], bool], deadline: float
    ) -> dict[str, Any] | None:
        """Watch a workload until ``done(it)`` or the deadline; returns its last state."""
        return wait_for_workload(self.kube, self.namespace, kind, name, done, deadline)

    def pod_events(self, workload: dict[str, Any]) -> list[str]:
        """Events of the workload's pods that are not Ready (or of the workload, without pods)."""
        selector = selector_of(workload)
        pods = self.kube._items(
            "listing pods",
            lambda: self.kube.core.list_namespaced_pod(self.namespace, label_selector=selector),
        )
        subjects = [("Pod", p["metadata"]["name"]) for p in pods if not _pod_ready(p)]
        if not pods:
            subjects = [(workload.get("kind") or "Deployment", workload["metadata"]["name"])]
        lines = []
        for kind, name in subjects:
            events = self.events_of(kind, name)
            lines += _event_lines(kind, name, events)
            if not events:
                lines.append(f"{kind} {name}: no events")
        return lines

    def events_of(self, kind: str, name: str) -> list[dict[str, Any]]:
        selector = f"involvedObject.kind={kind},involvedObject.name={name}"
        return self.kube._items(
            f"listing the events of {kind} {name}",
            lambda: self.kube.core.list_namespaced_event(self.namespace, field_selector=selector),
        )


def _event_lines(kind: str, name: str, events: list[dict[str, Any]]) -> list[str]:
    """One line per distinct event, oldest first.

    On a real cluster a recurring event is stored as more than one object: kube-scheduler and the
    kubelet (events.k8s.io recorders) write its first occurrence, then its repeats as another
    object carrying ``series``. Listed as they came, the same line was printed twice or more."""
    lines: dict[str, None] = {}
    for event in sorted(events, key=_event_time):
        reason = f"{event.get('type', '')} {event.get('reason', '')}"
        lines[f"{kind} {name}: {reason}: {event.get('message', '')}".strip()] = None
    return list(lines)


def _event_time(event: dict[str, Any]) -> str:
    """When an event first happened, as an RFC 3339 string ('' when it does not say)."""
    for key in ("eventTime", "firstTimestamp", "lastTimestamp"):
        if event.get(key):
            return str(event[key])
    return str((event.get("metadata") or {}).get("creationTimestamp") or "")


def _pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _get_path(obj: Any, path: list[str]) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _conflict(current: dict[str, Any], wanted: dict[str, Any]) -> str:
    """Why an existing PV/PVC is not the one migrator would create ('' when it is)."""
    spec, want = current.get("spec") or {}, wanted["spec"]
    if wanted["kind"] == "PersistentVolume":
        csi, want_csi = spec.get("csi") or {}, want["csi"]
        if (
            csi.get("driver") != want_csi["driver"]
            or (csi.get("volumeAttributes") or {}).get("path")
            != want_csi["volumeAttributes"]["path"]
        ):
            return f"serves {csi.get('driver')}:{(csi.get('volumeAttributes') or {}).get('path')}, not {want_csi['driver']}:{want_csi['volumeAttributes']['path']}"
        ref = spec.get("claimRef") or {}
        if ref and (ref.get("namespace"), ref.get("name")) != (
            want["claimRef"]["namespace"],
            want["claimRef"]["name"],
        ):
            return f"is bound to {ref.get('namespace')}/{ref.get('name')}"
        return ""
    if spec.get("volumeName") and spec.get("volumeName") != want["volumeName"]:
        return f"is bound to PersistentVolume {spec.get('volumeName')}, not {want['volumeName']}"
    return ""
