"""The resource types the test API server serves, and lookups over them."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ResourceType:
    """One REST resource, e.g. ``deployments`` in ``apps/v1``.

    ``versions[0]`` is the storage and preferred version; other versions are served by rewriting
    ``apiVersion`` (a CRD with conversion strategy ``None``). ``custom`` marks custom resources:
    they have no strategic-merge-patch support and are validated against hand-written schemas.
    """

    group: str
    versions: tuple[str, ...]
    kind: str
    plural: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    subresources: frozenset[str] = field(default_factory=frozenset)
    categories: tuple[str, ...] = ()
    custom: bool = False

    @property
    def version(self) -> str:
        """The preferred (storage) version."""
        return self.versions[0]

    def api_version(self, version: str | None = None) -> str:
        """``group/version`` (or just ``version`` for the core group)."""
        version = version or self.version
        return f"{self.group}/{version}" if self.group else version

    @property
    def key(self) -> tuple[str, str]:
        """Storage key: objects of all served versions share it."""
        return (self.group, self.plural)

    @property
    def qualified_name(self) -> str:
        """``plural.group`` as used in API error messages (``deployments.apps``)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        """``Kind.group`` as used in validation messages (``Deployment.apps``)."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def list_kind(self) -> str:
        """Kind of the list object, e.g. ``PodList``."""
        return f"{self.kind}List"


STATUS = frozenset({"status"})
SCALABLE = frozenset({"status", "scale"})
ALL = ("all",)


_core = functools.partial(ResourceType, "", ("v1",))


BUILTIN_RESOURCES: tuple[ResourceType, ...] = (
    _core("Namespace", "namespaces", namespaced=False, short_names=("ns",), subresources=STATUS),
    _core("Node", "nodes", namespaced=False, short_names=("no",), subresources=STATUS),
    _core("PersistentVolume", "persistentvolumes", namespaced=False, short_names=("pv",),
          subresources=STATUS),
    _core("Pod", "pods", short_names=("po",), subresources=frozenset({"status", "log"}),
          categories=ALL),
    _core("PersistentVolumeClaim", "persistentvolumeclaims", short_names=("pvc",),
          subresources=STATUS),
    _core("Secret", "secrets"),
    _core("ConfigMap", "configmaps", short_names=("cm",)),
    _core("Service", "services", short_names=("svc",), subresources=STATUS, categories=ALL),
    _core("ServiceAccount", "serviceaccounts", short_names=("sa",)),
    _core("Event", "events", short_names=("ev",)),
    ResourceType("apps", ("v1",), "Deployment", "deployments", short_names=("deploy",),
                 subresources=SCALABLE, categories=ALL),
    ResourceType("apps", ("v1",), "StatefulSet", "statefulsets", short_names=("sts",),
                 subresources=SCALABLE, categories=ALL),
    ResourceType("apps", ("v1",), "ReplicaSet", "replicasets", short_names=("rs",),
                 subresources=SCALABLE, categories=ALL),
    ResourceType("apps", ("v1",), "DaemonSet", "daemonsets", short_names=("ds",),
                 subresources=STATUS, categories=ALL),
    ResourceType("batch", ("v1",), "Job", "jobs", subresources=STATUS, categories=ALL),
    ResourceType("batch", ("v1",), "CronJob", "cronjobs", short_names=("cj",),
                 subresources=STATUS, categories=ALL),
    ResourceType("storage.k8s.io", ("v1",), "StorageClass", "storageclasses", namespaced=False,
                 short_names=("sc",)),
    ResourceType("storage.k8s.io", ("v1",), "CSIDriver", "csidrivers", namespaced=False),
    ResourceType("coordination.k8s.io", ("v1",), "Lease", "leases"),
)

FLUX_RESOURCES: tuple[ResourceType, ...] = (
    ResourceType("helm.toolkit.fluxcd.io", ("v2",), "HelmRelease", "helmreleases",
                 short_names=("hr",), subresources=STATUS, categories=("all", "flux"),
                 custom=True),
    ResourceType("kustomize.toolkit.fluxcd.io", ("v1",), "Kustomization", "kustomizations",
                 short_names=("ks",), subresources=STATUS, categories=("all", "flux"),
                 custom=True),
    ResourceType("source.toolkit.fluxcd.io", ("v1", "v1beta2"), "GitRepository",
                 "gitrepositories", short_names=("gitrepo",), subresources=STATUS,
                 categories=("all", "flux"), custom=True),
    ResourceType("source.toolkit.fluxcd.io", ("v1", "v1beta2"), "HelmRepository",
                 "helmrepositories", short_names=("helmrepo",), subresources=STATUS,
                 categories=("all", "flux"), custom=True),
    ResourceType("source.toolkit.fluxcd.io", ("v1", "v1beta2"), "OCIRepository",
                 "ocirepositories", short_names=("ocirepo",), subresources=STATUS,
                 categories=("all", "flux"), custom=True),
)


class UnknownResourceError(LookupError):
    """No served resource matches the requested path or kind."""


class ResourceRegistry:
    """Lookups by URL path (group, version, plural) and by (apiVersion, kind)."""

    def __init__(self, resources: Iterable[ResourceType] = BUILTIN_RESOURCES + FLUX_RESOURCES):
        self._resources = tuple(resources)
        self._by_path = {(r.group, v, r.plural): r for r in self._resources for v in r.versions}
        self._by_kind = {(r.api_version(v), r.kind): r for r in self._resources for v in r.versions}

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(self._resources)

    def by_path(self, group: str, version: str, plural: str) -> ResourceType:
        """The resource at ``/apis/<group>/<version>/<plural>``; raises UnknownResourceError."""
        try:
            return self._by_path[(group, version, plural)]
        except KeyError:
            raise UnknownResourceError(f"{group}/{version}/{plural}") from None

    def by_kind(self, api_version: str, kind: str) -> ResourceType:
        """The resource whose objects have this apiVersion and kind; raises UnknownResourceError."""
        try:
            return self._by_kind[(api_version, kind)]
        except KeyError:
            raise UnknownResourceError(f"{api_version} {kind}") from None

    def by_kind_name(self, kind: str) -> ResourceType:
        """The first resource with this kind in any group (for tests and controllers)."""
        for resource in self._resources:
            if resource.kind == kind:
                return resource
        raise UnknownResourceError(kind)

    def group_versions(self) -> dict[str, list[str]]:
        """Served versions per group name, core group as ``""``, in registration order."""
        groups: dict[str, list[str]] = {}
        for resource in self._resources:
            versions = groups.setdefault(resource.group, [])
            versions.extend(v for v in resource.versions if v not in versions)
        return groups

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        """Resources served in one group version."""
        return [r for r in self._resources if r.group == group and version in r.versions]
