"""A realistic Cozystack ``tenant-media`` namespace for the Kubernetes API test server.

Sonarr, Radarr and Prowlarr from the bjw-s app-template chart with config PVCs on the Linstor
``replicated`` class, a shared RWX ``media`` PVC on an NFS class, Flux HelmReleases, nodes, and the
COSI credentials Secret of a ``media`` Bucket app.
"""

from __future__ import annotations

import base64
import json
from typing import Any

NAMESPACE = "tenant-media"
BUCKET_NAME = "bucket-7f3c2a9e-media"  # assigned by COSI; never the Bucket app's own name
SECRET_NAME = "bucket-media-admin-credentials"
S3_HOST = "seaweedfs-s3.tenant-root.svc:8333"
APPS = {"sonarr": 911, "radarr": 911, "prowlarr": 1000}


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def namespace(name: str = NAMESPACE) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def storage_classes() -> list[dict[str, Any]]:
    def sc(name: str, provisioner: str, **extra: Any) -> dict[str, Any]:
        return {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": name},
            "provisioner": provisioner,
            "reclaimPolicy": "Retain",
            "volumeBindingMode": "WaitForFirstConsumer",
            **extra,
        }

    return [
        sc(
            "local",
            "linstor.csi.linbit.com",
            parameters={"linstor.csi.linbit.com/placementCount": "1"},
        ),
        sc(
            "replicated",
            "linstor.csi.linbit.com",
            parameters={"linstor.csi.linbit.com/placementCount": "3"},
        ),
        sc("nfs", "nfs.csi.k8s.io", parameters={"server": "nas.lan", "share": "/export/media"}),
        sc("seaweedfs-storage", "seaweedfs-csi-driver"),
    ]


def nodes(cordoned: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    result = []
    for name in ("worker-1", "worker-2", "worker-3"):
        node: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }
        if name in cordoned:
            node["spec"] = {
                "unschedulable": True,
                "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}],
            }
        result.append(node)
    return result


def pv_name(claim: str, namespace: str = NAMESPACE) -> str:
    """The PersistentVolume bound to ``claim`` (unique across the namespaces of one cluster)."""
    return f"pvc-{claim}" if namespace == NAMESPACE else f"pvc-{namespace}-{claim}"


def pvc(
    name: str,
    size: str,
    storage_class: str,
    modes: list[str],
    release: str | None,
    namespace: str = NAMESPACE,
) -> dict[str, Any]:
    labels = (
        {"app.kubernetes.io/instance": release, "helm.toolkit.fluxcd.io/name": release}
        if release
        else {}
    )
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "accessModes": modes,
            "storageClassName": storage_class,
            "resources": {"requests": {"storage": size}},
            "volumeName": pv_name(name, namespace),
        },
        "status": {"phase": "Bound", "accessModes": modes, "capacity": {"storage": size}},
    }


def pv(
    claim: str,
    size: str,
    storage_class: str,
    modes: list[str],
    driver: str,
    namespace: str = NAMESPACE,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv_name(claim, namespace)},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": modes,
            "storageClassName": storage_class,
            "persistentVolumeReclaimPolicy": "Retain",
            "claimRef": {"namespace": namespace, "name": claim},
            "csi": {"driver": driver, "volumeHandle": pv_name(claim, namespace)},
        },
    }


def deployment(
    app: str, uid: int, node: str | None = None, namespace: str = NAMESPACE
) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": app, "app.kubernetes.io/instance": app}
    container = {
        "name": "app",
        "image": f"ghcr.io/onedr0p/{app}:rolling",
        "env": [{"name": "PUID", "value": str(uid)}, {"name": "TZ", "value": "Europe/Berlin"}],
        "volumeMounts": [
            {"name": "config", "mountPath": "/config"},
            {"name": "media", "mountPath": "/media"},
        ],
    }
    pod_spec: dict[str, Any] = {
        "securityContext": {"fsGroup": uid, "fsGroupChangePolicy": "OnRootMismatch"},
        "containers": [container],
        "volumes": [
            {"name": "config", "persistentVolumeClaim": {"claimName": f"{app}-config"}},
            {"name": "media", "persistentVolumeClaim": {"claimName": "media"}},
        ],
    }
    if app == "prowlarr":  # an indexer manager has no media library
        container["volumeMounts"] = container["volumeMounts"][:1]
        pod_spec["volumes"] = pod_spec["volumes"][:1]
    if node:
        pod_spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": app,
            "namespace": namespace,
            "labels": {
                **labels,
                "helm.toolkit.fluxcd.io/name": app,
                "helm.toolkit.fluxcd.io/namespace": namespace,
            },
        },
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def helmrelease(
    app: str,
    drift: str = "disabled",
    kustomization: str | None = "apps",
    namespace: str = NAMESPACE,
) -> dict[str, Any]:
    labels = {}
    if kustomization:
        labels = {
            "kustomize.toolkit.fluxcd.io/name": kustomization,
            "kustomize.toolkit.fluxcd.io/namespace": "flux-system",
        }
    values: dict[str, Any] = {
        "controllers": {
            app: {
                "containers": {
                    "app": {"image": {"repository": f"ghcr.io/onedr0p/{app}", "tag": "rolling"}}
                }
            }
        },
        "persistence": {"config": {"existingClaim": f"{app}-config"}},
    }
    if app != "prowlarr":
        values["persistence"]["media"] = {
            "existingClaim": "media",
            "globalMounts": [{"path": "/media"}],
        }
    return {
        "apiVersion": "helm.toolkit.fluxcd.io/v2",
        "kind": "HelmRelease",
        "metadata": {"name": app, "namespace": namespace, "labels": labels},
        "spec": {
            "interval": "30m",
            "chart": {
                "spec": {
                    "chart": "app-template",
                    "version": "3.7.3",
                    "sourceRef": {
                        "kind": "HelmRepository",
                        "name": "bjw-s",
                        "namespace": "flux-system",
                    },
                }
            },
            "driftDetection": {"mode": drift},
            "values": values,
        },
    }


def credentials_secret(
    host: str = S3_HOST,
    access_key: str = "AKIAEXAMPLE",
    secret_key: str = "topsecretvalue",
    bucket: str = BUCKET_NAME,
    namespace: str = NAMESPACE,
) -> dict[str, Any]:
    info = {
        "metadata": {"name": "bc-media-admin"},
        "spec": {
            "bucketName": bucket,
            "authenticationType": "KEY",
            "secretS3": {
                "endpoint": f"https://{host}",
                "region": "us-east-1",
                "accessKeyID": access_key,
                "accessSecretKey": secret_key,
            },
            "protocols": ["s3"],
        },
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET_NAME, "namespace": namespace},
        "type": "Opaque",
        "data": {
            "accessKey": _b64(access_key),
            "secretKey": _b64(secret_key),
            "endpoint": _b64(host),
            "bucketName": _b64(bucket),
            "BucketInfo": _b64(json.dumps(info)),
        },
    }


def tenant_media(
    drift: str = "disabled",
    cordoned: tuple[str, ...] = (),
    secret: dict[str, Any] | None = None,
    ns: str = NAMESPACE,
    with_nodes: bool = True,
) -> list[dict[str, Any]]:
    """Every object of the namespace ``ns``, in an order the API server accepts.

    ``with_nodes=False`` leaves the Nodes out (on a real control plane the kubelet registers them).
    """
    objects: list[dict[str, Any]] = [
        namespace(ns),
        namespace("flux-system"),
        *storage_classes(),
        *(nodes(cordoned) if with_nodes else []),
    ]
    for app in APPS:
        objects.append(
            pv(
                f"{app}-config",
                "2Gi",
                "replicated",
                ["ReadWriteOnce"],
                "linstor.csi.linbit.com",
                ns,
            )
        )
        objects.append(pvc(f"{app}-config", "2Gi", "replicated", ["ReadWriteOnce"], app, ns))
    objects.append(pv("media", "4Ti", "nfs", ["ReadWriteMany"], "nfs.csi.k8s.io", ns))
    objects.append(pvc("media", "4Ti", "nfs", ["ReadWriteMany"], None, ns))
    for index, (app, uid) in enumerate(APPS.items()):
        objects.append(helmrelease(app, drift=drift, namespace=ns))
        objects.append(deployment(app, uid, node=f"worker-{index + 1}", namespace=ns))
    objects.append(secret or credentials_secret(namespace=ns))
    return objects
