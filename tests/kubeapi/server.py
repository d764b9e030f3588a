"""``KubeAPIServer``: a Kubernetes API server for tests, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from . import errors
from .controllers import Controller, ControllerManager, default_controllers
from .handler import KubeHTTPServer
from .resources import ResourceRegistry, ResourceType
from .routing import ResourceRequest
from .store import ObjectStore, seed_order

Obj = dict[str, Any]


@dataclass(frozen=True)
class DenyRule:
    """Requests matching every given part are answered 403 Forbidden.

    ``verb`` is an RBAC verb (get, list, watch, create, update, patch, delete, deletecollection)
    or ``*``; ``resource`` is ``plural``, ``plural/subresource``, ``plural.group`` or ``*``
    (as in RBAC, ``pods`` does not cover ``pods/log``); ``namespace`` None matches any.
    """

    verb: str
    resource: str
    namespace: str | None = None

    def matches(self, request: ResourceRequest) -> bool:
        """Whether this rule denies ``request``."""
        names = {request.rbac_resource, "*"}
        if request.resource.group:
            plural = f"{request.resource.plural}.{request.resource.group}"
            names.add(f"{plural}/{request.subresource}" if request.subresource else plural)
        return (self.verb in (request.verb, "*") and self.resource in names
                and self.namespace in (None, request.namespace))


@dataclass(frozen=True)
class RequestRecord:
    """One resource request the server answered (or refused)."""

    method: str
    verb: str
    resource: str
    namespace: str | None
    name: str | None
    query: dict[str, str] = field(default_factory=dict)
    content_type: str = ""


class KubeAPIServer:
    """A Kubernetes API server for tests, reached through a generated kubeconfig.

    Use as a context manager: it listens on a free port of 127.0.0.1 on enter and stops cleanly
    on exit. Objects are validated against the official schemas in strict mode; the shipped
    Deployment/ReplicaSet/StatefulSet controllers run unless ``controllers`` says otherwise.
    """

    def __init__(self, directory: Path | str, *, context: str = "kubeapi-test",
                 namespace: str = "default", user: str = "kubeapi-test-user",
                 token: str = "kubeapi-test-token",
                 controllers: Iterable[Controller] | None = None) -> None:
        self.directory = Path(directory)
        self.context = context
        self.namespace = namespace
        self.user = user
        self.token = token
        self.registry = ResourceRegistry()
        self.store = ObjectStore(self.registry)
        self.controllers = ControllerManager(self.store)
        self.requests: list[RequestRecord] = []
        self._initial_controllers = list(default_controllers() if controllers is None
                                         else controllers)
        self._deny_rules: list[DenyRule] = []
        self._lock = threading.Lock()
        self._httpd: KubeHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> KubeAPIServer:
        """Listen, start serving and controllers, write the kubeconfig; returns self."""
        self._httpd = KubeHTTPServer(self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="kubeapi-http",
                                        kwargs={"poll_interval": 0.01}, daemon=True)
        self._thread.start()
        for controller in self._initial_controllers:
            self.controllers.add(controller)
        self.controllers.start()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.kubeconfig_path.write_text(yaml.safe_dump(self.kubeconfig()))
        return self

    def stop(self) -> None:
        """Stop controllers, end open watches and connections, and close the socket."""
        self.store.close()
        self.controllers.stop()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.close_connections()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> KubeAPIServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    # --- addresses and client configuration ----------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        return int(self._httpd.server_address[1])

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.address}"

    @property
    def kubeconfig_path(self) -> Path:
        """Where the kubeconfig for this server is written."""
        return self.directory / "kubeconfig.yaml"

    def kubeconfig(self) -> Obj:
        """The kubeconfig document: one cluster, one token user, one context."""
        return {"apiVersion": "v1", "kind": "Config", "current-context": self.context,
                "clusters": [{"name": self.context, "cluster": {"server": self.url}}],
                "users": [{"name": self.user, "user": {"token": self.token}}],
                "contexts": [{"name": self.context, "context": {
                    "cluster": self.context, "user": self.user, "namespace": self.namespace}}],
                "preferences": {}}

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for this server, loaded from the kubeconfig."""
        from kubernetes import config

        return config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig_path), context=self.context)

    # --- direct access for tests ---------------------------------------------------------------

    def resource_for(self, api_version: str, kind: str) -> ResourceType:
        """The served resource of ``apiVersion``/``kind``; raises LookupError if none."""
        return self.registry.by_kind(api_version, kind)

    def seed(self, objects: Iterable[Obj]) -> list[Obj]:
        """Store objects as given (status included), validated like API writes.

        Namespaces in ``objects`` are created first; a namespaced object needs its Namespace
        (seeded now or before). Raises ApiError (422, 409, 404) like the API would.
        """
        stored = []
        for obj in seed_order(objects):
            resource = self.resource_for(obj["apiVersion"], obj["kind"])
            stored.append(self.store.create(resource, obj, seed=True))
        return stored

    def get_object(self, api_version: str, kind: str, namespace: str | None,
                   name: str) -> Obj | None:
        """A copy of a stored object, or None."""
        resource = self.resource_for(api_version, kind)
        obj = self.store.get(resource, namespace if resource.namespaced else None, name)
        if obj is not None:
            obj["apiVersion"] = api_version
        return obj

    def list_objects(self, api_version: str, kind: str,
                     namespace: str | None = None) -> list[Obj]:
        """Copies of stored objects of one kind (in one namespace, if given)."""
        resource = self.resource_for(api_version, kind)
        items, _ = self.store.list_objects(resource, namespace)
        for item in items:
            item["apiVersion"] = api_version
        return items

    def deny(self, verb: str, resource: str, namespace: str | None = None) -> DenyRule:
        """Answer matching requests with 403 Forbidden until ``allow(rule)``; see DenyRule."""
        rule = DenyRule(verb, resource, namespace)
        with self._lock:
            self._deny_rules.append(rule)
        return rule

    def allow(self, rule: DenyRule | None = None) -> None:
        """Lift one deny rule, or all of them."""
        with self._lock:
            self._deny_rules = [r for r in self._deny_rules if rule is not None and r != rule]

    def add_controller(self, controller: Controller) -> None:
        """Run ``controller`` after every write from now on."""
        self.controllers.add(controller)

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until controllers have reconciled every write so far (see ControllerManager)."""
        self.controllers.settle(timeout)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds, re-checking after every store change.

        Raises TimeoutError after ``timeout`` seconds.
        """
        if not self.store.wait_for(predicate, timeout):
            raise TimeoutError(f"condition not met within {timeout}s")

    def set_pod_log(self, namespace: str, pod: str, text: str,
                    container: str | None = None) -> None:
        """Set what ``pods/log`` returns (for one container, or for any)."""
        self.store.set_log(namespace, pod, text, container)

    def append_pod_log(self, namespace: str, pod: str, text: str,
                       container: str | None = None) -> None:
        """Append to a pod's log; ``follow=true`` readers receive it."""
        self.store.append_log(namespace, pod, text, container)

    # --- hooks for the HTTP handler ------------------------------------------------------------

    def authorize(self, request: ResourceRequest) -> None:
        """Raise 403 if a deny rule matches."""
        with self._lock:
            denied = any(rule.matches(request) for rule in self._deny_rules)
        if denied:
            raise errors.forbidden(self.user, request.verb, request.resource,
                                   request.subresource, request.namespace, request.name)

    def record(self, method: str, request: ResourceRequest, query: dict[str, str],
               content_type: str) -> None:
        """Append to ``requests``."""
        with self._lock:
            self.requests.append(RequestRecord(method, request.verb, request.rbac_resource,
                                               request.namespace, request.name, query,
                                               content_type))


@contextmanager
def kube_api_server(directory: Path | str, **options: Any) -> Iterator[KubeAPIServer]:
    """Context manager for a fixture: ``with kube_api_server(tmp_path) as api: yield api``."""
    with KubeAPIServer(directory, **options) as api:
        yield api
