"""A stand-in for Flux's helm-controller, against the real API server.

The real helm-controller cannot run here: it needs source-controller and the chart from a
registry. What swap and rollback depend on is one consequence of a Helm upgrade of app-template:
a release's Deployment (same name) mounts, for each volume NAME, the claim that the release's
merged values give as ``persistence.NAME.existingClaim``. :class:`HelmControllerStandIn` applies
exactly that, as admin, to every release of one namespace that is not suspended, a few times a
second, until stopped. Values are merged as Flux merges them: ``valuesFrom`` ConfigMaps in order,
``spec.values`` on top.
"""

from __future__ import annotations

import copy
import threading
from types import TracebackType
from typing import Any

import yaml

from .cluster import Cluster

Obj = dict[str, Any]
HELMRELEASE = "helm.toolkit.fluxcd.io/v2"


def merged_values(cluster: Cluster, release: Obj) -> Obj:
    """A HelmRelease's values: its valuesFrom ConfigMaps first, spec.values on top."""
    values: Obj = {}
    namespace = release["metadata"]["namespace"]
    for ref in release["spec"].get("valuesFrom") or []:
        if ref.get("kind", "ConfigMap") != "ConfigMap":
            continue
        found = cluster.get_object("v1", "ConfigMap", namespace, ref["name"]) or {}
        text = (found.get("data") or {}).get(ref.get("valuesKey") or "values.yaml")
        if text:
            deep_merge(values, yaml.safe_load(text) or {})
    deep_merge(values, copy.deepcopy(release["spec"].get("values") or {}))
    return values


def deep_merge(base: Obj, extra: Obj) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value


class HelmControllerStandIn:
    """Renders the claims of ``cluster``'s HelmReleases into their Deployments (see module)."""

    def __init__(self, cluster: Cluster, interval: float = 0.2) -> None:
        self.cluster, self.interval = cluster, interval
        self.stopping = threading.Event()
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._loop, name="helm-controller", daemon=True)

    def __enter__(self) -> HelmControllerStandIn:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stopping.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.reconcile()
            except Exception as error:  # kept for the test to report
                self.errors.append(error)
            self.stopping.wait(self.interval)

    def reconcile(self) -> None:
        """One round over every release of the namespace."""
        namespace = self.cluster.namespace
        for release in self.cluster.list_objects(HELMRELEASE, "HelmRelease", namespace):
            if release["spec"].get("suspend"):
                continue
            name = release["metadata"]["name"]
            deployment = self.cluster.get_object("apps/v1", "Deployment", namespace, name)
            if deployment is None:
                continue
            persistence = merged_values(self.cluster, release).get("persistence") or {}
            volumes = copy.deepcopy(deployment["spec"]["template"]["spec"].get("volumes") or [])
            changed = False
            for volume in volumes:
                claim = (persistence.get(volume["name"]) or {}).get("existingClaim")
                mounted = volume.get("persistentVolumeClaim") or {}
                if claim and mounted and mounted.get("claimName") != claim:
                    mounted["claimName"] = claim
                    changed = True
            if changed:
                self.cluster.patch_object(
                    "apps/v1",
                    "Deployment",
                    namespace,
                    name,
                    {"spec": {"template": {"spec": {"volumes": volumes}}}},
                )
