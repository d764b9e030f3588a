"""Hand-written JSON schemas for the Flux custom resources (only the fields migrator uses).

Flux ships CRDs, not JSON schemas the validator library knows, so these cover what we read and
write: HelmRelease chart/chartRef, interval, values, valuesFrom, suspend and driftDetection.
Unknown ``spec`` fields are allowed, as the point is to catch our mistakes, not Flux's.
"""

from __future__ import annotations

from typing import Any

OBJECT_META_REF = ("https://kubernetes.io/api/_definitions.json"
                   "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")

_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"}
_STRING = {"type": "string"}
_BOOL = {"type": "boolean"}
_NAME_REF = {"type": "object", "required": ["name"], "additionalProperties": False,
             "properties": {"name": _STRING}}


def _cross_ref(kinds: list[str]) -> dict[str, Any]:
    return {"type": "object", "required": ["kind", "name"], "additionalProperties": False,
            "properties": {"apiVersion": _STRING, "kind": {"enum": kinds},
                           "name": {"type": "string", "minLength": 1}, "namespace": _STRING}}


def _custom_resource(api_versions: list[str], kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "$id": f"https://fluxcd.io/schemas/{kind.lower()}",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"enum": api_versions},
            "kind": {"const": kind},
            "metadata": {"allOf": [{"$ref": OBJECT_META_REF}, {"required": ["name"]}]},
            "spec": {"type": "object", **spec},
            "status": {"type": "object"},
        },
    }


_CHART_TEMPLATE = {
    "type": "object", "required": ["spec"], "additionalProperties": False,
    "properties": {
        "metadata": {"type": "object"},
        "spec": {
            "type": "object", "required": ["chart", "sourceRef"], "additionalProperties": False,
            "properties": {
                "chart": {"type": "string", "minLength": 1},
                "version": _STRING,
                "sourceRef": _cross_ref(["HelmRepository", "GitRepository", "Bucket"]),
                "interval": _DURATION,
                "reconcileStrategy": {"enum": ["ChartVersion", "Revision"]},
                "valuesFiles": {"type": "array", "items": _STRING},
                "ignoreMissingValuesFiles": _BOOL,
                "verify": {"type": "object"},
            },
        },
    },
}

_VALUES_REFERENCE = {
    "type": "object", "required": ["kind", "name"], "additionalProperties": False,
    "properties": {
        "kind": {"enum": ["Secret", "ConfigMap"]},
        "name": {"type": "string", "minLength": 1, "maxLength": 253},
        "valuesKey": {"type": "string", "maxLength": 253},
        "targetPath": {"type": "string", "maxLength": 250},
        "optional": _BOOL,
    },
}

HELM_RELEASE = _custom_resource(["helm.toolkit.fluxcd.io/v2"], "HelmRelease", {
    "required": ["interval"],
    "properties": {
        "chart": _CHART_TEMPLATE,
        "chartRef": _cross_ref(["OCIRepository", "HelmChart"]),
        "interval": _DURATION,
        "timeout": _DURATION,
        "values": {"type": "object"},
        "valuesFrom": {"type": "array", "items": _VALUES_REFERENCE},
        "suspend": _BOOL,
        "releaseName": {"type": "string", "maxLength": 53},
        "targetNamespace": _STRING,
        "storageNamespace": _STRING,
        "driftDetection": {
            "type": "object", "additionalProperties": False,
            "properties": {"mode": {"enum": ["enabled", "warn", "disabled"]},
                           "ignore": {"type": "array", "items": {"type": "object"}}},
        },
        "dependsOn": {"type": "array", "items": {
            "type": "object", "required": ["name"], "additionalProperties": False,
            "properties": {"name": _STRING, "namespace": _STRING}}},
    },
})

KUSTOMIZATION = _custom_resource(["kustomize.toolkit.fluxcd.io/v1"], "Kustomization", {
    "required": ["interval", "prune", "sourceRef"],
    "properties": {
        "interval": _DURATION,
        "prune": _BOOL,
        "path": _STRING,
        "suspend": _BOOL,
        "sourceRef": _cross_ref(["OCIRepository", "GitRepository", "Bucket"]),
        "targetNamespace": _STRING,
        "postBuild": {"type": "object"},
    },
})

_SOURCE_VERSIONS = ["source.toolkit.fluxcd.io/v1", "source.toolkit.fluxcd.io/v1beta2"]

GIT_REPOSITORY = _custom_resource(_SOURCE_VERSIONS, "GitRepository", {
    "required": ["interval", "url"],
    "properties": {"url": {"type": "string", "pattern": "^(http|https|ssh)://.*$"},
                   "interval": _DURATION, "ref": {"type": "object"}, "secretRef": _NAME_REF,
                   "suspend": _BOOL},
})

HELM_REPOSITORY = _custom_resource(_SOURCE_VERSIONS, "HelmRepository", {
    "required": ["url"],
    "properties": {"url": {"type": "string", "pattern": "^(http|https|oci)://.*$"},
                   "type": {"enum": ["default", "oci"]}, "interval": _DURATION,
                   "secretRef": _NAME_REF, "suspend": _BOOL},
})

OCI_REPOSITORY = _custom_resource(_SOURCE_VERSIONS, "OCIRepository", {
    "required": ["interval", "url"],
    "properties": {"url": {"type": "string", "pattern": "^oci://.*$"}, "interval": _DURATION,
                   "ref": {"type": "object", "additionalProperties": False,
                           "properties": {"tag": _STRING, "semver": _STRING, "digest": _STRING,
                                          "semverFilter": _STRING}},
                   "secretRef": _NAME_REF, "suspend": _BOOL},
})

FLUX_SCHEMAS: dict[str, dict[str, Any]] = {
    "HelmRelease": HELM_RELEASE,
    "Kustomization": KUSTOMIZATION,
    "GitRepository": GIT_REPOSITORY,
    "HelmRepository": HELM_REPOSITORY,
    "OCIRepository": OCI_REPOSITORY,
}
