"""Discovery documents (/version, /api, /apis, /api/v1, /apis/<group>/<version>, /openapi/v3)."""

from __future__ import annotations

from typing import Any

from .resources import ResourceRegistry, ResourceType
from .validation import KUBE_VERSION

READ_VERBS = ["get", "list", "watch"]
ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def version_info() -> dict[str, Any]:
    """``/version``: the Kubernetes version whose schemas we validate against."""
    major, minor, _ = KUBE_VERSION.split(".")
    return {"major": major, "minor": minor, "gitVersion": f"v{KUBE_VERSION}",
            "gitCommit": "0" * 40, "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "go1.25.0", "compiler": "gc", "platform": "linux/amd64"}


def api_versions(address: str) -> dict[str, Any]:
    """``/api``."""
    return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
        {"clientCIDR": "0.0.0.0/0", "serverAddress": address}]}


def api_group(registry: ResourceRegistry, group: str) -> dict[str, Any]:
    """``/apis/<group>``."""
    versions = registry.group_versions()[group]
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": entries,
            "preferredVersion": entries[0]}


def api_group_list(registry: ResourceRegistry) -> dict[str, Any]:
    """``/apis``: every named group."""
    groups = [api_group(registry, g) for g in registry.group_versions() if g]
    for group in groups:
        del group["kind"], group["apiVersion"]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def _entries(resource: ResourceType) -> list[dict[str, Any]]:
    main: dict[str, Any] = {"name": resource.plural, "singularName": resource.kind.lower(),
                            "namespaced": resource.namespaced, "kind": resource.kind,
                            "verbs": ALL_VERBS}
    if resource.short_names:
        main["shortNames"] = list(resource.short_names)
    if resource.categories:
        main["categories"] = list(resource.categories)
    entries = [main]
    for sub in sorted(resource.subresources):
        entry: dict[str, Any] = {"name": f"{resource.plural}/{sub}", "singularName": "",
                                 "namespaced": resource.namespaced, "kind": resource.kind,
                                 "verbs": ["get", "patch", "update"]}
        if sub == "scale":
            entry.update(group="autoscaling", version="v1", kind="Scale")
        if sub == "log":
            entry.update(verbs=["get"])
        entries.append(entry)
    return entries


def resource_list(registry: ResourceRegistry, group: str, version: str) -> dict[str, Any] | None:
    """``/api/v1`` or ``/apis/<group>/<version>``; None if the group version is not served."""
    resources = registry.in_group_version(group, version)
    if not resources:
        return None
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": [e for r in resources for e in _entries(r)]}


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def openapi_v3_root(registry: ResourceRegistry) -> dict[str, Any]:
    """``/openapi/v3``: one entry per served group version."""
    paths = {_gv_path(g, v): {"serverRelativeURL": f"/openapi/v3/{_gv_path(g, v)}?hash={v}"}
             for g, versions in registry.group_versions().items() for v in versions}
    return {"paths": paths}


def openapi_v3_group_version(registry: ResourceRegistry, group: str,
                             version: str) -> dict[str, Any] | None:
    """A minimal OpenAPI v3 document for one group version: paths and operations only.

    It carries no schemas; it exists so kubectl sees that the server validates fields itself
    (``fieldValidation``) and sends objects instead of validating them client-side.
    """
    resources = registry.in_group_version(group, version)
    if not resources:
        return None
    parameter = {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}
    paths = {}
    for resource in resources:
        scope = "/namespaces/{namespace}" if resource.namespaced else ""
        gvk = {"group": group, "version": version, "kind": resource.kind}
        operation = {"x-kubernetes-group-version-kind": gvk, "parameters": [parameter],
                     "responses": {"200": {"description": "OK"}}}
        base = f"/{_gv_path(group, version)}{scope}/{resource.plural}"
        paths[base] = {"post": operation}
        paths[f"{base}/{{name}}"] = {"put": operation, "patch": operation}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": f"v{KUBE_VERSION}"},
            "paths": paths, "components": {"schemas": {}}}


def discovery_document(registry: ResourceRegistry, path: str,
                       address: str) -> dict[str, Any] | None:
    """The discovery document served at ``path``, or None if it is not a discovery path."""
    segments = [s for s in path.split("/") if s]
    if segments == ["version"]:
        return version_info()
    if segments == ["api"]:
        return api_versions(address)
    if segments == ["apis"]:
        return api_group_list(registry)
    if len(segments) == 2 and segments[0] == "api":
        return resource_list(registry, "", segments[1])
    if len(segments) == 2 and segments[0] == "apis" and segments[1] in registry.group_versions():
        return api_group(registry, segments[1])
    if len(segments) == 3 and segments[0] == "apis":
        return resource_list(registry, segments[1], segments[2])
    if segments[:2] == ["openapi", "v3"]:
        return _openapi(registry, segments[2:])
    return None


def _openapi(registry: ResourceRegistry, rest: list[str]) -> dict[str, Any] | None:
    if not rest:
        return openapi_v3_root(registry)
    if len(rest) == 2 and rest[0] == "api":
        return openapi_v3_group_version(registry, "", rest[1])
    if len(rest) == 3 and rest[0] == "apis":
        return openapi_v3_group_version(registry, rest[1], rest[2])
    return None
