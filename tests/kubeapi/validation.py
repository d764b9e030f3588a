"""Object validation: the official JSON schemas (strict) plus a few apiserver semantic rules.

``kubernetes_validate.validate()`` re-reads a 1.8 MB definitions file and builds a new validator
on every call. We use the same bundled schemas, picked the same way (newest bundled version,
``-local-strict`` directory, ``<kind>-<group>-<version>.json``), but build each validator once,
and report every error rather than the first. ``tests/test_kubeapi.py`` checks that both agree.
"""

from __future__ import annotations

import base64
import binascii
import functools
import importlib.resources
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import kubernetes_validate
from referencing import Registry, Resource

from .errors import invalid
from .flux_schemas import FLUX_SCHEMAS
from .resources import ResourceType
from .selectors import label_selector_from_spec

KUBE_VERSION: str = kubernetes_validate.latest_version()
DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"

Cause = dict[str, str]


def _schema_file(name: str) -> Any:
    root = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    return json.loads((root / f"v{KUBE_VERSION}-local-strict" / name).read_text())


def schema_file_name(api_version: str, kind: str) -> str:
    """``apps/v1 Deployment`` -> ``deployment-apps-v1.json`` (the library's naming)."""
    slug = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    return f"{kind.lower()}-{slug}.json"


@functools.cache
def definitions() -> dict[str, Any]:
    """The shared ``$defs`` of the bundled strict schemas."""
    defs: dict[str, Any] = _schema_file("_definitions.json")["$defs"]
    return defs


@functools.cache
def _registry() -> Registry:
    contents = _schema_file("_definitions.json")
    registry: Registry = Registry().with_resource(DEFINITIONS_ID,
                                                  Resource.from_contents(contents))
    return registry


@functools.cache
def kind_schema(api_version: str, kind: str) -> dict[str, Any] | None:
    """The top-level JSON schema of a kind (official or Flux), or None if there is none."""
    if kind in FLUX_SCHEMAS:
        return FLUX_SCHEMAS[kind]
    try:
        schema: dict[str, Any] = _schema_file(schema_file_name(api_version, kind))
    except FileNotFoundError:
        return None
    return schema


@functools.cache
def validator_for(api_version: str, kind: str) -> jsonschema.Draft202012Validator | None:
    """A cached validator for one kind, or None when no schema exists for it."""
    schema = kind_schema(api_version, kind)
    if schema is None:
        return None
    return jsonschema.Draft202012Validator(schema, registry=_registry())


def field_path(parts: Any) -> str:
    """``["spec", "containers", 0, "name"]`` -> ``spec.containers[0].name``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _error_causes(error: jsonschema.ValidationError) -> Iterator[Cause]:
    path = field_path(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})
        for name in sorted(set(error.instance) - set(known)):
            child = f"{path}.{name}" if path else name
            yield {"reason": "FieldValueInvalid", "message": "field not declared in schema",
                   "field": child}
        return
    reason = {"required": "FieldValueRequired", "enum": "FieldValueNotSupported",
              "type": "FieldValueTypeInvalid"}.get(str(error.validator), "FieldValueInvalid")
    yield {"reason": reason, "message": error.message, "field": path}


def schema_causes(obj: dict[str, Any]) -> list[Cause]:
    """Every schema violation of ``obj``; raises LookupError if there is no schema for its kind."""
    validator = validator_for(str(obj.get("apiVersion")), str(obj.get("kind")))
    if validator is None:
        raise LookupError(f"no schema for {obj.get('apiVersion')} {obj.get('kind')}")
    causes = [c for e in validator.iter_errors(obj) for c in _error_causes(e)]
    return sorted(causes, key=lambda c: c["field"])


def validate_object(resource: ResourceType, obj: dict[str, Any]) -> None:
    """Raise a 422 ApiError listing schema and semantic problems of ``obj``, if any."""
    causes = schema_causes(obj)
    if not causes:  # semantic rules assume the shapes the schema guarantees
        causes = semantic_causes(resource, obj)
    if causes:
        raise invalid(resource, str((obj.get("metadata") or {}).get("name", "")), causes)


# --- semantic rules (a small subset of the apiserver's, with its messages) ---------------------

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")

_NAME_RULES: dict[str, tuple[re.Pattern[str], int, str]] = {
    "subdomain": (_SUBDOMAIN, 253, "a lowercase RFC 1123 subdomain must consist of lower case "
                  "alphanumeric characters, '-' or '.', and must start and end with an "
                  "alphanumeric character"),
    "label": (_LABEL, 63, "a lowercase RFC 1123 label must consist of lower case alphanumeric "
              "characters or '-', and must start and end with an alphanumeric character"),
    "dns1035": (_DNS1035, 63, "a DNS-1035 label must consist of lower case alphanumeric "
                "characters or '-', start with an alphabetic character, and end with an "
                "alphanumeric character"),
}
_NAME_RULE_BY_KIND = {"Namespace": "label", "Service": "dns1035"}

POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
_SELECTOR_KINDS = ("Deployment", "StatefulSet", "ReplicaSet", "DaemonSet")


def _cause(field: str, message: str, reason: str = "FieldValueInvalid") -> Cause:
    return {"reason": reason, "message": message, "field": field}


def _dig(obj: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def _name_causes(resource: ResourceType, obj: dict[str, Any]) -> list[Cause]:
    name = obj["metadata"].get("name")
    if not name:
        return [_cause("metadata.name", "Required value: name or generateName is required",
                       "FieldValueRequired")]
    pattern, limit, why = _NAME_RULES[_NAME_RULE_BY_KIND.get(resource.kind, "subdomain")]
    if len(name) > limit:
        return [_cause("metadata.name", f'Invalid value: "{name}": must be no more than '
                       f"{limit} characters")]
    if not pattern.match(name):
        return [_cause("metadata.name", f'Invalid value: "{name}": {why}')]
    return []


def label_causes(labels: dict[str, str] | None, path: str) -> list[Cause]:
    """Label key and value syntax (63-character names and values, optional DNS prefix)."""
    causes = []
    for key, value in (labels or {}).items():
        prefix, _, name = key.rpartition("/")
        if (prefix and not _SUBDOMAIN.match(prefix)) or len(name) > 63 or not (
                _QUALIFIED_NAME.match(name)):
            causes.append(_cause(path, f'Invalid value: "{key}": name part must consist of '
                                 "alphanumeric characters, '-', '_' or '.', and must start and "
                                 "end with an alphanumeric character (at most 63 characters)"))
        if len(value or "") > 63 or not _LABEL_VALUE.match(value or ""):
            causes.append(_cause(f"{path}", f'Invalid value: "{value}": a valid label must be an '
                                 "empty string or consist of alphanumeric characters, '-', '_' "
                                 "or '.', and must start and end with an alphanumeric character "
                                 "(at most 63 characters)"))
    return causes


def _container_causes(containers: list[dict[str, Any]], path: str,
                      volumes: set[str]) -> list[Cause]:
    causes, seen = [], set()
    for index, container in enumerate(containers):
        here = f"{path}[{index}]"
        name = container.get("name", "")
        if name in seen:
            causes.append(_cause(f"{here}.name", f'Duplicate value: "{name}"',
                                 "FieldValueDuplicate"))
        seen.add(name)
        if not _LABEL.match(name):
            causes.append(_cause(f"{here}.name", f'Invalid value: "{name}": '
                                 + _NAME_RULES["label"][2]))
        if not container.get("image"):
            causes.append(_cause(f"{here}.image", "Required value", "FieldValueRequired"))
        for m_index, mount in enumerate(container.get("volumeMounts") or []):
            if mount.get("name") not in volumes:
                causes.append(_cause(f"{here}.volumeMounts[{m_index}].name",
                                     f'Not found: "{mount.get("name")}"', "FieldValueNotFound"))
    return causes


def _pod_spec_causes(kind: str, spec: dict[str, Any], path: str) -> list[Cause]:
    volumes = [v.get("name") for v in spec.get("volumes") or []]
    causes = [_cause(f"{path}.volumes", f'Duplicate value: "{name}"', "FieldValueDuplicate")
              for name in {n for n in volumes if volumes.count(n) > 1}]
    if not spec.get("containers"):
        causes.append(_cause(f"{path}.containers", "Required value", "FieldValueRequired"))
    for key in ("initContainers", "containers"):
        causes += _container_causes(spec.get(key) or [], f"{path}.{key}", set(volumes))
    allowed = ("OnFailure", "Never") if kind in ("Job", "CronJob") else (
        "Always", "OnFailure", "Never")
    policy = spec.get("restartPolicy")
    if policy is not None and policy not in allowed:
        supported = ", ".join(f'"{a}"' for a in allowed)
        causes.append(_cause(f"{path}.restartPolicy", f'Unsupported value: "{policy}": '
                             f"supported values: {supported}", "FieldValueNotSupported"))
    return causes


def _workload_causes(kind: str, obj: dict[str, Any]) -> list[Cause]:
    path = POD_SPEC_PATHS.get(kind)
    spec = _dig(obj, path) if path else None
    if path is None:
        return []
    if not isinstance(spec, dict):
        return [_cause(field_path(path), "Required value", "FieldValueRequired")]
    causes = _pod_spec_causes(kind, spec, field_path(path))
    template_labels = _dig(obj, (*path[:-1], "metadata", "labels"))
    causes += label_causes(template_labels, field_path((*path[:-1], "metadata", "labels")))
    if kind in _SELECTOR_KINDS:
        causes += _selector_causes(obj.get("spec") or {})
    return causes


def _selector_causes(spec: dict[str, Any]) -> list[Cause]:
    selector = spec.get("selector")
    if not selector:
        return [_cause("spec.selector", "Required value", "FieldValueRequired")]
    try:
        matcher = label_selector_from_spec(selector)
    except ValueError as error:
        return [_cause("spec.selector", f"Invalid value: {error}")]
    labels = _dig(spec, ("template", "metadata", "labels")) or {}
    if not matcher.requirements or not matcher.matches(labels):
        return [_cause("spec.template.metadata.labels", f"Invalid value: {labels}: `selector` "
                       "does not match template `labels`")]
    return []


def _data_causes(kind: str, obj: dict[str, Any]) -> list[Cause]:
    if kind not in ("Secret", "ConfigMap"):
        return []
    keys = list(obj.get("data") or {}) + list(obj.get("binaryData") or {}) + list(
        obj.get("stringData") or {})
    causes = [_cause(f"data[{key}]", f'Invalid value: "{key}": a valid config key must consist '
                     "of alphanumeric characters, '-', '_' or '.'")
              for key in keys if not _CONFIG_KEY.match(key) or len(key) > 253]
    if kind == "Secret":
        causes += [_cause(f"data[{key}]", "Invalid value: illegal base64 data")
                   for key, value in (obj.get("data") or {}).items() if not _is_base64(value)]
    return causes


def _is_base64(value: Any) -> bool:
    try:
        base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _pvc_causes(kind: str, obj: dict[str, Any]) -> list[Cause]:
    if kind != "PersistentVolumeClaim":
        return []
    spec = obj.get("spec") or {}
    causes = []
    if not spec.get("accessModes"):
        causes.append(_cause("spec.accessModes", "Required value: at least 1 access mode is "
                             "required", "FieldValueRequired"))
    if "storage" not in (_dig(spec, ("resources", "requests")) or {}):
        causes.append(_cause("spec.resources[storage]", "Required value",
                             "FieldValueRequired"))
    return causes


def _flux_causes(kind: str, obj: dict[str, Any]) -> list[Cause]:
    if kind != "HelmRelease":
        return []
    spec = obj.get("spec") or {}
    if ("chart" in spec) == ("chartRef" in spec):
        return [_cause("spec", "Invalid value: either chart or chartRef must be set")]
    return []


RULES: tuple[Callable[[str, dict[str, Any]], list[Cause]], ...] = (
    _workload_causes, _data_causes, _pvc_causes, _flux_causes)


def semantic_causes(resource: ResourceType, obj: dict[str, Any]) -> list[Cause]:
    """Apiserver checks beyond the schema: names, labels, pod specs, selectors, a few kinds."""
    metadata = obj.get("metadata") or {}
    obj = {**obj, "metadata": metadata}
    causes = _name_causes(resource, obj) + label_causes(metadata.get("labels"),
                                                        "metadata.labels")
    for rule in RULES:
        causes += rule(resource.kind, obj)
    return causes
