"""Workloads and Flux releases, as the cutover, swap and rollback change them: the one place that
reads, scales and waits for Deployments and StatefulSets and patches HelmReleases."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from migrator.errors import BadInputError
from migrator.kube import FLUX_HELM_GROUP, FLUX_HELM_VERSION, KubeClient

SCALABLE = ("Deployment", "StatefulSet")


def _apps(kube: KubeClient, kind: str, verb: str) -> Any:
    """The client method ``verb`` (read, patch, list, read_scale, patch_scale) for ``kind``."""
    if kind not in SCALABLE:
        raise BadInputError(f"cannot scale a {kind}")
    noun = "deployment" if kind == "Deployment" else "stateful_set"
    method = {
        "read": f"read_namespaced_{noun}",
        "list": f"list_namespaced_{noun}",
        "read_scale": f"read_namespaced_{noun}_scale",
        "patch_scale": f"patch_namespaced_{noun}_scale",
    }[verb]
    return getattr(kube.apps, method)


def read_workload(kube: KubeClient, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    """The workload as a dict, or None if it does not exist."""
    read = _apps(kube, kind, "read")
    found = kube.call(f"reading {kind}/{name}", lambda: read(name, namespace), missing_ok=True)
    return None if found is None else dict(kube._dict(found))


def replicas_of(kube: KubeClient, namespace: str, kind: str, name: str) -> int:
    """The replicas its scale subresource asks for."""
    read = _apps(kube, kind, "read_scale")
    scale = kube.call(f"reading the scale of {kind}/{name}", lambda: read(name, namespace))
    return int(getattr(getattr(scale, "spec", None), "replicas", 0) or 0)


def scale(kube: KubeClient, namespace: str, kind: str, name: str, replicas: int) -> None:
    patch = _apps(kube, kind, "patch_scale")
    kube.call(
        f"scaling {kind}/{name} to {replicas}",
        lambda: patch(name, namespace, {"spec": {"replicas": replicas}}),
    )


def selector_of(workload: dict[str, Any] | None) -> str:
    """The label selector of a workload's pods (its matchLabels)."""
    labels = (((workload or {}).get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def wait_for_workload(
    kube: KubeClient,
    namespace: str,
    kind: str,
    name: str,
    done: Callable[[dict[str, Any]], bool],
    deadline: float,
) -> dict[str, Any] | None:
    """Watch a workload until ``done(it)`` or the deadline; returns its last state."""
    return kube.wait_for(
        f"watching {kind}/{name}",
        lambda: read_workload(kube, namespace, kind, name),
        done,
        deadline,
        _apps(kube, kind, "list"),
        namespace,
        field_selector=f"metadata.name={name}",
    )


def wait_for_no_pods(kube: KubeClient, namespace: str, selector: str, deadline: float) -> bool:
    """Wait until no pod matches ``selector``; False if some are left at the deadline."""

    def pods() -> dict[str, Any]:
        listed = kube.call(
            "listing pods",
            lambda: kube.core.list_namespaced_pod(namespace, label_selector=selector),
        )
        return dict(kube._dict(listed)) if listed is not None else {"items": []}

    left = kube.wait_for(
        "watching pods",
        pods,
        lambda listed: not listed.get("items"),
        deadline,
        kube.core.list_namespaced_pod,
        namespace,
        label_selector=selector,
        wake=lambda kind, _pod: kind == "DELETED",
    )
    return not (left or {}).get("items")


def read_release(kube: KubeClient, namespace: str, name: str) -> dict[str, Any] | None:
    found = kube.call(
        f"reading HelmRelease {name}",
        lambda: kube.custom.get_namespaced_custom_object(
            FLUX_HELM_GROUP, FLUX_HELM_VERSION, namespace, "helmreleases", name
        ),
        missing_ok=True,
    )
    return None if found is None else dict(kube._dict(found))


def patch_release(
    kube: KubeClient, namespace: str, name: str, body: dict[str, Any], what: str = "patching"
) -> None:
    """A JSON merge patch of a HelmRelease (``what``: the verb the error message uses)."""
    kube.call(
        f"{what} HelmRelease {name}",
        lambda: kube.custom.patch_namespaced_custom_object(
            FLUX_HELM_GROUP, FLUX_HELM_VERSION, namespace, "helmreleases", name, body
        ),
    )
