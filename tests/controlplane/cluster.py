"""One test's view of the shared real control plane: a fresh tenant namespace, seeded as admin,
and a kubeconfig for the ServiceAccount that ``docs/rbac.yaml`` tells users to create.

The CLI under test only ever gets :attr:`Cluster.kubeconfig_path` (the ServiceAccount's token), so
a permission the docs forget fails the test; the test itself reads and writes as admin.
"""

from __future__ import annotations

import base64
import copy
import itertools
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, dynamic
from kubernetes.client.exceptions import ApiException

from tests.kubelet.process import ProcessKubelet
from tests.kubelet.retry import read_modify_write

from . import ControlPlane

Obj = dict[str, Any]
RBAC_DOC = Path(__file__).resolve().parents[2] / "docs" / "rbac.yaml"
DOCUMENTED_NAMESPACE = "tenant-media"  # the namespace docs/rbac.yaml is written for
SERVICE_ACCOUNT = "migrator"
_numbers = itertools.count(1)


def unique_namespace(prefix: str = "tenant-media") -> str:
    """A namespace name no other test of this session uses."""
    return f"{prefix}-{next(_numbers)}"


def rbac_objects(namespace: str) -> list[Obj]:
    """docs/rbac.yaml, for ``namespace`` instead of the documented tenant-media."""
    objects = []
    for document in yaml.safe_load_all(RBAC_DOC.read_text()):
        if not document:
            continue
        document = copy.deepcopy(document)
        meta = document["metadata"]
        if meta.get("namespace") == DOCUMENTED_NAMESPACE:
            meta["namespace"] = namespace
        if document["kind"] == "ClusterRoleBinding":
            meta["name"] = f"migrator-{namespace}"
        for subject in document.get("subjects", []):
            if subject.get("namespace") == DOCUMENTED_NAMESPACE:
                subject["namespace"] = namespace
        objects.append(document)
    return objects


class Cluster:
    """A tenant namespace on the shared control plane (see module docstring)."""

    def __init__(
        self, plane: ControlPlane, namespace: str, directory: Path, kubelet: ProcessKubelet
    ) -> None:
        self.plane, self.namespace, self.directory = plane, namespace, directory
        self.kubelet = kubelet
        self.directory.mkdir(parents=True, exist_ok=True)
        self.admin = plane.api_client()
        self.dynamic = dynamic.DynamicClient(self.admin)
        self.core = client.CoreV1Api(self.admin)
        self.user = f"system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}"
        self.kubeconfig_path = directory / "kubeconfig"
        self.admin_kubeconfig_path = plane.kubeconfig_path

    # --- set-up -------------------------------------------------------------------------------

    def create_namespace(self, labels: dict[str, str] | None = None) -> None:
        """Create the namespace (with Pod Security labels, say), the ServiceAccount and its
        bindings from docs/rbac.yaml, and write the ServiceAccount's kubeconfig."""
        self.seed(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": self.namespace, "labels": labels or {}},
                }
            ]
        )
        self.seed(rbac_objects(self.namespace))
        self.write_kubeconfig()
        # Pods are refused until the service-account controller has made "default".
        self.wait_for(
            lambda: self.get_object("v1", "ServiceAccount", self.namespace, "default") is not None,
            30,
            f"ServiceAccount {self.namespace}/default",
        )

    def write_kubeconfig(self, hours: int = 6) -> None:
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": hours * 3600},
        }
        answer = self.core.create_namespaced_service_account_token(
            SERVICE_ACCOUNT, self.namespace, request
        )
        ca = base64.b64encode(self.plane.ca_path.read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "migrator",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {"server": self.plane.server, "certificate-authority-data": ca},
                }
            ],
            "users": [{"name": SERVICE_ACCOUNT, "user": {"token": answer.status.token}}],
            "contexts": [
                {
                    "name": "migrator",
                    "context": {
                        "cluster": "test",
                        "user": SERVICE_ACCOUNT,
                        "namespace": self.namespace,
                    },
                }
            ],
        }
        self.kubeconfig_path.write_text(yaml.safe_dump(config))

    def delete(self) -> None:
        """Delete the namespace (its objects go with it) and the cluster-scoped objects made for
        it; does not wait for the namespace to finish terminating."""
        for kind, name in (("ClusterRoleBinding", f"migrator-{self.namespace}"),):
            self._delete_quietly("rbac.authorization.k8s.io/v1", kind, None, name)
        for pv in self.list_objects("v1", "PersistentVolume"):
            if (pv["spec"].get("claimRef") or {}).get("namespace") == self.namespace:
                self._delete_quietly("v1", "PersistentVolume", None, pv["metadata"]["name"])
        self._delete_quietly("v1", "Namespace", None, self.namespace)

    def _delete_quietly(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> None:
        try:
            self._resource(api_version, kind).delete(name=name, namespace=namespace)
        except ApiException as error:
            if error.status != 404:
                raise

    # --- objects, as admin --------------------------------------------------------------------

    def _resource(self, api_version: str, kind: str) -> Any:
        return self.dynamic.resources.get(api_version=api_version, kind=kind)

    def seed(self, objects: Iterable[Obj]) -> list[Obj]:
        """Create objects as given; cluster-scoped ones that exist already (shared by every test:
        StorageClasses, flux-system) are left as they are. A ``status`` given is written through
        the status subresource after the create, as the controller that owns it would."""
        stored = []
        for obj in objects:
            resource = self._resource(obj["apiVersion"], obj["kind"])
            body = {key: value for key, value in obj.items() if key != "status"}
            namespace = obj["metadata"].get("namespace") if resource.namespaced else None
            try:
                created = resource.create(body=body, namespace=namespace).to_dict()
            except ApiException as error:
                if error.status == 409 and not resource.namespaced:
                    continue
                raise
            if "status" in obj and obj["kind"] not in ("Namespace", "Node"):
                created = self._write_status(resource, namespace, created, obj["status"])
            stored.append(created)
        return stored

    def _write_status(self, resource: Any, namespace: str | None, current: Obj, status: Obj) -> Obj:
        """Replace ``current``'s status; a controller may have written it meanwhile (the PV
        binder binds a claim within milliseconds), so a conflict re-reads and tries again."""
        subresource = resource.subresources.get("status")
        if subresource is None:
            return current
        name = current["metadata"]["name"]
        written = read_modify_write(
            lambda: dict(resource.get(name=name, namespace=namespace).to_dict()),
            lambda found: dict(
                subresource.replace(body={**found, "status": status}, namespace=namespace).to_dict()
            ),
            f"status of {resource.kind}/{name}",
            current,
        )
        assert written is not None
        return written

    def get_object(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> Obj | None:
        try:
            found = self._resource(api_version, kind).get(name=name, namespace=namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return dict(found.to_dict())

    def list_objects(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> list[Obj]:
        found = self._resource(api_version, kind).get(
            namespace=namespace, label_selector=label_selector
        )
        return [dict(item) for item in found.to_dict()["items"]]

    def patch_object(
        self, api_version: str, kind: str, namespace: str | None, name: str, patch: Obj
    ) -> Obj:
        """A JSON merge patch, as admin."""
        return dict(
            self._resource(api_version, kind)
            .patch(
                name=name,
                namespace=namespace,
                body=patch,
                content_type="application/merge-patch+json",
            )
            .to_dict()
        )

    def label_namespace(self, labels: dict[str, str | None]) -> None:
        self.patch_object("v1", "Namespace", None, self.namespace, {"metadata": {"labels": labels}})

    # --- waiting ------------------------------------------------------------------------------

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 60.0, what: str = ""
    ) -> None:
        """Poll ``predicate`` until it holds; TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what or 'condition'} not met within {timeout:.0f} s")
            time.sleep(0.2)

    def settle(self, timeout: float = 120.0) -> None:
        """Wait until every Deployment and StatefulSet of the namespace has all its replicas
        ready (their pods scheduled and running on the process kubelet) and every claim Bound."""

        def settled() -> bool:
            for kind in ("Deployment", "StatefulSet"):
                for workload in self.list_objects("apps/v1", kind, self.namespace):
                    wanted = workload["spec"].get("replicas", 1)
                    status = workload.get("status") or {}
                    if (status.get("readyReplicas") or 0) != wanted or (
                        status.get("replicas") or 0
                    ) != wanted:
                        return False
            claims = self.list_objects("v1", "PersistentVolumeClaim", self.namespace)
            return all((c.get("status") or {}).get("phase") == "Bound" for c in claims)

        self.wait_for(settled, timeout, f"workloads of {self.namespace} ready")

    # --- what the CLI asked -------------------------------------------------------------------

    def requests(self, user: str | None = None) -> list[Obj]:
        """The API requests the ServiceAccount (or ``user``) made, from the audit log, oldest
        first: each with ``verb``, ``objectRef`` and ``responseStatus``."""
        who = user or self.user
        return [e for e in self.plane.audit_events() if e.get("user", {}).get("username") == who]

    def forbidden(self) -> list[str]:
        """Every request of the ServiceAccount that RBAC refused, as ``verb resource`` lines."""
        lines = []
        for event in self.requests():
            if (event.get("responseStatus") or {}).get("code") == 403:
                ref = event.get("objectRef") or {}
                resource = ref.get("resource", "?") + (
                    f"/{ref['subresource']}" if ref.get("subresource") else ""
                )
                lines.append(f"{event['verb']} {ref.get('apiGroup') or 'core'}/{resource}")
        return lines
