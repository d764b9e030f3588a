"""The thread-safe object store: versioned objects, watch history, pod logs, garbage collection.

Every write goes through the same path whoever makes it (HTTP handler, ``seed``, controllers,
controller threads): admission (metadata, defaults, immutability), validation, one global
``resourceVersion`` bump, an event in the watch history and a ``notify_all`` on ``condition``.
Readers get deep copies, so nothing outside can change stored state without an event.
"""

from __future__ import annotations

import bisect
import copy
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from . import errors
from .admission import prepare_create, prepare_update
from .apply import transfer_ownership
from .pod_security import enforced_level, forbidden_message, violations
from .resources import ResourceRegistry, ResourceType
from .validation import validate_object

Obj = dict[str, Any]
Mutation = Callable[[Obj | None], Obj]
ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"
BACKGROUND, FOREGROUND, ORPHAN = "Background", "Foreground", "Orphan"
# batch/v1 Jobs still orphan their pods unless told otherwise (the apiserver warns about it).
ORPHAN_BY_DEFAULT = frozenset({("batch", "jobs")})
JOB_ORPHAN_WARNING = ("child pods are preserved by default when jobs are deleted; set "
                      "propagationPolicy=Background to remove them or set "
                      "propagationPolicy=Orphan to suppress this warning")


@dataclass(frozen=True)
class WatchEvent:
    """One stored change. ``old`` is the previous state of a MODIFIED object."""

    resource_version: int
    type: str
    resource: ResourceType
    object: Obj
    old: Obj | None = None


@dataclass(frozen=True)
class DeleteOptions:
    """``DeleteOptions``: propagation policy, preconditions and dry run."""

    propagation: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    dry_run: bool = False


def _meta(obj: Obj) -> Obj:
    metadata: Obj = obj.setdefault("metadata", {})
    return metadata


def _without_volatile(obj: Obj) -> Obj:
    """``obj`` minus fields that change on every write, to detect no-op updates."""
    metadata = {k: v for k, v in obj.get("metadata", {}).items()
                if k not in ("resourceVersion", "managedFields")}
    fields = [{k: v for k, v in e.items() if k != "time"}
              for e in obj.get("metadata", {}).get("managedFields") or []]
    return {**obj, "metadata": {**metadata, "managedFields": fields}}


class ObjectStore:
    """All objects of all resources, keyed by (group, plural) then (namespace, name)."""

    def __init__(self, registry: ResourceRegistry, history_limit: int = 20_000) -> None:
        self.registry = registry
        self.condition = threading.Condition(threading.RLock())
        self.closed = False
        self._objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {}
        self._uids: dict[str, tuple[ResourceType, str, str]] = {}
        self._rv = 0
        self._history: list[WatchEvent] = []
        self._history_limit = history_limit
        self._expired_through = 0
        self._logs: dict[tuple[str, str, str | None], str] = {}
        self.log_version = 0

    # --- reading -------------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        """The global resourceVersion of the last write."""
        with self.condition:
            return self._rv

    def get(self, resource: ResourceType, namespace: str | None, name: str) -> Obj | None:
        """A copy of one object, or None."""
        with self.condition:
            found = self._bucket(resource).get((namespace or "", name))
            return copy.deepcopy(found) if found is not None else None

    def list_objects(self, resource: ResourceType,
                     namespace: str | None = None) -> tuple[list[Obj], int]:
        """Copies of all objects (of one namespace, if given) sorted by namespace and name, and
        the resourceVersion they are consistent with."""
        with self.condition:
            items = [copy.deepcopy(obj) for (ns, _), obj in sorted(self._bucket(resource).items())
                     if namespace is None or ns == namespace]
            return items, self._rv

    def namespace_exists(self, namespace: str) -> bool:
        """Whether a Namespace object with this name is stored."""
        with self.condition:
            return ("", namespace) in self._bucket(self.registry.by_kind("v1", "Namespace"))

    def owned_by(self, uid: str, resource: ResourceType | None = None) -> list[Obj]:
        """Copies of objects with an ownerReference to ``uid`` (of one resource, if given)."""
        with self.condition:
            buckets = [resource] if resource else list(self.registry)
            return [copy.deepcopy(obj) for r in buckets for _, obj in
                    sorted(self._bucket(r).items()) if _references(obj, uid)]

    def _bucket(self, resource: ResourceType) -> dict[tuple[str, str], Obj]:
        return self._objects.setdefault(resource.key, {})

    # --- writing -------------------------------------------------------------------------------

    def create(self, resource: ResourceType, obj: Obj, *, namespace: str | None = None,
               dry_run: bool = False, seed: bool = False) -> Obj:
        """Admit, validate and store a new object; returns what was stored.

        ``seed`` keeps the given status, uid and creationTimestamp. Raises ApiError (404 for a
        missing namespace, 409 AlreadyExists, 422 Invalid).
        """
        given_namespace = (obj.get("metadata") or {}).get("namespace")
        namespace = (namespace or given_namespace) if resource.namespaced else None
        with self.condition:
            if resource.namespaced and not self.namespace_exists(namespace or ""):
                raise errors.namespace_not_found(namespace or "")
            new = prepare_create(resource, obj, namespace)
            if seed:
                _keep_seeded_fields(obj, new)
            validate_object(resource, new)
            if resource.kind == "Pod" and not resource.group and not seed:
                self._admit_pod_security(new, (obj.get("metadata") or {}))
            new["apiVersion"] = resource.api_version()
            if (namespace or "", _meta(new)["name"]) in self._bucket(resource):
                raise errors.already_exists(resource, _meta(new)["name"])
            return new if dry_run else self._commit(resource, new, ADDED)

    def _admit_pod_security(self, pod: Obj, given: Obj) -> None:
        """Pod Security admission: the namespace's ``enforce`` level rejects a violating pod
        with 403 Forbidden (named as the request named it: a generateName prefix stays one)."""
        namespace = self.get(self.registry.by_kind("v1", "Namespace"), None,
                             _meta(pod)["namespace"])
        level = enforced_level(namespace)
        if level == "privileged":
            return
        problems = violations(level, _meta(pod), pod.get("spec") or {})
        if problems:
            name = given.get("name") or given.get("generateName") or ""
            raise errors.ApiError(403, "Forbidden", forbidden_message(name, level, problems),
                                  {"name": name, "kind": "pods"})

    def update(self, resource: ResourceType, namespace: str | None, name: str, mutate: Mutation,
               *, subresource: str | None = None, dry_run: bool = False,
               allow_create: bool = False, applied: bool = False) -> tuple[Obj, bool]:
        """Read-modify-write one object atomically: ``mutate(current or None)`` returns the
        desired object. Returns (stored object, created). A ``metadata.resourceVersion`` in the
        desired object must match the current one (409 Conflict otherwise). ``applied`` marks
        server-side apply, whose managedFields are already final."""
        with self.condition:
            current = self.get(resource, namespace, name)
            if current is None and not allow_create:
                raise errors.not_found(resource, name)
            desired = mutate(copy.deepcopy(current) if current else None)
            if current is None:
                return self.create(resource, desired, namespace=namespace, dry_run=dry_run), True
            return self._update_existing(resource, current, desired, subresource, dry_run,
                                         applied), False

    def replace(self, resource: ResourceType, obj: Obj, *, subresource: str | None = None,
                dry_run: bool = False) -> Obj:
        """PUT semantics: replace the object named by ``obj``'s metadata."""
        metadata = obj.get("metadata") or {}
        stored, _ = self.update(resource, metadata.get("namespace"), metadata.get("name", ""),
                                lambda _: obj, subresource=subresource, dry_run=dry_run)
        return stored

    def _update_existing(self, resource: ResourceType, current: Obj, desired: Obj,
                         subresource: str | None, dry_run: bool, applied: bool) -> Obj:
        name = _meta(current)["name"]
        wanted_rv = _meta(desired).get("resourceVersion")
        if wanted_rv and wanted_rv != _meta(current)["resourceVersion"]:
            raise errors.conflict(resource, name)
        new = prepare_update(resource, current, desired, subresource)
        validate_object(resource, new)
        new["apiVersion"] = resource.api_version()
        if not applied:
            transfer_ownership(current, new)
        _meta(new)["resourceVersion"] = _meta(current)["resourceVersion"]
        if dry_run or _without_volatile(new) == _without_volatile(current):
            return current if not dry_run else new
        return self._commit(resource, new, MODIFIED, old=current)

    def delete(self, resource: ResourceType, namespace: str | None, name: str,
               options: DeleteOptions = DeleteOptions()) -> Obj:
        """Delete one object and collect its dependents per the propagation policy."""
        with self.condition:
            current = self.get(resource, namespace, name)
            if current is None:
                raise errors.not_found(resource, name)
            _check_preconditions(resource, current, options)
            if options.dry_run:
                return current
            policy = options.propagation or (
                ORPHAN if resource.key in ORPHAN_BY_DEFAULT else BACKGROUND)
            return self._delete_tree(resource, current, policy)

    def _delete_tree(self, resource: ResourceType, obj: Obj, policy: str) -> Obj:
        if resource.kind == "Namespace":
            self._empty_namespace(_meta(obj)["name"])
        deleted = self._commit(resource, obj, DELETED)
        uid = _meta(obj)["uid"]
        for dependent_resource, dependent in self._dependents(uid):
            if _meta(dependent)["uid"] not in self._uids:
                continue  # already collected through another owner
            refs = [r for r in _meta(dependent).get("ownerReferences", []) if r.get("uid") != uid]
            alive = [r for r in refs if r.get("uid") in self._uids]
            if policy == ORPHAN or alive:
                _meta(dependent)["ownerReferences"] = refs
                self._commit(dependent_resource, dependent, MODIFIED, old=self.get(
                    dependent_resource, _meta(dependent).get("namespace"),
                    _meta(dependent)["name"]))
            else:
                self._delete_tree(dependent_resource, dependent, BACKGROUND)
        return deleted

    def _dependents(self, uid: str) -> list[tuple[ResourceType, Obj]]:
        return [(r, copy.deepcopy(obj)) for r in self.registry
                for _, obj in sorted(self._bucket(r).items()) if _references(obj, uid)]

    def _empty_namespace(self, namespace: str) -> None:
        for resource in self.registry:
            if resource.namespaced:
                for (ns, _), obj in sorted(self._bucket(resource).items()):
                    if ns == namespace and _meta(obj)["uid"] in self._uids:
                        self._delete_tree(resource, copy.deepcopy(obj), BACKGROUND)
        for key in [k for k in self._logs if k[0] == namespace]:
            del self._logs[key]

    def _commit(self, resource: ResourceType, obj: Obj, event_type: str,
                old: Obj | None = None) -> Obj:
        self._rv += 1
        obj = copy.deepcopy(obj)
        metadata = _meta(obj)
        metadata["resourceVersion"] = str(self._rv)
        key = (metadata.get("namespace") or "", metadata["name"])
        if event_type == DELETED:
            self._bucket(resource).pop(key, None)
            self._uids.pop(metadata["uid"], None)
            if resource.kind == "Pod":
                self._drop_logs(key[0], key[1])
        else:
            self._bucket(resource)[key] = obj
            self._uids[metadata["uid"]] = (resource, key[0], key[1])
        self._record(WatchEvent(self._rv, event_type, resource, obj, old))
        return copy.deepcopy(obj)

    # --- watch history -------------------------------------------------------------------------

    def _record(self, event: WatchEvent) -> None:
        self._history.append(event)
        if len(self._history) > self._history_limit:
            half = len(self._history) // 2
            self._expired_through = self._history[half - 1].resource_version
            del self._history[:half]
        self.condition.notify_all()

    def events_after(self, resource_version: int) -> list[WatchEvent]:
        """Events newer than ``resource_version``; raises 410 Gone if history no longer has them."""
        with self.condition:
            if resource_version < self._expired_through:
                raise errors.gone(f"too old resource version: {resource_version} "
                                  f"({self._expired_through + 1})")
            start = bisect.bisect_right(self._history, resource_version,
                                        key=lambda e: e.resource_version)
            return self._history[start:]

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` (checked after every change) is true or the store closes."""
        with self.condition:
            return self.condition.wait_for(lambda: self.closed or predicate(), timeout) and (
                predicate())

    def close(self) -> None:
        """Wake every waiter (watches, log followers, controllers) so they can finish."""
        with self.condition:
            self.closed = True
            self.condition.notify_all()

    # --- pod logs ------------------------------------------------------------------------------

    def set_log(self, namespace: str, pod: str, text: str, container: str | None = None) -> None:
        """Replace the log of a pod (or of one of its containers)."""
        with self.condition:
            self._logs[(namespace, pod, container)] = text
            self._log_changed()

    def append_log(self, namespace: str, pod: str, text: str,
                   container: str | None = None) -> None:
        """Append to the log of a pod (or of one of its containers); wakes followers."""
        with self.condition:
            key = (namespace, pod, container)
            self._logs[key] = self._logs.get(key, "") + text
            self._log_changed()

    def read_log(self, namespace: str, pod: str, container: str | None) -> str | None:
        """The container's log, else the pod-wide log, else None."""
        with self.condition:
            for key in ((namespace, pod, container), (namespace, pod, None)):
                if key in self._logs:
                    return self._logs[key]
            return None

    def _log_changed(self) -> None:
        self.log_version += 1
        self.condition.notify_all()

    def _drop_logs(self, namespace: str, pod: str) -> None:
        for key in [k for k in self._logs if k[:2] == (namespace, pod)]:
            del self._logs[key]


def _references(obj: Obj, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in _meta(obj).get("ownerReferences") or [])


def _keep_seeded_fields(given: Obj, new: Obj) -> None:
    if "status" in given:
        new["status"] = copy.deepcopy(given["status"])
    for key in ("uid", "creationTimestamp"):
        if key in given.get("metadata", {}):
            new["metadata"][key] = given["metadata"][key]


def _check_preconditions(resource: ResourceType, current: Obj, options: DeleteOptions) -> None:
    metadata = _meta(current)
    if options.uid and options.uid != metadata["uid"]:
        raise errors.conflict(resource, metadata["name"], "Precondition failed: UID in "
                              f"precondition: {options.uid}, UID in object meta: {metadata['uid']}")
    if options.resource_version and options.resource_version != metadata["resourceVersion"]:
        raise errors.conflict(resource, metadata["name"], "Precondition failed: ResourceVersion "
                              f"in precondition: {options.resource_version}, ResourceVersion in "
                              f"object meta: {metadata['resourceVersion']}")


def seed_order(objects: Iterable[Obj]) -> list[Obj]:
    """Namespaces first, then everything else in the given order."""
    objects = list(objects)
    return ([o for o in objects if o.get("kind") == "Namespace"]
            + [o for o in objects if o.get("kind") != "Namespace"])
