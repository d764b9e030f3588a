"""The claims apps mount after the swap: for ``s3://`` targets a static PersistentVolume over the
bucket's prefix (seaweedfs-csi-driver) and the PVC bound to it."""

from __future__ import annotations

import math
from typing import Any

from migrator.manifests.pod import kube_object, labels
from migrator.quantity import format_gi

SEAWEEDFS_CSI_DRIVER = "seaweedfs-csi-driver"
SWAP_CLAIM_SUFFIX = "-seaweedfs"


def swap_claim_name(plan: dict[str, Any], volume: dict[str, Any]) -> str:
    """The claim apps mount after the swap: the run's new PVC for ``pvc:`` targets, or
    ``<volume>-seaweedfs`` (a static PVC over the bucket) for ``s3://`` targets."""
    if plan["spec"]["target"]["type"] == "pvc":
        return str(volume["target"]["pvc"])
    return f"{volume['name']}{SWAP_CLAIM_SUFFIX}"[:63].rstrip("-")


def seaweedfs_volume_name(plan: dict[str, Any], volume: dict[str, Any]) -> str:
    """The static PersistentVolume's name, also its CSI ``volumeHandle``: PVs are cluster-wide,
    so the namespace is part of it; the driver finds a PV by the handle's name first."""
    namespace = plan["spec"]["source"].get("namespace") or "local"
    return f"{namespace}-{swap_claim_name(plan, volume)}"[:253].rstrip("-.")


def seaweedfs_path(plan: dict[str, Any], volume: dict[str, Any]) -> str:
    """Where the copy put the volume, as the SeaweedFS filer sees it: S3 buckets live under
    ``/buckets/<bucketName>``, and the copy wrote to ``<prefix>/<volume>/`` inside it."""
    target = plan["spec"]["target"]
    parts = [target["bucket"], target.get("prefix", ""), volume["name"]]
    return "/buckets/" + "/".join(p.strip("/") for p in parts if p.strip("/"))


def swap_capacity(volume: dict[str, Any]) -> str:
    """The static claim's size. seaweedfs-csi-driver enforces the PV capacity as a per-mount
    quota, so it is at least the source's capacity and what it holds, plus headroom."""
    source = volume["source"]
    used = math.ceil((source.get("usedBytes") or 0) * 1.2)
    return format_gi(max(source.get("capacityBytes") or 0, used))


def build_seaweedfs_volume(plan: dict[str, Any], volume: dict[str, Any]) -> dict[str, Any]:
    """A static PersistentVolume exposing the volume's prefix of the bucket through the
    seaweedfs-csi-driver (FUSE, ReadWriteMany), pre-bound to :func:`build_seaweedfs_claim`.

    ``collection`` is the bucket's own collection (SeaweedFS stores each bucket in a collection of
    its name), so files written through the mount belong to the bucket like those the copy wrote.
    ``Retain``: deleting the claim never deletes the data.
    """
    target = plan["spec"]["target"]
    name = seaweedfs_volume_name(plan, volume)
    namespace = plan["spec"]["source"].get("namespace")
    spec: dict[str, Any] = {
        "capacity": {"storage": swap_capacity(volume)},
        "accessModes": ["ReadWriteMany"],
        "persistentVolumeReclaimPolicy": "Retain",
        "storageClassName": "",
        "volumeMode": "Filesystem",
        "claimRef": {"namespace": namespace, "name": swap_claim_name(plan, volume)},
        "csi": {
            "driver": SEAWEEDFS_CSI_DRIVER,
            "volumeHandle": name,
            "volumeAttributes": {
                "path": seaweedfs_path(plan, volume),
                "collection": target["bucket"],
            },
        },
    }
    manifest = kube_object("v1", "PersistentVolume", name, plan, labels(plan, volume, "swap"), spec)
    manifest["metadata"].pop("namespace", None)  # cluster-scoped
    return manifest


def build_seaweedfs_claim(plan: dict[str, Any], volume: dict[str, Any]) -> dict[str, Any]:
    """The PVC apps mount after the swap, bound to :func:`build_seaweedfs_volume` by name.

    ``storageClassName: ""`` keeps a default StorageClass from provisioning a new, empty volume.
    """
    spec = {
        "storageClassName": "",
        "volumeName": seaweedfs_volume_name(plan, volume),
        "accessModes": ["ReadWriteMany"],
        "volumeMode": "Filesystem",
        "resources": {"requests": {"storage": swap_capacity(volume)}},
    }
    return kube_object(
        "v1",
        "PersistentVolumeClaim",
        swap_claim_name(plan, volume),
        plan,
        labels(plan, volume, "swap"),
        spec,
    )
