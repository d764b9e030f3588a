"""The HTTP side: one handler per request, dispatching on the RBAC verb of the path."""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import json
import logging
import select
import socket
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import yaml

from . import errors
from .admission import now
from .apply import server_side_apply
from .discovery import discovery_document
from .errors import ApiError
from .patching import PatchError, SchemaNode, json_patch, merge_patch, strategic_merge_patch
from .resources import ResourceRegistry, ResourceType
from .routing import ResourceRequest, parse_resource_path
from .selectors import label_selector_from_spec, parse_field_selector, parse_label_selector
from .store import (
    DELETED,
    JOB_ORPHAN_WARNING,
    MODIFIED,
    ORPHAN_BY_DEFAULT,
    DeleteOptions,
    ObjectStore,
    WatchEvent,
)
from .tables import to_table, wants_table

log = logging.getLogger(__name__)
Obj = dict[str, Any]

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH, APPLY_PATCH)
PROPAGATION_POLICIES = ("Foreground", "Background", "Orphan")
WAIT_SLICE = 0.5  # how often idle streams check for a vanished client


class ApiContext(Protocol):
    """What the handler needs from the server object."""

    store: ObjectStore
    registry: ResourceRegistry

    @property
    def address(self) -> str:
        """``host:port`` the server listens on."""
        ...

    def authorize(self, request: ResourceRequest) -> None:
        """Raise a 403 ApiError if the request is denied."""

    def record(self, method: str, request: ResourceRequest, query: dict[str, str],
               content_type: str) -> None:
        """Remember a resource request for test assertions."""


class KubeHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that knows its API and its open connections."""

    daemon_threads = False
    block_on_close = True
    request_queue_size = 128  # the default 5 drops SYNs when tests connect in parallel

    def __init__(self, api: ApiContext) -> None:
        self.api = api
        self.connections: set[socket.socket] = set()
        super().__init__(("127.0.0.1", 0), KubeRequestHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection and remember it, so ``close_connections`` can end it."""
        connection, address = super().get_request()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and the
        # client's delayed ACK add 40 ms to every response.
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connections.add(connection)
        return connection, address

    def shutdown_request(self, request: Any) -> None:
        """Forget a finished connection."""
        self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Unblock handler threads waiting on idle keep-alive connections."""
        for connection in list(self.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


def scale_of(obj: Obj) -> Obj:
    """The ``autoscaling/v1 Scale`` view of a workload."""
    metadata = obj["metadata"]
    selector = label_selector_from_spec(obj["spec"].get("selector"))
    return {"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {
        k: metadata[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                 "creationTimestamp") if k in metadata},
        "spec": {"replicas": obj["spec"].get("replicas", 1)},
        "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                   "selector": str(selector)}}


def with_scale(resource: ResourceType, current: Obj, scale: Obj) -> Obj:
    """``current`` with ``spec.replicas`` from ``scale`` (422 if negative)."""
    replicas = (scale.get("spec") or {}).get("replicas", 0)
    if not isinstance(replicas, int) or replicas < 0:
        name = current["metadata"]["name"]
        raise ApiError(422, "Invalid", f'Scale.autoscaling "{name}" is invalid: spec.replicas: '
                       f"Invalid value: {replicas}: must be greater than or equal to 0",
                       {"name": name, "group": "autoscaling", "kind": "Scale", "causes": [
                           {"reason": "FieldValueInvalid", "field": "spec.replicas",
                            "message": "must be greater than or equal to 0"}]})
    updated = copy.deepcopy(current)
    updated["spec"]["replicas"] = replicas
    wanted_rv = (scale.get("metadata") or {}).get("resourceVersion")
    updated["metadata"]["resourceVersion"] = wanted_rv or current["metadata"]["resourceVersion"]
    return updated


def _page(items: list[Obj], limit: str | None, token: str | None) -> tuple[list[Obj], Obj]:
    def key(obj: Obj) -> list[str]:
        return [obj["metadata"].get("namespace", ""), obj["metadata"]["name"]]

    if token:
        try:
            after = json.loads(base64.urlsafe_b64decode(token.encode()))
        except ValueError:
            raise errors.bad_request("continue key is not valid") from None
        items = [i for i in items if key(i) > after]
    if not limit or not limit.isdigit() or int(limit) <= 0 or int(limit) >= len(items):
        return items, {}
    page = items[:int(limit)]
    token = base64.urlsafe_b64encode(json.dumps(key(page[-1])).encode()).decode()
    return page, {"continue": token, "remainingItemCount": len(items) - len(page)}


def _newer(store: ObjectStore, resource_version: int) -> bool:
    return store.resource_version > resource_version


def _log_grew(store: ObjectStore, log_version: int, resource_version: int) -> bool:
    return store.log_version > log_version or store.resource_version > resource_version


class KubeRequestHandler(BaseHTTPRequestHandler):
    """Serves discovery and resource requests for a ``KubeHTTPServer``."""

    protocol_version = "HTTP/1.1"
    server: KubeHTTPServer

    def do_GET(self) -> None:
        """Handle GET."""
        self._handle("GET")

    def do_POST(self) -> None:
        """Handle POST."""
        self._handle("POST")

    def do_PUT(self) -> None:
        """Handle PUT."""
        self._handle("PUT")

    def do_PATCH(self) -> None:
        """Handle PATCH."""
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        """Handle DELETE."""
        self._handle("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        """Log requests at debug level instead of printing them."""
        log.debug("%s " + format, self.address_string(), *args)

    # --- plumbing ------------------------------------------------------------------------------

    def _handle(self, method: str) -> None:
        self._streaming = False
        self._warnings: list[str] = []
        try:
            self._dispatch(method)
        except ApiError as error:
            self._send_error(error)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as error:
            log.exception("kubeapi: %s %s failed", method, self.path)
            self._send_error(ApiError(500, "InternalError", f"Internal error occurred: {error}"))

    def _send_error(self, error: ApiError) -> None:
        if self._streaming:
            self.close_connection = True
            return
        self._send_json(error.code, error.status())

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        self.body = self._read_body()
        api = self.server.api
        request = parse_resource_path(api.registry, method, url.path, self._flag("watch"))
        if request is None:
            document = discovery_document(api.registry, url.path, api.address)
            if document is None or method != "GET":
                raise errors.route_not_found()
            self._send_json(200, document)
            return
        api.record(method, request, dict(self.query), self._content_type())
        api.authorize(request)
        getattr(self, f"_verb_{request.verb}")(request)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()

    def _param(self, name: str) -> str | None:
        return self.query.get(name)

    def _flag(self, name: str) -> bool:
        return (self._param(name) or "").lower() in ("true", "1")

    def _dry_run(self, from_body: Any = None) -> bool:
        values = [self._param("dryRun"), *list(from_body or [])]
        values = [v for v in values if v]
        if any(v != "All" for v in values):
            raise errors.bad_request(f'dryRun: Unsupported value: "{values[0]}": supported '
                                     'values: "All"')
        return bool(values)

    def _parsed_body(self) -> Any:
        try:
            if "yaml" in self._content_type():
                return yaml.safe_load(self.body.decode() or "null")
            return json.loads(self.body.decode() or "null")
        except (ValueError, yaml.YAMLError) as error:
            raise errors.bad_request(f"error decoding request body: {error}") from None

    def _send_bytes(self, code: int, data: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        for warning in self._warnings:
            self.send_header("Warning", f'299 - "{warning}"')
        self.end_headers()
        self.wfile.write(data)

    def _send_json(self, code: int, body: Any) -> None:
        self._send_bytes(code, json.dumps(body).encode(), "application/json")

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self._streaming = True
        self.close_connection = True

    def _send_chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _out(self, obj: Obj, request: ResourceRequest) -> Obj:
        obj["apiVersion"] = request.resource.api_version(request.version)
        return obj

    def _require(self, request: ResourceRequest) -> Obj:
        obj = self.server.api.store.get(request.resource, request.namespace, request.name or "")
        if obj is None:
            raise errors.not_found(request.resource, request.name or "")
        return obj

    def _body_object(self, request: ResourceRequest, kind: str | None = None,
                     api_version: str | None = None) -> Obj:
        body = self._parsed_body()
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON or YAML object")
        resource = request.resource
        kind = kind or resource.kind
        api_version = api_version or resource.api_version(request.version)
        body.setdefault("apiVersion", api_version)
        body.setdefault("kind", kind)
        allowed = {api_version} | ({resource.api_version(v) for v in resource.versions}
                                   if kind == resource.kind else set())
        if body["apiVersion"] not in allowed or body["kind"] != kind:
            raise errors.bad_request(f"the API version in the data ({body['apiVersion']}) and "
                                     f"kind ({body['kind']}) do not match the expected "
                                     f"{api_version} {kind}")
        if not isinstance(body.setdefault("metadata", {}), dict):
            raise errors.bad_request("metadata must be an object")
        self._check_identity(request, body["metadata"])
        return body

    @staticmethod
    def _check_identity(request: ResourceRequest, metadata: Obj) -> None:
        given_ns = metadata.get("namespace")
        if given_ns and request.namespace and given_ns != request.namespace:
            raise errors.bad_request("the namespace of the provided object does not match the "
                                     "namespace sent on the request")
        if request.namespace:
            metadata["namespace"] = request.namespace
        if request.name is not None and metadata.get("name") != request.name:
            raise errors.bad_request(f"the name of the object ({metadata.get('name')}) does not "
                                     f"match the name on the URL ({request.name})")

    def _matcher(self, request: ResourceRequest) -> Callable[[Obj], bool]:
        try:
            labels = parse_label_selector(self._param("labelSelector"))
            fields = parse_field_selector(self._param("fieldSelector"), request.resource.kind)
        except ValueError as error:
            raise errors.bad_request(str(error)) from None
        return lambda obj: labels.matches(obj["metadata"].get("labels")) and fields.matches(obj)

    # --- read verbs ----------------------------------------------------------------------------

    def _verb_get(self, request: ResourceRequest) -> None:
        obj = self._require(request)
        if request.subresource == "scale":
            self._send_json(200, scale_of(obj))
        elif request.subresource == "log":
            self._pod_log(request, obj)
        elif wants_table(self.headers.get("Accept", "")):
            listing = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                       "items": [obj]}
            self._send_json(200, to_table(request.resource, listing))
        else:
            self._send_json(200, self._out(obj, request))

    def _verb_list(self, request: ResourceRequest) -> None:
        resource = request.resource
        items, rv = self.server.api.store.list_objects(resource, request.namespace)
        matches = self._matcher(request)
        page, extra = _page([i for i in items if matches(i)], self._param("limit"),
                            self._param("continue"))
        body = {"kind": resource.list_kind, "apiVersion": resource.api_version(request.version),
                "metadata": {"resourceVersion": str(rv), **extra},
                "items": [self._out(i, request) for i in page]}
        if wants_table(self.headers.get("Accept", "")):
            body = to_table(resource, body)
        self._send_json(200, body)

    # --- watch ---------------------------------------------------------------------------------

    def _verb_watch(self, request: ResourceRequest) -> None:
        store, matches = self.server.api.store, self._matcher(request)
        timeout = self._param("timeoutSeconds")
        deadline = time.monotonic() + float(timeout) if timeout else None
        start = self._param("resourceVersion")
        initial: list[Obj] = []
        with store.condition:
            if not start or start == "0" or self._flag("sendInitialEvents"):
                initial, cursor = store.list_objects(request.resource, request.namespace)
            else:
                cursor = self._start_version(start)
        self._start_stream("application/json")
        for obj in initial:
            if matches(obj):
                self._send_event("ADDED", self._out(obj, request))
        if self._flag("sendInitialEvents"):
            self._send_event("BOOKMARK", {"kind": request.resource.kind, "apiVersion":
                             request.resource.api_version(request.version), "metadata": {
                             "resourceVersion": str(cursor),
                             "annotations": {"k8s.io/initial-events-end": "true"}}})
        self._stream_events(request, matches, cursor, deadline)
        self._end_stream()

    @staticmethod
    def _start_version(value: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise errors.bad_request(f"invalid resource version: {value!r}") from None

    def _send_event(self, kind: str, obj: Obj) -> None:
        self._send_chunk(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

    def _stream_events(self, request: ResourceRequest, matches: Callable[[Obj], bool],
                       cursor: int, deadline: float | None) -> None:
        store = self.server.api.store
        while not store.closed:
            try:
                events = store.events_after(cursor)
            except ApiError as error:
                self._send_event("ERROR", error.status())
                return
            for event in events:
                cursor = event.resource_version
                for kind, obj in self._translate(event, request, matches):
                    self._send_event(kind, self._out(obj, request))
            if not self._wait(functools.partial(_newer, store, cursor), deadline):
                return

    def _wait(self, ready: Callable[[], bool], deadline: float | None) -> bool:
        """Wait for ``ready`` in slices; False when the deadline passed or the client left."""
        store = self.server.api.store
        while True:
            remaining = WAIT_SLICE if deadline is None else min(
                WAIT_SLICE, deadline - time.monotonic())
            if remaining <= 0 or self._client_gone():
                return False
            if store.wait_for(ready, remaining) or store.closed:
                return not store.closed

    @staticmethod
    def _translate(event: WatchEvent, request: ResourceRequest,
                   matches: Callable[[Obj], bool]) -> Iterator[tuple[str, Obj]]:
        """The event as a watcher with this scope and selectors sees it."""
        if event.resource.key != request.resource.key:
            return
        obj = copy.deepcopy(event.object)
        if request.namespace and obj["metadata"].get("namespace") != request.namespace:
            return
        now_matches = matches(obj)
        was_matching = event.old is not None and matches(event.old)
        if event.type == MODIFIED and was_matching != now_matches:
            yield ("ADDED" if now_matches else DELETED), obj
        elif now_matches:
            yield event.type, obj

    # --- pod logs ------------------------------------------------------------------------------

    def _log_container(self, pod: Obj) -> str:
        spec, name = pod.get("spec") or {}, pod["metadata"]["name"]
        names = [c["name"] for c in spec.get("containers") or []]
        container = self._param("container")
        if container is None:
            if len(names) != 1:
                raise errors.bad_request(f"a container name must be specified for pod {name}, "
                                         f"choose one of: [{' '.join(names)}]")
            return str(names[0])
        init_names = [c["name"] for c in spec.get("initContainers") or []]
        if container not in names + init_names:
            raise errors.bad_request(f"container {container} is not valid for pod {name}")
        return container

    def _pod_log(self, request: ResourceRequest, pod: Obj) -> None:
        store, namespace, name = self.server.api.store, request.namespace or "", pod[
            "metadata"]["name"]
        container = self._log_container(pod)
        text = store.read_log(namespace, name, container)
        if text is None and (pod.get("status") or {}).get("phase", "Pending") == "Pending":
            raise errors.bad_request(f'container "{container}" in pod "{name}" is waiting to '
                                     "start: ContainerCreating")
        if not self._flag("follow"):
            self._send_bytes(200, self._trim_log(text or "").encode(), "text/plain")
            return
        self._start_stream("text/plain")
        self._send_chunk(self._trim_log(text or "").encode())
        self._follow_log(request, container, len(text or ""))
        self._end_stream()

    def _trim_log(self, text: str) -> str:
        tail, limit = self._param("tailLines"), self._param("limitBytes")
        if tail and tail.isdigit():
            lines = text.splitlines(keepends=True)
            text = "".join(lines[len(lines) - int(tail):]) if int(tail) else ""
        if limit and limit.isdigit():
            text = text.encode()[:int(limit)].decode(errors="ignore")
        return text

    def _follow_log(self, request: ResourceRequest, container: str, sent: int) -> None:
        """Stream what is appended after the first ``sent`` characters until the pod ends."""
        store, namespace, name = self.server.api.store, request.namespace or "", request.name or ""
        while True:
            # Look at the pod before the log: text written before the pod finished is sent.
            version, rv = store.log_version, store.resource_version
            pod = store.get(request.resource, namespace, name)
            text = store.read_log(namespace, name, container) or ""
            self._send_chunk(text[sent:].encode())
            sent = len(text)
            phase = ((pod or {}).get("status") or {}).get("phase")
            if pod is None or phase in ("Succeeded", "Failed") or store.closed:
                return
            if not self._wait(functools.partial(_log_grew, store, version, rv), None):
                return

    # --- write verbs ---------------------------------------------------------------------------

    def _verb_create(self, request: ResourceRequest) -> None:
        if request.subresource:
            raise errors.method_not_allowed("POST")
        obj = self._body_object(request)
        stored = self.server.api.store.create(request.resource, obj,
                                              namespace=request.namespace,
                                              dry_run=self._dry_run())
        self._send_json(201, self._out(stored, request))

    def _verb_update(self, request: ResourceRequest) -> None:
        store, resource = self.server.api.store, request.resource
        if request.subresource == "scale":
            scale = self._body_object(request, "Scale", "autoscaling/v1")
            stored, _ = store.update(resource, request.namespace, request.name or "",
                                     lambda current: with_scale(resource, current or {}, scale),
                                     dry_run=self._dry_run())
            self._send_json(200, scale_of(stored))
            return
        obj = self._body_object(request)
        stored, _ = store.update(resource, request.namespace, request.name or "",
                                 lambda _: obj, subresource=request.subresource,
                                 dry_run=self._dry_run())
        self._send_json(200, self._out(stored, request))

    def _patcher(self, request: ResourceRequest) -> Callable[[Obj, Any], Any]:
        content_type = self._content_type()
        accepted = [t for t in PATCH_TYPES if not (request.resource.custom and
                                                    t == STRATEGIC_PATCH)]
        if content_type not in accepted:
            raise errors.unsupported_media_type(content_type, accepted)
        if content_type == JSON_PATCH:
            return json_patch
        if content_type == MERGE_PATCH:
            return merge_patch
        if request.subresource == "scale":
            schema = SchemaNode.for_kind("autoscaling/v1", "Scale")
        else:
            schema = SchemaNode.for_kind(request.resource.api_version(), request.resource.kind)
        return lambda current, patch: strategic_merge_patch(current, patch, schema)

    def _verb_patch(self, request: ResourceRequest) -> None:
        if self._content_type() == APPLY_PATCH and request.subresource != "scale":
            self._apply(request)
            return
        patcher, patch = self._patcher(request), self._parsed_body()
        resource, store = request.resource, self.server.api.store

        def mutate(current: Obj | None) -> Obj:
            assert current is not None
            target = scale_of(current) if request.subresource == "scale" else current
            try:
                patched = patcher(target, patch)
            except PatchError as error:
                raise ApiError(422, "Invalid", str(error)) from None
            if not isinstance(patched, dict):
                raise errors.bad_request("the patch must produce an object")
            return with_scale(resource, current, patched) if target is not current else patched

        subresource = None if request.subresource == "scale" else request.subresource
        stored, _ = store.update(resource, request.namespace, request.name or "", mutate,
                                 subresource=subresource, dry_run=self._dry_run())
        body = scale_of(stored) if request.subresource == "scale" else self._out(stored, request)
        self._send_json(200, body)

    def _apply(self, request: ResourceRequest) -> None:
        manager = self._param("fieldManager")
        if not manager:
            raise errors.bad_request("PATCH requests with apply content type must have a "
                                     "fieldManager query parameter")
        applied = self._body_object(request)
        resource = request.resource
        schema = None if resource.custom else SchemaNode.for_kind(resource.api_version(),
                                                                  resource.kind)

        def mutate(current: Obj | None) -> Obj:
            merged, conflicts = server_side_apply(
                current, applied, schema, manager, force=self._flag("force"),
                subresource=request.subresource, now=now())
            if conflicts:
                count = f"{len(conflicts)} conflict{'s' if len(conflicts) > 1 else ''}"
                raise ApiError(409, "Conflict", f"Apply failed with {count}: "
                               + "; ".join(conflicts), {"causes": [
                                   {"reason": "FieldManagerConflict", "message": c}
                                   for c in conflicts]})
            return merged

        stored, created = self.server.api.store.update(
            resource, request.namespace, request.name or "", mutate,
            subresource=request.subresource, dry_run=self._dry_run(),
            allow_create=request.subresource is None, applied=True)
        self._send_json(201 if created else 200, self._out(stored, request))

    def _delete_options(self, request: ResourceRequest) -> DeleteOptions:
        body = self._parsed_body() if self.body else {}
        body = body if isinstance(body, dict) else {}
        policy = self._param("propagationPolicy") or body.get("propagationPolicy")
        if policy is None and (self._flag("orphanDependents") or body.get("orphanDependents")):
            policy = "Orphan"
        if policy is not None and policy not in PROPAGATION_POLICIES:
            raise errors.bad_request(f'propagationPolicy: Unsupported value: "{policy}": '
                                     'supported values: "Foreground", "Background", "Orphan"')
        if policy is None and request.resource.key in ORPHAN_BY_DEFAULT:
            self._warnings.append(JOB_ORPHAN_WARNING)
        preconditions = body.get("preconditions") or {}
        return DeleteOptions(policy, preconditions.get("uid"),
                             preconditions.get("resourceVersion"),
                             self._dry_run(body.get("dryRun")))

    def _verb_delete(self, request: ResourceRequest) -> None:
        if request.subresource:
            raise errors.method_not_allowed("DELETE")
        resource = request.resource
        deleted = self.server.api.store.delete(resource, request.namespace, request.name or "",
                                               self._delete_options(request))
        if resource.kind in ("Pod", "Namespace") or resource.custom:
            self._send_json(200, self._out(deleted, request))
            return
        details = {"name": request.name, "kind": resource.plural,
                   "uid": deleted["metadata"]["uid"]}
        if resource.group:
            details["group"] = resource.group
        self._send_json(200, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                              "status": "Success", "details": details})

    def _verb_deletecollection(self, request: ResourceRequest) -> None:
        store, resource = self.server.api.store, request.resource
        options, matches = self._delete_options(request), self._matcher(request)
        items, rv = store.list_objects(resource, request.namespace)
        deleted = []
        for obj in (i for i in items if matches(i)):
            try:
                deleted.append(store.delete(resource, obj["metadata"].get("namespace"),
                                            obj["metadata"]["name"], options))
            except ApiError as error:
                if error.code != 404:
                    raise
        self._send_json(200, {"kind": resource.list_kind,
                              "apiVersion": resource.api_version(request.version),
                              "metadata": {"resourceVersion": str(rv)},
                              "items": [self._out(i, request) for i in deleted]})
