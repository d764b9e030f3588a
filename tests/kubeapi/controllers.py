"""Pluggable controllers, and the Deployment / ReplicaSet / StatefulSet ones we ship.

A controller is level-based: ``reconcile(store)`` looks at the whole store and writes only what
differs from the desired state, so running it again changes nothing. The ControllerManager runs
every controller in one background thread whenever the store's resourceVersion moves (after API
writes, seeds, and writes by other controllers), until a pass writes nothing.

Long-running work (a Job controller that runs each Job's pod commands on this host, with PVCs
mapped to directories) belongs in a thread started with ``Controller.spawn``: it reports through
the store like any client (``store.update(..., subresource="status")``, ``store.append_log``),
which emits watch events and wakes the manager, and it stops when ``self.stopping`` is set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import zlib
from collections.abc import Callable
from typing import Any

from tests.kubelet.pods import running_pod_status

from .admission import now, random_suffix
from .errors import ApiError
from .resources import ResourceType
from .store import ObjectStore

Obj = dict[str, Any]
log = logging.getLogger(__name__)
TRANSIENT_CODES = (404, 409)
MAX_TRANSIENT_STREAK = 50  # passes in a row with 404/409 before it counts as a real failure


class Controller:
    """Base class: override ``reconcile``; use ``spawn`` for background work."""

    name = "controller"

    def __init__(self) -> None:
        self.manager: ControllerManager | None = None
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def reconcile(self, store: ObjectStore) -> None:
        """Bring the store one step closer to the desired state; must be idempotent."""
        raise NotImplementedError

    def attach(self, manager: ControllerManager) -> None:
        """Called once when the controller is added to a running manager."""
        self.manager = manager

    def spawn(self, target: Callable[[], None], name: str | None = None) -> threading.Thread:
        """Run ``target`` in a daemon thread; its exceptions land in ``manager.errors``."""
        def run() -> None:
            try:
                target()
            except Exception as error:  # reported through settle(), not lost in a thread
                log.exception("%s: background work failed", self.name)
                if self.manager is not None:
                    self.manager.errors.append(error)

        thread = threading.Thread(target=run, name=name or f"{self.name}-worker", daemon=True)
        self._threads.append(thread)
        thread.start()
        return thread

    def stop(self, timeout: float = 5.0) -> None:
        """Ask background threads to finish (``self.stopping``) and wait for them."""
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout)


class ControllerManager:
    """Runs controllers in one thread after every store change; ``settle`` waits for quiet."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.controllers: list[Controller] = []
        self.errors: list[BaseException] = []
        self._reconciled_rv = -1
        self._busy = False
        self._kicked = False
        self._stopping = False
        self._transient_streak = 0
        self._thread = threading.Thread(target=self._loop, name="kubeapi-controllers",
                                        daemon=True)

    def add(self, controller: Controller) -> None:
        """Register a controller; it runs on the next pass."""
        controller.attach(self)
        with self.store.condition:
            self.controllers.append(controller)
            self.kick()

    def kick(self) -> None:
        """Request a reconcile pass even if nothing was written."""
        with self.store.condition:
            self._kicked = True
            self.store.condition.notify_all()

    def start(self) -> None:
        """Start the manager thread."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the manager thread and every controller's background work."""
        with self.store.condition:
            self._stopping = True
            self.store.condition.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        for controller in self.controllers:
            controller.stop(timeout)

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until every write so far has been reconciled; raise the first controller error.

        Raises TimeoutError if controllers keep writing (a non-idempotent controller) or are
        still busy after ``timeout`` seconds.
        """
        if not self.store.wait_for(self._idle, timeout):
            raise TimeoutError(f"controllers did not settle within {timeout}s")
        if self.errors:
            raise RuntimeError(f"controller failed: {self.errors[0]!r}") from self.errors[0]

    def _idle(self) -> bool:
        return not self._busy and not self._kicked and (
            self._reconciled_rv >= self.store.resource_version)

    def _wait_for_work(self) -> int | None:
        condition = self.store.condition
        with condition:
            condition.wait_for(lambda: self._stopping or self.store.closed or self._kicked
                               or self.store.resource_version > self._reconciled_rv)
            if self._stopping or self.store.closed:
                return None
            self._kicked, self._busy = False, True
            return self.store.resource_version

    def _loop(self) -> None:
        while (target := self._wait_for_work()) is not None:
            retry = [self._run_one(c) for c in list(self.controllers)]
            self._transient_streak = self._transient_streak + 1 if any(retry) else 0
            if self._transient_streak >= MAX_TRANSIENT_STREAK:
                self.errors.append(RuntimeError("controllers keep failing with 404/409"))
            elif any(retry):
                self.kick()
            with self.store.condition:
                self._reconciled_rv, self._busy = target, False
                self.store.condition.notify_all()

    def _run_one(self, controller: Controller) -> bool:
        """Run one controller; True if it hit a transient error (a race with another writer)."""
        try:
            controller.reconcile(self.store)
        except ApiError as error:
            if error.code in TRANSIENT_CODES:
                log.debug("%s: transient %s, retrying", controller.name, error)
                return True
            self.errors.append(error)
        except Exception as error:
            log.exception("%s: reconcile failed", controller.name)
            self.errors.append(error)
        return False


# --- helpers for controllers ---------------------------------------------------------------------

def owner_reference(owner: Obj, resource: ResourceType) -> Obj:
    """A controller ownerReference pointing at ``owner``."""
    metadata = owner["metadata"]
    return {"apiVersion": resource.api_version(), "kind": resource.kind,
            "name": metadata["name"], "uid": metadata["uid"], "controller": True,
            "blockOwnerDeletion": True}


def controlled_by(store: ObjectStore, owner: Obj, resource: ResourceType) -> list[Obj]:
    """Objects of ``resource`` whose controller ownerReference is ``owner``."""
    uid = owner["metadata"]["uid"]
    return [o for o in store.owned_by(uid, resource) if any(
        r.get("uid") == uid and r.get("controller") for r in o["metadata"]["ownerReferences"])]


def set_condition(conditions: list[Obj], kind: str, status: str, reason: str,
                  message: str, *, with_update_time: bool = False) -> list[Obj]:
    """Conditions with ``kind`` set; timestamps stay put when nothing changed (idempotence)."""
    existing = next((c for c in conditions if c.get("type") == kind), None)
    wanted = {"type": kind, "status": status, "reason": reason, "message": message}
    if existing and all(existing.get(k) == v for k, v in wanted.items()):
        return conditions
    stamp = now()
    wanted["lastTransitionTime"] = (existing or {}).get("lastTransitionTime", stamp) if (
        existing and existing.get("status") == status) else stamp
    if with_update_time:
        wanted["lastUpdateTime"] = stamp
    return [c for c in conditions if c.get("type") != kind] + [wanted]


def template_hash(template: Any) -> str:
    """A stable 10-character hash of a pod template (like ``pod-template-hash``)."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(alphabet[b % len(alphabet)] for b in digest[:10])


def pick_node(store: ObjectStore, pod_name: str, spec: Obj | None = None) -> str | None:
    """A schedulable Node for a pod (stable per name) that matches its ``nodeSelector``, as the
    scheduler would pick; None when no Node fits (or there are none)."""
    nodes, _ = store.list_objects(store.registry.by_kind("v1", "Node"))
    selector = (spec or {}).get("nodeSelector") or {}
    names = [n["metadata"]["name"] for n in nodes
             if not (n.get("spec") or {}).get("unschedulable")
             and all((n["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())]
    return names[zlib.crc32(pod_name.encode()) % len(names)] if names else None


def is_ready(pod: Obj) -> bool:
    """Whether a pod is Running with condition Ready=True."""
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or [])


_REFUSALS: dict[str, str] = {}  # owner uid -> the last FailedCreate message recorded


def start_pod(store: ObjectStore, pod: Obj, owner: Obj | None = None) -> Obj | None:
    """Create ``pod`` (Pending, as the API does) and mark it Running and Ready.

    When the apiserver refuses it (Pod Security admission), None, and a FailedCreate Warning
    event on ``owner`` as the real controllers record (once per distinct refusal).
    """
    pods = store.registry.by_kind("v1", "Pod")
    try:
        created = store.create(pods, pod)
    except ApiError as error:
        if error.code != 403 or owner is None:
            raise
        message = f"Error creating: {error.message}"
        why = error.message.split(" is forbidden: ", 1)[-1]  # pod names differ every time
        if _REFUSALS.get(owner["metadata"]["uid"]) != why:
            _REFUSALS[owner["metadata"]["uid"]] = why
            from .kubelet import record_event

            record_event(store, owner, "FailedCreate", message,
                         component=f"{owner['kind'].lower()}-controller", warning=True)
        return None
    metadata = created["metadata"]
    stored, _ = store.update(pods, metadata["namespace"], metadata["name"],
                             lambda current: {**(current or {}),
                                              "status": running_pod_status(current or created)},
                             subresource="status")
    return stored


def pod_from_template(owner: Obj, resource: ResourceType, template: Obj, name: str,
                      store: ObjectStore) -> Obj:
    """A Pod built from a pod template, owned by ``owner``, bound to a Node if there are any."""
    metadata = template.get("metadata") or {}
    spec = json.loads(json.dumps(template.get("spec") or {}))
    node = pick_node(store, name, spec)
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": name, "namespace": owner["metadata"]["namespace"],
        "labels": dict(metadata.get("labels") or {}),
        "annotations": dict(metadata.get("annotations") or {}),
        "ownerReferences": [owner_reference(owner, resource)]}, "spec": spec}


def _active(pods: list[Obj]) -> list[Obj]:
    return [p for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]


def _write_status(store: ObjectStore, resource: ResourceType, obj: Obj, status: Obj) -> None:
    if obj.get("status") == status:
        return
    metadata = obj["metadata"]
    store.update(resource, metadata["namespace"], metadata["name"],
                 lambda current: {**(current or obj), "status": status}, subresource="status")


def _scale_to(store: ObjectStore, resource: ResourceType, obj: Obj, replicas: int) -> None:
    if obj["spec"].get("replicas") == replicas:
        return
    metadata = obj["metadata"]

    def scaled(current: Obj | None) -> Obj:
        current = current or obj
        return {**current, "spec": {**current["spec"], "replicas": replicas}}

    store.update(resource, metadata["namespace"], metadata["name"], scaled)


def _nonzero(**counts: int) -> Obj:
    """Status counters, leaving zeros out as the API's ``omitempty`` does."""
    return {k: v for k, v in counts.items() if v}


# --- the shipped controllers ---------------------------------------------------------------------

class ReplicaSetController(Controller):
    """Keeps ``spec.replicas`` running, ready pods per ReplicaSet and reports status."""

    name = "replicaset-controller"

    def reconcile(self, store: ObjectStore) -> None:
        """Create or delete pods for every ReplicaSet, then update its status."""
        resource = store.registry.by_kind("apps/v1", "ReplicaSet")
        for replica_set in store.list_objects(resource)[0]:
            self._sync(store, resource, replica_set)

    def _sync(self, store: ObjectStore, resource: ResourceType, replica_set: Obj) -> None:
        pods_resource = store.registry.by_kind("v1", "Pod")
        pods = sorted(_active(controlled_by(store, replica_set, pods_resource)),
                      key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]))
        wanted = replica_set["spec"].get("replicas", 1)
        name = replica_set["metadata"]["name"]
        for _ in range(wanted - len(pods)):
            pod = pod_from_template(replica_set, resource, replica_set["spec"]["template"],
                                    f"{name}-{random_suffix()}", store)
            started = start_pod(store, pod, replica_set)
            if started is None:
                break
            pods.append(started)
        for pod in pods[wanted:][::-1]:
            store.delete(pods_resource, pod["metadata"]["namespace"], pod["metadata"]["name"])
        pods = pods[:wanted]
        ready = sum(is_ready(p) for p in pods)
        status = {"replicas": len(pods), **_nonzero(
            fullyLabeledReplicas=len(pods), readyReplicas=ready, availableReplicas=ready),
            "observedGeneration": replica_set["metadata"].get("generation", 1)}
        _write_status(store, resource, replica_set, status)


class DeploymentController(Controller):
    """Rolls each Deployment onto one ReplicaSet per pod template and aggregates status.

    Template changes switch at once: the new ReplicaSet gets every replica, old ones go to 0.
    """

    name = "deployment-controller"

    def reconcile(self, store: ObjectStore) -> None:
        """Create/scale ReplicaSets for every Deployment, then update its status."""
        resource = store.registry.by_kind("apps/v1", "Deployment")
        for deployment in store.list_objects(resource)[0]:
            self._sync(store, resource, deployment)

    def _sync(self, store: ObjectStore, resource: ResourceType, deployment: Obj) -> None:
        rs_resource = store.registry.by_kind("apps/v1", "ReplicaSet")
        spec = deployment["spec"]
        wanted = spec.get("replicas", 1)
        template_id = template_hash(spec["template"])
        owned = controlled_by(store, deployment, rs_resource)
        current = next((rs for rs in owned if rs["metadata"].get("labels", {}).get(
            "pod-template-hash") == template_id), None)
        if current is None:
            current = store.create(rs_resource, self._replica_set(deployment, template_id,
                                                                  len(owned) + 1))
        _scale_to(store, rs_resource, current, wanted)
        for old in owned:
            if old["metadata"]["uid"] != current["metadata"]["uid"]:
                _scale_to(store, rs_resource, old, 0)
        self._report(store, resource, deployment, controlled_by(store, deployment, rs_resource),
                     current)

    @staticmethod
    def _replica_set(deployment: Obj, template_id: str, revision: int) -> Obj:
        spec, metadata = deployment["spec"], deployment["metadata"]
        template = json.loads(json.dumps(spec["template"]))
        template.setdefault("metadata", {}).setdefault("labels", {})[
            "pod-template-hash"] = template_id
        selector = json.loads(json.dumps(spec["selector"]))
        selector.setdefault("matchLabels", {})["pod-template-hash"] = template_id
        resource_ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": metadata["name"],
                        "uid": metadata["uid"], "controller": True, "blockOwnerDeletion": True}
        return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {
            "name": f"{metadata['name']}-{template_id}", "namespace": metadata["namespace"],
            "labels": template["metadata"]["labels"],
            "annotations": {"deployment.kubernetes.io/revision": str(revision)},
            "ownerReferences": [resource_ref]},
            "spec": {"replicas": spec["replicas"], "selector": selector, "template": template}}

    @staticmethod
    def _report(store: ObjectStore, resource: ResourceType, deployment: Obj,
                replica_sets: list[Obj], current: Obj) -> None:
        counts = [rs.get("status") or {} for rs in replica_sets]
        available = sum(c.get("availableReplicas", 0) for c in counts)
        wanted = deployment["spec"].get("replicas", 1)
        conditions = deployment.get("status", {}).get("conditions", [])
        conditions = set_condition(
            conditions, "Available", "True" if available >= wanted else "False",
            "MinimumReplicasAvailable" if available >= wanted else "MinimumReplicasUnavailable",
            "Deployment has minimum availability." if available >= wanted else
            "Deployment does not have minimum availability.", with_update_time=True)
        conditions = set_condition(
            conditions, "Progressing", "True", "NewReplicaSetAvailable",
            f'ReplicaSet "{current["metadata"]["name"]}" has successfully progressed.',
            with_update_time=True)
        status = {"observedGeneration": deployment["metadata"].get("generation", 1), **_nonzero(
            replicas=sum(c.get("replicas", 0) for c in counts),
            updatedReplicas=(current.get("status") or {}).get("replicas", 0),
            readyReplicas=sum(c.get("readyReplicas", 0) for c in counts),
            availableReplicas=available, unavailableReplicas=max(wanted - available, 0)),
            "conditions": conditions}
        _write_status(store, resource, deployment, status)


class StatefulSetController(Controller):
    """Keeps pods ``<name>-0..N-1`` (and their volumeClaimTemplate PVCs) per StatefulSet.

    Pods of an older template revision are replaced at once; PVCs are kept on scale-down and
    deletion unless ``persistentVolumeClaimRetentionPolicy.whenDeleted`` is Delete.
    """

    name = "statefulset-controller"

    def reconcile(self, store: ObjectStore) -> None:
        """Create, replace or delete pods for every StatefulSet, then update its status."""
        resource = store.registry.by_kind("apps/v1", "StatefulSet")
        for stateful_set in store.list_objects(resource)[0]:
            self._sync(store, resource, stateful_set)

    def _sync(self, store: ObjectStore, resource: ResourceType, stateful_set: Obj) -> None:
        pods_resource = store.registry.by_kind("v1", "Pod")
        name, namespace = stateful_set["metadata"]["name"], stateful_set["metadata"]["namespace"]
        wanted = stateful_set["spec"].get("replicas", 1)
        revision = f"{name}-{template_hash(stateful_set['spec']['template'])}"
        pods = {p["metadata"]["name"]: p for p in
                controlled_by(store, stateful_set, pods_resource)}
        for pod_name, pod in pods.items():
            ordinal = pod_name.rsplit("-", 1)[-1]
            outdated = pod["metadata"].get("labels", {}).get("controller-revision-hash") != (
                revision)
            if not ordinal.isdigit() or int(ordinal) >= wanted or outdated:
                store.delete(pods_resource, namespace, pod_name)
        for ordinal in range(wanted):
            pod_name = f"{name}-{ordinal}"
            existing = store.get(pods_resource, namespace, pod_name)
            if existing is None:
                self._ensure_claims(store, stateful_set, ordinal)
                start_pod(store, self._pod(store, resource, stateful_set, ordinal, revision),
                          stateful_set)
        self._report(store, resource, stateful_set, revision)

    @staticmethod
    def _claims(stateful_set: Obj, ordinal: int) -> list[Obj]:
        name = stateful_set["metadata"]["name"]
        labels = (stateful_set["spec"].get("selector") or {}).get("matchLabels") or {}
        policy = stateful_set["spec"].get("persistentVolumeClaimRetentionPolicy") or {}
        claims = []
        for template in stateful_set["spec"].get("volumeClaimTemplates") or []:
            metadata = {"name": f"{template['metadata']['name']}-{name}-{ordinal}",
                        "namespace": stateful_set["metadata"]["namespace"],
                        "labels": {**(template["metadata"].get("labels") or {}), **labels}}
            if policy.get("whenDeleted") == "Delete":
                metadata["ownerReferences"] = [{
                    "apiVersion": "apps/v1", "kind": "StatefulSet", "name": name,
                    "uid": stateful_set["metadata"]["uid"], "blockOwnerDeletion": True,
                    "controller": True}]
            claims.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                           "metadata": metadata, "spec": template.get("spec") or {}})
        return claims

    def _ensure_claims(self, store: ObjectStore, stateful_set: Obj, ordinal: int) -> None:
        claims_resource = store.registry.by_kind("v1", "PersistentVolumeClaim")
        for claim in self._claims(stateful_set, ordinal):
            if store.get(claims_resource, claim["metadata"]["namespace"],
                         claim["metadata"]["name"]) is None:
                store.create(claims_resource, claim)

    def _pod(self, store: ObjectStore, resource: ResourceType, stateful_set: Obj, ordinal: int,
             revision: str) -> Obj:
        name = stateful_set["metadata"]["name"]
        pod = pod_from_template(stateful_set, resource, stateful_set["spec"]["template"],
                                f"{name}-{ordinal}", store)
        pod["metadata"]["labels"].update({
            "statefulset.kubernetes.io/pod-name": f"{name}-{ordinal}",
            "apps.kubernetes.io/pod-index": str(ordinal), "controller-revision-hash": revision})
        spec = pod["spec"]
        spec["hostname"] = f"{name}-{ordinal}"
        if stateful_set["spec"].get("serviceName"):
            spec["subdomain"] = stateful_set["spec"]["serviceName"]
        volumes = spec.setdefault("volumes", [])
        for template, claim in zip(stateful_set["spec"].get("volumeClaimTemplates") or [],
                                   self._claims(stateful_set, ordinal), strict=True):
            if all(v.get("name") != template["metadata"]["name"] for v in volumes):
                volumes.append({"name": template["metadata"]["name"], "persistentVolumeClaim": {
                    "claimName": claim["metadata"]["name"]}})
        return pod

    @staticmethod
    def _report(store: ObjectStore, resource: ResourceType, stateful_set: Obj,
                revision: str) -> None:
        pods = _active(controlled_by(store, stateful_set, store.registry.by_kind("v1", "Pod")))
        ready = sum(is_ready(p) for p in pods)
        status = {"replicas": len(pods), **_nonzero(
            readyReplicas=ready, currentReplicas=len(pods), updatedReplicas=len(pods),
            availableReplicas=ready), "observedGeneration": stateful_set["metadata"].get(
            "generation", 1), "currentRevision": revision, "updateRevision": revision,
            "collisionCount": 0}
        _write_status(store, resource, stateful_set, status)


def default_controllers() -> list[Controller]:
    """The controllers a new server runs unless told otherwise."""
    return [DeploymentController(), ReplicaSetController(), StatefulSetController()]
