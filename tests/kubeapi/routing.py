"""Turn a request path and method into the resource, scope, name, subresource and RBAC verb."""

from __future__ import annotations

from dataclasses import dataclass

from . import errors
from .resources import ResourceRegistry, ResourceType, UnknownResourceError


@dataclass(frozen=True)
class ResourceRequest:
    """A request for a resource; ``verb`` is the RBAC verb (get, list, watch, create...)."""

    resource: ResourceType
    version: str
    verb: str
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None

    @property
    def rbac_resource(self) -> str:
        """``plural`` or ``plural/subresource``."""
        plural = self.resource.plural
        return f"{plural}/{self.subresource}" if self.subresource else plural


def _group_version(segments: list[str]) -> tuple[str, str, list[str]] | None:
    if len(segments) >= 3 and segments[0] == "api":
        return "", segments[1], segments[2:]
    if len(segments) >= 4 and segments[0] == "apis":
        return segments[1], segments[2], segments[3:]
    return None


def _scope(registry: ResourceRegistry, group: str, version: str,
           rest: list[str]) -> tuple[str | None, list[str]]:
    if len(rest) >= 3 and rest[0] == "namespaces":
        try:
            if registry.by_path(group, version, rest[2]).namespaced:
                return rest[1], rest[2:]
        except UnknownResourceError:
            pass
    return None, rest


def _verb(method: str, named: bool, watch: bool) -> str:
    verbs = {("GET", True): "get", ("GET", False): "watch" if watch else "list",
             ("POST", False): "create", ("PUT", True): "update", ("PATCH", True): "patch",
             ("DELETE", True): "delete", ("DELETE", False): "deletecollection"}
    try:
        return verbs[(method, named)]
    except KeyError:
        raise errors.method_not_allowed(method) from None


def parse_resource_path(registry: ResourceRegistry, method: str, path: str,
                        watch: bool) -> ResourceRequest | None:
    """The resource request a path names; None for non-resource paths (discovery).

    Raises ApiError 404 for unknown resources, bad scopes or subresources, 405 for methods the
    path does not take.
    """
    split = _group_version([s for s in path.split("/") if s])
    if split is None:
        return None
    group, version, rest = split
    if rest and rest[0] == "watch":  # legacy /api/v1/watch/... paths
        watch, rest = True, rest[1:]
    namespace, rest = _scope(registry, group, version, rest)
    if not rest or len(rest) > 3:
        raise errors.route_not_found()
    try:
        resource = registry.by_path(group, version, rest[0])
    except UnknownResourceError:
        raise errors.route_not_found() from None
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else None
    if (namespace and not resource.namespaced) or (
            subresource and subresource not in resource.subresources) or (
            resource.namespaced and namespace is None and name is not None):
        raise errors.route_not_found()
    verb = _verb(method, name is not None, watch)
    return ResourceRequest(resource, version, verb, namespace, name, subresource)
