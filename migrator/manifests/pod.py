"""The pieces every agent pod shares: Job names and labels, the source and destination mounts,
the S3 CA, security contexts (baseline or restricted, as which user), node affinity, deadlines."""

from __future__ import annotations

import math
from typing import Any

MANAGED_BY = {"app.kubernetes.io/managed-by": "migrator"}
LABEL_PLAN = "migrator.cozystack.io/plan"
LABEL_VOLUME = "migrator.cozystack.io/volume"
LABEL_PHASE = "migrator.cozystack.io/phase"
LABEL_STEP = "migrator.cozystack.io/step"
SOURCE_MOUNT = "/mnt/source"
DEST_MOUNT = "/mnt/dest"
DEST_REMOTE = "dest"
COPY_RATE_FLOOR = 10 * 2**20  # bytes/s assumed when sizing activeDeadlineSeconds
READ_CAPS = ("DAC_OVERRIDE",)  # what root needs to read and search files of any owner
DEFAULT_CREDENTIALS_SECRET = "migrator-s3-credentials"
BACKUP_CREDENTIALS_SECRET = "migrator-backup-credentials"  # off-site, local mode


def job_name(step: str, volume: str) -> str:
    """``migrator-<step>-<volume>``, cut to 63 characters (Job names become label values)."""
    return f"migrator-{step}-{volume}"[:63].rstrip("-")


def labels(plan: dict[str, Any], volume: dict[str, Any], step: str) -> dict[str, str]:
    """The labels of a volume's objects for ``step``: managed-by, plan, volume, phase, step."""
    return {
        **MANAGED_BY,
        "app.kubernetes.io/name": "migrator",
        LABEL_PLAN: plan["metadata"]["name"],
        LABEL_VOLUME: volume["name"],
        LABEL_PHASE: volume["role"],
        LABEL_STEP: step,
    }


CA_MOUNT = "/etc/migrator/s3-ca"
CA_FILE = f"{CA_MOUNT}/ca.crt"


def trust_ca(plan: dict[str, Any], pod: dict[str, Any]) -> None:
    """Mount the plan's S3 CA bundle (``spec.target.caBundle``) into every container of ``pod``
    and point rclone (RCLONE_CA_CERT) and boto3/migrator (AWS_CA_BUNDLE) at it.

    A ConfigMap key in cluster mode; in local mode a file on this host (a hostPath volume, which
    the local executor maps to that file).
    """
    bundle = plan["spec"]["target"].get("caBundle")
    if not bundle:
        return
    if "configMap" in bundle:
        source: dict[str, Any] = {
            "configMap": {
                "name": bundle["configMap"],
                "items": [{"key": bundle["key"], "path": "ca.crt"}],
            }
        }
        mount = {"name": "s3-ca", "mountPath": CA_MOUNT, "readOnly": True}
    else:
        source = {"hostPath": {"path": bundle["path"], "type": "File"}}
        mount = {"name": "s3-ca", "mountPath": CA_FILE, "readOnly": True}
    pod["volumes"].append({"name": "s3-ca", **source})
    for container in pod["containers"]:
        container["volumeMounts"].append(dict(mount))
        container["env"] += [
            {"name": "RCLONE_CA_CERT", "value": CA_FILE},
            {"name": "AWS_CA_BUNDLE", "value": CA_FILE},
        ]


def secret_ref(secret: str, key: str) -> dict[str, Any]:
    """An env ``valueFrom`` reading ``key`` of the Secret ``secret`` (never the value itself)."""
    return {"secretKeyRef": {"name": secret, "key": key}}


def agent_volumes(plan: dict[str, Any], volume: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod volumes of a copy or verify agent: the source claim (read-only), a /tmp emptyDir
    and, for ``pvc:`` targets, the new claim."""
    source = volume["source"]
    claim = source.get("pvc", volume["name"])
    volumes: list[dict[str, Any]] = [
        {"name": "source", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
    ]
    if plan["spec"]["target"]["type"] == "pvc":
        dest = volume["target"]["pvc"]
        volumes.append({"name": "dest", "persistentVolumeClaim": {"claimName": dest}})
    return volumes


def agent_mounts(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Where :func:`agent_volumes` are mounted in the agent's container."""
    mounts: list[dict[str, Any]] = [
        {"name": "source", "mountPath": SOURCE_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if plan["spec"]["target"]["type"] == "pvc":
        mounts.append({"name": "dest", "mountPath": DEST_MOUNT})
    return mounts


AGENT_UID = 65532  # the image's own non-root user (jobs/Containerfile)


def pod_security_level(plan: dict[str, Any]) -> str:
    """``baseline`` (the default) or ``restricted`` (``spec.podSecurity.level``)."""
    return str((plan["spec"].get("podSecurity") or {}).get("level", "baseline"))


def volume_owner(volume: dict[str, Any]) -> tuple[tuple[int, int] | None, str]:
    """(uid, gid) the volume's workloads run as, and why not when there is none: runAsUser
    (or linuxserver/hotio PUID, recorded as runAsUser), else fsGroup; gid is fsGroup or uid."""
    owners: set[tuple[int, int]] = set()
    unknown = []
    for workload in volume.get("workloads") or []:
        uid, group = workload.get("runAsUser"), workload.get("fsGroup")
        uid = uid if uid not in (None, 0) else group
        if uid in (None, 0):
            unknown.append(f"{workload['kind']}/{workload['name']}")
            continue
        owners.add((int(uid), int(group if group not in (None, 0) else uid)))
    if len(owners) == 1 and not unknown:
        return owners.pop(), ""
    if len(owners) > 1:
        users = ", ".join(str(uid) for uid, _ in sorted(owners))
        return None, f"its workloads run as different users ({users})"
    if unknown:
        return None, f"{', '.join(unknown)} sets no runAsUser, fsGroup or PUID"
    return None, "no workload mounts it, so its owner is unknown"


def agent_user(plan: dict[str, Any], volumes: list[dict[str, Any]]) -> tuple[int, int] | None:
    """The non-root (uid, gid) restricted mode runs an agent reading ``volumes`` as, or None
    (root): baseline mode, an unknown or mixed owner."""
    if pod_security_level(plan) != "restricted":
        return None
    owners = {volume_owner(v)[0] for v in volumes}
    return owners.pop() if len(owners) == 1 and None not in owners else None


def non_root_security(user: tuple[int, int]) -> dict[str, Any]:
    """Pod Security ``restricted``: the app's own user, nothing added, no escalation."""
    return {
        "runAsUser": user[0],
        "runAsGroup": user[1],
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def agent_security(
    plan: dict[str, Any], volumes: list[dict[str, Any]], writes_claim: bool = False
) -> dict[str, Any]:
    """The container securityContext of an agent reading ``volumes``: the app's user in
    restricted mode (unless it writes a claim), else root with only the capabilities it needs."""
    user = None if writes_claim else agent_user(plan, volumes)
    return non_root_security(user) if user else _security_context(plan, writes_claim)


def _security_context(plan: dict[str, Any], writes_claim: bool | None = None) -> dict[str, Any]:
    # Root without privileges: reading files of any app UID (911, 1000) needs DAC_OVERRIDE
    # (DAC_READ_SEARCH would do, but Pod Security "baseline" forbids it; the sources are mounted
    # read-only, so overriding write permissions gains nothing there); writing a PVC with their
    # owners kept needs CHOWN/FOWNER/FSETID too. Every cap here is in the baseline set.
    caps = list(READ_CAPS)
    if writes_claim is None:
        writes_claim = plan["spec"]["target"]["type"] == "pvc"
    if writes_claim:
        caps += ["CHOWN", "FOWNER", "FSETID"]
    return {
        "runAsUser": 0,
        "runAsNonRoot": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": caps},
    }


def node_affinity(volume: dict[str, Any]) -> dict[str, Any] | None:
    """RWO claims in use can only be mounted on the node that has them attached."""
    source = volume["source"]
    nodes = source.get("nodes") or []
    if not nodes or "ReadWriteOnce" not in (source.get("accessModes") or []):
        return None
    term = {
        "matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": nodes}]
    }
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
        }
    }


def active_deadline_seconds(volume: dict[str, Any]) -> int:
    """A generous deadline: the bytes at a slow floor rate, three times over, at least an hour."""
    size = volume["source"].get("usedBytes") or volume["source"].get("capacityBytes") or 0
    shards = volume["copy"]["shards"]
    return int(max(3600, math.ceil(size / shards / COPY_RATE_FLOOR) * 3))


def kube_object(
    api_version: str,
    kind: str,
    name: str,
    plan: dict[str, Any],
    object_labels: dict[str, str],
    spec: dict[str, Any],
) -> dict[str, Any]:
    """A Kubernetes object in the plan's namespace (if it has one)."""
    metadata: dict[str, Any] = {"name": name, "labels": object_labels}
    namespace = plan["spec"]["source"].get("namespace")
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec}
