"""What the apiserver does to an object before storing it: metadata, defaults, immutability.

Defaults are the ones our code can observe (pod and workload specs, Job selectors and labels,
Service cluster IPs, Secret ``stringData``, initial statuses); they are applied on every write,
so a PUT of an object read earlier does not look like a spec change.
"""

from __future__ import annotations

import base64
import copy
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .errors import invalid
from .resources import ResourceType

Obj = dict[str, Any]
NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_TOP_LEVEL_KEEP = ("apiVersion", "kind", "metadata", "status")
# Status fields without ``omitempty`` in the Go types: present (as 0) from the start.
INITIAL_STATUS: dict[str, Obj] = {
    "ReplicaSet": {"replicas": 0},
    "StatefulSet": {"replicas": 0},
    "DaemonSet": {"currentNumberScheduled": 0, "numberMisscheduled": 0,
                  "desiredNumberScheduled": 0, "numberReady": 0},
}


def now() -> str:
    """The current time in the API's RFC 3339 format (second precision, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(length: int = 5) -> str:
    """A name suffix like the apiserver's ``generateName`` uses."""
    return "".join(random.choices(NAME_SUFFIX_ALPHABET, k=length))


def _dict(parent: Any, key: str) -> Obj | None:
    value = parent.get(key) if isinstance(parent, dict) else None
    return value if isinstance(value, dict) else None


def _items(parent: Any, key: str) -> list[Obj]:
    value = parent.get(key) if isinstance(parent, dict) else None
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


# --- defaults ------------------------------------------------------------------------------------

def _default_container(container: Obj) -> None:
    image = str(container.get("image") or "")
    untagged = ":" not in image.rsplit("/", 1)[-1] and "@" not in image
    container.setdefault("imagePullPolicy", "Always" if untagged or image.endswith(":latest")
                         else "IfNotPresent")
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    container.setdefault("resources", {})
    for port in _items(container, "ports"):
        port.setdefault("protocol", "TCP")


def default_pod_spec(spec: Obj | None) -> None:
    """Pod spec defaults (restartPolicy Always, dnsPolicy ClusterFirst, container fields...)."""
    if spec is None:
        return
    for key, value in (("restartPolicy", "Always"), ("dnsPolicy", "ClusterFirst"),
                       ("schedulerName", "default-scheduler"),
                       ("terminationGracePeriodSeconds", 30), ("securityContext", {})):
        spec.setdefault(key, value)
    for container in _items(spec, "containers") + _items(spec, "initContainers"):
        _default_container(container)
    for volume in _items(spec, "volumes"):
        for source in ("configMap", "secret"):
            if source_spec := _dict(volume, source):
                source_spec.setdefault("defaultMode", 420)


def _template_spec(obj: Obj) -> Obj | None:
    return _dict(_dict(_dict(obj, "spec"), "template"), "spec")


def _default_deployment(obj: Obj) -> None:
    spec = _dict(obj, "spec") or {}
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    spec.setdefault("strategy", {"type": "RollingUpdate",
                                 "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
    default_pod_spec(_template_spec(obj))


def _default_statefulset(obj: Obj) -> None:
    spec = _dict(obj, "spec") or {}
    spec.setdefault("replicas", 1)
    spec.setdefault("podManagementPolicy", "OrderedReady")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("updateStrategy", {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
    spec.setdefault("persistentVolumeClaimRetentionPolicy",
                    {"whenDeleted": "Retain", "whenScaled": "Retain"})
    for claim in _items(spec, "volumeClaimTemplates"):
        claim.setdefault("apiVersion", "v1")
        claim.setdefault("kind", "PersistentVolumeClaim")
        (_dict(claim, "spec") or {}).setdefault("volumeMode", "Filesystem")
        claim.setdefault("status", {"phase": "Pending"})
    default_pod_spec(_template_spec(obj))


def _default_replicaset(obj: Obj) -> None:
    (_dict(obj, "spec") or {}).setdefault("replicas", 1)
    default_pod_spec(_template_spec(obj))


def _default_daemonset(obj: Obj) -> None:
    spec = _dict(obj, "spec") or {}
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("updateStrategy", {"type": "RollingUpdate",
                                       "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
    default_pod_spec(_template_spec(obj))


def _default_job(obj: Obj) -> None:
    spec = _dict(obj, "spec")
    if spec is None:
        return
    if "completions" not in spec and "parallelism" not in spec:
        spec["completions"] = 1
    for key, value in (("parallelism", 1), ("backoffLimit", 6), ("suspend", False),
                       ("completionMode", "NonIndexed"),
                       ("podReplacementPolicy", "TerminatingOrFailed")):
        spec.setdefault(key, value)
    if not spec.get("manualSelector"):
        uid, name = obj["metadata"].get("uid", ""), obj["metadata"].get("name", "")
        spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
        template = spec.setdefault("template", {})
        if isinstance(template, dict):
            labels = template.setdefault("metadata", {}).setdefault("labels", {})
            labels.update({"batch.kubernetes.io/controller-uid": uid, "controller-uid": uid,
                           "batch.kubernetes.io/job-name": name, "job-name": name})
    default_pod_spec(_template_spec(obj))


def _default_cronjob(obj: Obj) -> None:
    spec = _dict(obj, "spec") or {}
    for key, value in (("concurrencyPolicy", "Allow"), ("suspend", False),
                       ("successfulJobsHistoryLimit", 3), ("failedJobsHistoryLimit", 1)):
        spec.setdefault(key, value)
    default_pod_spec(_dict(_dict(_dict(_dict(spec, "jobTemplate"), "spec"), "template"), "spec"))


def _default_pod(obj: Obj) -> None:
    default_pod_spec(_dict(obj, "spec"))


def _default_service(obj: Obj) -> None:
    spec = _dict(obj, "spec") or {}
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        if "clusterIP" not in spec:
            number = uuid.UUID(obj["metadata"]["uid"]).int
            spec["clusterIP"] = f"10.96.{number % 250}.{number // 250 % 250 + 2}"
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    for port in _items(spec, "ports"):
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))
    obj.setdefault("status", {}).setdefault("loadBalancer", {})


def _default_secret(obj: Obj) -> None:
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None)
    if isinstance(string_data, dict):
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()


def _default_namespace(obj: Obj) -> None:
    name = obj["metadata"].get("name", "")
    obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {}).setdefault("phase", "Active")


def _default_pvc(obj: Obj) -> None:
    (_dict(obj, "spec") or {}).setdefault("volumeMode", "Filesystem")
    obj.setdefault("status", {}).setdefault("phase", "Pending")


def _default_pv(obj: Obj) -> None:
    spec = _dict(obj, "spec") or {}
    spec.setdefault("persistentVolumeReclaimPolicy", "Retain")
    spec.setdefault("volumeMode", "Filesystem")
    obj.setdefault("status", {}).setdefault("phase", "Available")


def _default_storageclass(obj: Obj) -> None:
    obj.setdefault("reclaimPolicy", "Delete")
    obj.setdefault("volumeBindingMode", "Immediate")


DEFAULTERS: dict[str, Callable[[Obj], None]] = {
    "Pod": _default_pod, "Deployment": _default_deployment,
    "StatefulSet": _default_statefulset, "ReplicaSet": _default_replicaset,
    "DaemonSet": _default_daemonset, "Job": _default_job, "CronJob": _default_cronjob,
    "Service": _default_service, "Secret": _default_secret, "Namespace": _default_namespace,
    "PersistentVolumeClaim": _default_pvc, "PersistentVolume": _default_pv,
    "StorageClass": _default_storageclass,
}


def _qos_class(spec: Obj) -> str:
    resources = [c.get("resources") or {} for c in _items(spec, "containers")]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(
        (r.get("limits") or {}).get(k) and (r.get("requests") or r.get("limits") or {}).get(k)
        == (r.get("limits") or {}).get(k) for r in resources for k in ("cpu", "memory"))
    return "Guaranteed" if guaranteed else "Burstable"


# --- create and update ---------------------------------------------------------------------------

def prepare_create(resource: ResourceType, obj: Obj, namespace: str | None) -> Obj:
    """Copy ``obj`` with server-set metadata, defaults and initial status, ready to store."""
    obj = copy.deepcopy(obj)
    metadata = obj.setdefault("metadata", {})
    if not metadata.get("name") and metadata.get("generateName"):
        metadata["name"] = f"{metadata['generateName']}{random_suffix()}"
    if resource.namespaced:
        metadata["namespace"] = namespace
    else:
        metadata.pop("namespace", None)
    for key in ("resourceVersion", "deletionTimestamp", "selfLink"):
        metadata.pop(key, None)
    metadata["uid"] = str(uuid.uuid4())
    metadata["creationTimestamp"] = now()
    if "status" in resource.subresources:
        obj.pop("status", None)
        if not resource.custom:  # built-in types always serialize their status
            obj["status"] = copy.deepcopy(INITIAL_STATUS.get(resource.kind, {}))
    if resource.kind == "Pod":
        obj["status"] = {"phase": "Pending", "qosClass": _qos_class(_dict(obj, "spec") or {})}
    apply_defaults(resource, obj)
    if "spec" in obj:
        metadata["generation"] = 1
    return obj


def apply_defaults(resource: ResourceType, obj: Obj) -> None:
    """Fill in defaulted fields in place."""
    defaulter = DEFAULTERS.get(resource.kind)
    try:
        if defaulter is not None:
            defaulter(obj)
    except (AttributeError, TypeError, KeyError):
        pass  # a malformed object: validation reports what is wrong with it


def _spec_part(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in _TOP_LEVEL_KEEP}


def prepare_update(resource: ResourceType, old: Obj, new: Obj, subresource: str | None) -> Obj:
    """Merge ``new`` onto ``old`` as a PUT (or status PUT) would; raises 422 on immutable fields."""
    if subresource == "status":
        result = copy.deepcopy(old)
        result["status"] = copy.deepcopy(new.get("status"))
        result["metadata"]["resourceVersion"] = new.get("metadata", {}).get("resourceVersion")
        return result
    result = copy.deepcopy(new)
    metadata = result.setdefault("metadata", {})
    for key in ("uid", "creationTimestamp", "namespace", "name"):
        if key in old["metadata"]:
            metadata[key] = old["metadata"][key]
    if "managedFields" not in metadata and "managedFields" in old["metadata"]:
        metadata["managedFields"] = copy.deepcopy(old["metadata"]["managedFields"])
    if "status" in resource.subresources or resource.kind == "Namespace":
        result.pop("status", None)
        if "status" in old:
            result["status"] = copy.deepcopy(old["status"])
    _carry_allocated_fields(resource, old, result)
    apply_defaults(resource, result)
    check_immutable(resource, old, result)
    if "generation" in old["metadata"]:
        changed = _spec_part(old) != _spec_part(result)
        metadata["generation"] = old["metadata"]["generation"] + int(changed)
    return result


def _carry_allocated_fields(resource: ResourceType, old: Obj, new: Obj) -> None:
    if resource.kind == "Service":
        for key in ("clusterIP", "clusterIPs"):
            if key in (old.get("spec") or {}) and isinstance(new.get("spec"), dict):
                new["spec"].setdefault(key, old["spec"][key])


# --- immutability --------------------------------------------------------------------------------

_POD_MUTABLE = ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds")
_STS_MUTABLE = ("replicas", "ordinals", "template", "updateStrategy", "revisionHistoryLimit",
                "persistentVolumeClaimRetentionPolicy", "minReadySeconds")
_PV_NON_SOURCE = ("accessModes", "capacity", "claimRef", "mountOptions", "nodeAffinity",
                  "persistentVolumeReclaimPolicy", "storageClassName", "volumeMode",
                  "volumeAttributesClassName")
_FORBIDDEN_MESSAGES = {
    "StatefulSet": "Forbidden: updates to statefulset spec for fields other than 'replicas', "
                   "'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', "
                   "'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
    "PersistentVolumeClaim": "Forbidden: spec is immutable after creation except "
                             "resources.requests and volumeAttributesClassName for bound claims",
    "Pod": "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
           "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
           "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds`",
}


def _without_keys(spec: Any, keys: tuple[str, ...]) -> Any:
    return {k: v for k, v in spec.items() if k not in keys} if isinstance(spec, dict) else spec


def _pod_spec_shape(spec: Any) -> Any:
    spec = copy.deepcopy(_without_keys(spec, _POD_MUTABLE))
    for key in ("containers", "initContainers"):
        for container in _items(spec, key):
            container.pop("image", None)
    return spec


def _pvc_shape(spec: Any) -> Any:
    spec = copy.deepcopy(_without_keys(spec, ("volumeAttributesClassName",)))
    if isinstance(spec, dict):
        (_dict(spec, "resources") or {}).pop("requests", None)
        spec.pop("volumeName", None)
    return spec


def _spec_shapes(kind: str) -> Callable[[Any], Any] | None:
    return {
        "StatefulSet": lambda spec: _without_keys(spec, _STS_MUTABLE),
        "PersistentVolumeClaim": _pvc_shape,
        "Pod": _pod_spec_shape,
    }.get(kind)


_IMMUTABLE_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "Job": (("spec", "selector"), ("spec", "template"), ("spec", "completionMode")),
    "Deployment": (("spec", "selector"),),
    "ReplicaSet": (("spec", "selector"),),
    "DaemonSet": (("spec", "selector"),),
    "StatefulSet": (("spec", "selector"),),
    "StorageClass": (("parameters",), ("provisioner",), ("reclaimPolicy",),
                     ("volumeBindingMode",)),
}


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def immutability_causes(kind: str, old: Obj, new: Obj) -> list[dict[str, str]]:
    """One cause per immutable field ``new`` changes."""
    causes = [{"reason": "FieldValueInvalid", "field": ".".join(path),
               "message": "Invalid value: field is immutable"}
              for path in _IMMUTABLE_FIELDS.get(kind, ()) if _get(old, path) != _get(new, path)]
    shape = _spec_shapes(kind)
    if shape and shape(old.get("spec")) != shape(new.get("spec")):
        causes.append({"reason": "FieldValueForbidden", "field": "spec",
                       "message": _FORBIDDEN_MESSAGES[kind]})
    if kind == "PersistentVolume":
        before, after = (_without_keys(o.get("spec"), _PV_NON_SOURCE) for o in (old, new))
        if before != after:
            causes.append({"reason": "FieldValueForbidden", "field": "spec.persistentvolumesource",
                           "message": "Forbidden: spec.persistentvolumesource is forbidden "
                                      "once set"})
    if kind in ("Secret", "ConfigMap") and old.get("immutable"):
        for key in ("data", "binaryData", "immutable"):
            if old.get(key) != new.get(key):
                causes.append({"reason": "FieldValueForbidden", "field": key,
                               "message": "Forbidden: field is immutable when `immutable` is set"})
    return causes


def check_immutable(resource: ResourceType, old: Obj, new: Obj) -> None:
    """Raise 422 Invalid if ``new`` changes fields the apiserver does not let change."""
    causes = immutability_causes(resource.kind, old, new)
    if causes:
        raise invalid(resource, str(old["metadata"].get("name")), causes)

