"""Pure builders of the Kubernetes manifests a plan runs: copy Jobs, sync Jobs, PVCs.

Nothing here does I/O. The rendered manifests are the single truth of what a Job does: the
kubernetes executor applies them and the local executor runs exactly their container command.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from migrator.quantity import format_gi

MANAGED_BY = {"app.kubernetes.io/managed-by": "migrator"}
LABEL_PLAN = "migrator.cozystack.io/plan"
LABEL_VOLUME = "migrator.cozystack.io/volume"
LABEL_PHASE = "migrator.cozystack.io/phase"
LABEL_STEP = "migrator.cozystack.io/step"
SOURCE_MOUNT = "/mnt/source"
DEST_MOUNT = "/mnt/dest"
DEST_REMOTE = "dest"
# Measured on 2 cores against SeaweedFS (bench/copy.py): 8 transfers beat 4 (rclone's default)
# and 16 (more contention for the same CPU) on many small files.
SMALL_FILES_FLAGS = ("--transfers", "8", "--checkers", "8")
LARGE_FILES_FLAGS = (
    "--transfers", "4", "--checkers", "8", "--fast-list",
    "--s3-chunk-size", "64M", "--s3-upload-concurrency", "4",
)  # fmt: skip
COMMON_FLAGS = ("--metadata", "--links", "--retries", "5", "--low-level-retries", "20")
# The agent verifies with its own xxh3 pass (migrator verify); MD5-per-upload and a HEAD after
# every PUT cost client CPU per object without adding to that proof.
# (--s3-directory-markers is not among them: it more than doubles the time of many small files;
# the agent creates markers for empty directories itself.)
S3_FLAGS = ("--s3-no-check-bucket", "--s3-no-head", "--s3-disable-checksum")
COPY_RATE_FLOOR = 10 * 2**20  # bytes/s assumed when sizing activeDeadlineSeconds
READ_CAPS = ("DAC_OVERRIDE",)  # what root needs to read and search files of any owner


def job_name(step: str, volume: str) -> str:
    """``migrator-<step>-<volume>``, cut to 63 characters (Job names become label values)."""
    return f"migrator-{step}-{volume}"[:63].rstrip("-")


def labels(plan: dict[str, Any], volume: dict[str, Any], step: str) -> dict[str, str]:
    return {
        **MANAGED_BY,
        "app.kubernetes.io/name": "migrator",
        LABEL_PLAN: plan["metadata"]["name"],
        LABEL_VOLUME: volume["name"],
        LABEL_PHASE: volume["role"],
        LABEL_STEP: step,
    }


def rclone_destination(plan: dict[str, Any], volume: dict[str, Any]) -> str:
    """The rclone path the copy writes to: ``dest:BUCKET/KEYPREFIX`` or the mounted new PVC."""
    target = plan["spec"]["target"]
    if target["type"] == "pvc":
        return DEST_MOUNT
    key = "/".join(p for p in (target.get("prefix", ""), volume["name"]) if p)
    return f"{DEST_REMOTE}:{target['bucket']}/{key}"


def state_location(plan: dict[str, Any], volume: dict[str, Any]) -> str | None:
    """Where the agent keeps the state of the last copy: beside the volume's prefix, not in it."""
    target = plan["spec"]["target"]
    if target["type"] != "s3":
        return None
    key = "/".join(p for p in (target.get("prefix", ""), ".migrator", volume["name"]) if p)
    return f"{DEST_REMOTE}:{target['bucket']}/{key}"


def rclone_flags(plan: dict[str, Any], volume: dict[str, Any]) -> list[str]:
    """rclone flags chosen from the data shape, plus what keeps metadata and odd files intact."""
    profile = volume["copy"].get("profile")
    flags = list(SMALL_FILES_FLAGS if profile == "small-files" else LARGE_FILES_FLAGS)
    flags += COMMON_FLAGS
    if plan["spec"]["target"]["type"] == "s3":
        flags += S3_FLAGS
    return flags


def copy_command(plan: dict[str, Any], volume: dict[str, Any], step: str) -> list[str]:
    """The container command of a copy (``preseed``) or final sync (``cutover``) step.

    Pre-seed never deletes and leaves live SQLite databases for the cutover; the cutover's sync
    deletes only inside this volume's destination prefix.
    """
    command = [
        "migrator",
        "agent",
        "copy",
        "--source",
        SOURCE_MOUNT,
        "--dest",
        rclone_destination(plan, volume),
    ]
    state = state_location(plan, volume)
    if state:
        command += ["--state", state]
    filer = plan["spec"]["target"].get("filer")
    if filer and plan["spec"]["target"]["type"] == "s3":
        command += ["--filer", filer]
    if step == "cutover":
        command.append("--delete")
    elif volume["role"] == "config":
        command.append("--skip-live-sqlite")
    if volume["copy"]["shards"] > 1:
        command += ["--shard", f"$(JOB_COMPLETION_INDEX)/{volume['copy']['shards']}"]
    return [*command, "--", *rclone_flags(plan, volume)]


def with_recheck(manifest: dict[str, Any]) -> dict[str, Any]:
    """A copy Job that first checks the state of the last copy against the destination
    (``migrator agent copy --recheck``): what is missing there or of another size is recopied."""
    job = copy.deepcopy(manifest)
    [container] = job["spec"]["template"]["spec"]["containers"]
    command: list[str] = container["command"]
    if "--recheck" not in command:
        command.insert(command.index("--") if "--" in command else len(command), "--recheck")
    return job


def _env(plan: dict[str, Any]) -> list[dict[str, Any]]:
    target = plan["spec"]["target"]
    env: list[dict[str, Any]] = [
        {"name": "RCLONE_CONFIG_DIR", "value": "/tmp/rclone"},
        {"name": "RCLONE_CACHE_DIR", "value": "/tmp/rclone-cache"},
    ]
    if target["type"] != "s3":
        return env
    secret = target.get("credentialsSecret", "migrator-s3-credentials")
    prefix = f"RCLONE_CONFIG_{DEST_REMOTE.upper()}_"
    env += [
        {"name": prefix + "TYPE", "value": "s3"},
        {"name": prefix + "PROVIDER", "value": "SeaweedFS"},
        {"name": prefix + "ENDPOINT", "value": target.get("endpoint", "")},
        {"name": prefix + "FORCE_PATH_STYLE", "value": "true"},
        {"name": prefix + "ACCESS_KEY_ID", "valueFrom": _secret_ref(secret, "accessKey")},
        {"name": prefix + "SECRET_ACCESS_KEY", "valueFrom": _secret_ref(secret, "secretKey")},
    ]
    return env


CA_MOUNT = "/etc/migrator/s3-ca"
CA_FILE = f"{CA_MOUNT}/ca.crt"


def _trust_ca(plan: dict[str, Any], pod: dict[str, Any]) -> None:
    """Mount the plan's S3 CA bundle (``spec.target.caBundle``) into every container of ``pod``
    and point rclone (RCLONE_CA_CERT) and boto3/migrator (AWS_CA_BUNDLE) at it.

    A ConfigMap key in cluster mode; in local mode a file on this host (a hostPath volume, which
    the local executor maps to that file).
    """
    bundle = plan["spec"]["target"].get("caBundle")
    if not bundle:
        return
    if "configMap" in bundle:
        source: dict[str, Any] = {"configMap": {
            "name": bundle["configMap"], "items": [{"key": bundle["key"], "path": "ca.crt"}]}}  # fmt: skip
        mount = {"name": "s3-ca", "mountPath": CA_MOUNT, "readOnly": True}
    else:
        source = {"hostPath": {"path": bundle["path"], "type": "File"}}
        mount = {"name": "s3-ca", "mountPath": CA_FILE, "readOnly": True}
    pod["volumes"].append({"name": "s3-ca", **source})
    for container in pod["containers"]:
        container["volumeMounts"].append(dict(mount))
        container["env"] += [{"name": "RCLONE_CA_CERT", "value": CA_FILE},
                             {"name": "AWS_CA_BUNDLE", "value": CA_FILE}]  # fmt: skip


def _secret_ref(secret: str, key: str) -> dict[str, Any]:
    return {"secretKeyRef": {"name": secret, "key": key}}


def _index_env() -> dict[str, Any]:
    path = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    return {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _volumes(plan: dict[str, Any], volume: dict[str, Any]) -> list[dict[str, Any]]:
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


def _mounts(plan: dict[str, Any]) -> list[dict[str, Any]]:
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


def _non_root_security(user: tuple[int, int]) -> dict[str, Any]:
    """Pod Security ``restricted``: the app's own user, nothing added, no escalation."""
    return {
        "runAsUser": user[0],
        "runAsGroup": user[1],
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _agent_security(
    plan: dict[str, Any], volumes: list[dict[str, Any]], writes_claim: bool = False
) -> dict[str, Any]:
    user = None if writes_claim else agent_user(plan, volumes)
    return _non_root_security(user) if user else _security_context(plan, writes_claim)


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


def _resources(volume: dict[str, Any]) -> dict[str, Any]:
    large = volume["copy"].get("profile") == "large-files"
    return {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"memory": "2Gi" if large else "1Gi"},
    }


def _node_affinity(volume: dict[str, Any]) -> dict[str, Any] | None:
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


def build_copy_job(plan: dict[str, Any], volume: dict[str, Any], step: str) -> dict[str, Any]:
    """The Job that copies one volume for a step (``preseed`` or ``cutover``).

    A sharded volume gets an Indexed Job whose index selects a deterministic partition.
    """
    shards = volume["copy"]["shards"]
    env = _env(plan) + ([_index_env()] if shards > 1 else [])
    container: dict[str, Any] = {
        "name": "copy",
        "image": plan["spec"]["image"],
        "imagePullPolicy": "IfNotPresent",
        "command": copy_command(plan, volume, step),
        "env": env,
        "volumeMounts": _mounts(plan),
        "resources": _resources(volume),
        "securityContext": _agent_security(
            plan, [volume], writes_claim=plan["spec"]["target"]["type"] == "pvc"
        ),
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # agents never call the Kubernetes API
        "containers": [container],
        "volumes": _volumes(plan, volume),
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }
    affinity = _node_affinity(volume)
    if affinity:
        pod_spec["affinity"] = affinity
    _trust_ca(plan, pod_spec)
    step_labels = labels(plan, volume, step)
    spec: dict[str, Any] = {
        "backoffLimit": 3 * shards,
        "activeDeadlineSeconds": active_deadline_seconds(volume),
        "ttlSecondsAfterFinished": 7 * 24 * 3600,
        "template": {"metadata": {"labels": step_labels}, "spec": pod_spec},
    }
    if shards > 1:
        spec.update(completionMode="Indexed", completions=shards, parallelism=min(shards, 4))
    name = job_name("copy" if step == "preseed" else "sync", volume["name"])
    return _object("batch/v1", "Job", name, plan, step_labels, spec)


def build_target_claim(plan: dict[str, Any], volume: dict[str, Any]) -> dict[str, Any]:
    """The new PVC a ``pvc:`` target copies into."""
    target = volume["target"]
    modes = volume["source"].get("accessModes") or ["ReadWriteOnce"]
    spec = {
        "storageClassName": target["storageClass"],
        "accessModes": list(modes),
        "resources": {"requests": {"storage": format_gi(target["sizeBytes"])}},
    }
    return _object(
        "v1", "PersistentVolumeClaim", target["pvc"], plan, labels(plan, volume, "claim"), spec
    )


def _object(
    api_version: str,
    kind: str,
    name: str,
    plan: dict[str, Any],
    object_labels: dict[str, str],
    spec: dict[str, Any],
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": object_labels}
    namespace = plan["spec"]["source"].get("namespace")
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec}


def build_kustomization(resources: list[str]) -> dict[str, Any]:
    """A kustomization.yaml listing the rendered files, so the directory can go into a Flux repo."""
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": sorted(resources),
    }


def render_plan(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every manifest of a plan, by file name (relative to its jobs directory)."""
    files: dict[str, dict[str, Any]] = {}
    for volume in plan["spec"]["volumes"]:
        jobs = volume["copy"]["jobs"]
        files[jobs["preseed"]] = build_copy_job(plan, volume, "preseed")
        files[jobs["cutover"]] = build_copy_job(plan, volume, "cutover")
        if "claim" in jobs:
            files[jobs["claim"]] = build_target_claim(plan, volume)
    return files


def verify_command(
    plan: dict[str, Any],
    volume: dict[str, Any],
    sample: float | None,
    strict_metadata: bool,
    cache: bool,
) -> list[str]:
    """The container command of a volume's verify Job (``migrator agent verify``)."""
    target = plan["spec"]["target"]
    command = ["migrator", "agent", "verify", "--source", SOURCE_MOUNT]
    if target["type"] == "s3":
        key = "/".join(p for p in (target.get("prefix", ""), volume["name"]) if p)
        command += ["--dest", f"s3://{target['bucket']}/{key}"]
        state = "/".join(p for p in (target.get("prefix", ""), ".migrator", volume["name"]) if p)
        if cache:
            command += ["--cache", f"s3://{target['bucket']}/{state}"]
        command += ["--state", f"s3://{target['bucket']}/{state}"]  # differences, for --recheck
        if target.get("filer"):
            command += ["--filer", target["filer"]]
    else:
        command += ["--dest", DEST_MOUNT]
    if sample is not None:
        command += ["--sample", repr(sample)]
    if strict_metadata:
        command.append("--strict-metadata")
    return command


def _verify_env(plan: dict[str, Any]) -> list[dict[str, Any]]:
    target = plan["spec"]["target"]
    if target["type"] != "s3":
        return []
    secret = target.get("credentialsSecret", "migrator-s3-credentials")
    return [
        {"name": "AWS_ENDPOINT_URL", "value": target.get("endpoint", "")},
        {"name": "AWS_DEFAULT_REGION", "value": "us-east-1"},
        {"name": "AWS_ACCESS_KEY_ID", "valueFrom": _secret_ref(secret, "accessKey")},
        {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": _secret_ref(secret, "secretKey")},
        {"name": "HOME", "value": "/tmp"},
    ]


def build_verify_job(
    plan: dict[str, Any],
    volume: dict[str, Any],
    sample: float | None = None,
    strict_metadata: bool = False,
    cache: bool = True,
) -> dict[str, Any]:
    """The Job that hashes a volume's source (mounted read-only) and destination and compares."""
    step_labels = labels(plan, volume, "verify")
    mounts = _mounts(plan)
    volumes = _volumes(plan, volume)
    if plan["spec"]["target"]["type"] == "pvc":  # verifying never writes the new claim either
        for mount in mounts:
            if mount["name"] == "dest":
                mount["readOnly"] = True
        for item in volumes:
            if item["name"] == "dest":
                item["persistentVolumeClaim"]["readOnly"] = True
    security = _agent_security(plan, [volume], writes_claim=False)  # read-only everywhere
    container = {
        "name": "verify",
        "image": plan["spec"]["image"],
        "imagePullPolicy": "IfNotPresent",
        "command": verify_command(plan, volume, sample, strict_metadata, cache),
        "env": _verify_env(plan),
        "volumeMounts": mounts,
        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": security,
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # agents never call the Kubernetes API
        "containers": [container],
        "volumes": volumes,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }
    affinity = _node_affinity(volume)
    if affinity:
        pod_spec["affinity"] = affinity
    _trust_ca(plan, pod_spec)
    spec = {
        "backoffLimit": 2,
        "activeDeadlineSeconds": active_deadline_seconds(volume),
        "ttlSecondsAfterFinished": 7 * 24 * 3600,
        "template": {"metadata": {"labels": step_labels}, "spec": pod_spec},
    }
    return _object("batch/v1", "Job", job_name("verify", volume["name"]), plan, step_labels, spec)


# --- swap: the claims apps mount after the move -----------------------------------------------

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
    manifest = _object("v1", "PersistentVolume", name, plan, labels(plan, volume, "swap"), spec)
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
    return _object(
        "v1", "PersistentVolumeClaim", swap_claim_name(plan, volume), plan,
        labels(plan, volume, "swap"), spec,
    )  # fmt: skip


# --- backups: the nightly CronJob, restore drills, restore Jobs (see migrator/backup/) ---------

BACKUP_SCHEDULE = "0 3 * * *"
DRILL_SCHEDULES = {"weekly": "30 4 * * 0", "daily": "30 4 * * *"}  # after the nightly backup
RESTORE_MOUNT = "/mnt/restore"
DEFAULT_CREDENTIALS_SECRET = "migrator-s3-credentials"
BACKUP_CREDENTIALS_SECRET = "migrator-backup-credentials"  # off-site, local mode
MAX_CRONJOB_NAME = 52  # a CronJob's Jobs get an 11-character suffix; Job names are labels
BACKUP_RATE_FLOOR = 10 * 2**20  # bytes/s assumed when sizing a backup's deadline
MAX_BACKUP_SECONDS = 20 * 3600  # a nightly backup must end before the next one is due
RESTORE_CAPS = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"]  # all in the baseline set


def _volume_bytes(volume: dict[str, Any]) -> int:
    source = volume["source"]
    return int(source.get("usedBytes") or source.get("capacityBytes") or 0)


def _is_rwo(volume: dict[str, Any]) -> bool:
    modes = volume["source"].get("accessModes") or []
    return "ReadWriteOnce" in modes or "ReadWriteOncePod" in modes


def _owner_key(volume: dict[str, Any]) -> tuple[str, ...]:
    """What decides where an RWO volume is attached: the workloads that mount it."""
    workloads = volume.get("workloads") or []
    return tuple(sorted({f"{w['kind']}/{w['name']}" for w in workloads}))


def backup_groups(plan: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The plan's config volumes, grouped so that one pod can mount each group.

    One group (one CronJob per plan) unless RWO volumes belong to different apps: each app's
    volumes are attached wherever its pod runs tonight, which a plan cannot know, so each app
    then gets its own CronJob (its volumes together), and every other volume its own. In
    restricted mode, volumes of different users get a CronJob each: a pod reads as one user.
    """
    volumes = [v for v in plan["spec"]["volumes"] if v["role"] == "config"]
    if pod_security_level(plan) == "restricted" and len({volume_owner(v)[0] for v in volumes}) > 1:
        return [[v] for v in volumes]  # restricted: a pod reads as one app's user
    owners = {_owner_key(v) for v in volumes if _is_rwo(v)}
    if len(owners) <= 1:
        return [volumes] if volumes else []
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for volume in volumes:
        owner = _owner_key(volume)
        key = owner if _is_rwo(volume) and owner else ("volume", volume["name"])
        groups.setdefault(key, []).append(volume)
    return list(groups.values())


def backup_cronjob_name(plan: dict[str, Any], group: list[dict[str, Any]]) -> str:
    """``migrator-backup-<plan>`` for the whole plan, else ``-<volume>`` for a single volume,
    else ``-<app>`` for an app's volumes: names stay stable while the apps move."""
    groups = backup_groups(plan)
    names = {v["name"] for v in group}
    if len(groups) == 1 and names == {v["name"] for v in groups[0]}:
        suffix = plan["metadata"]["name"]
    elif len(group) == 1:
        suffix = group[0]["name"]
    else:
        suffix = _app_of(group[0]) or group[0]["name"]
    return f"migrator-backup-{suffix}"[:MAX_CRONJOB_NAME].rstrip("-")


def _app_affinity(volumes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Prefer the node of the pods mounting these RWO volumes (where they are attached now).

    Preferred, not required: while the app is scaled to 0 no pod matches and the pod may run on
    any node; a required term would then leave it Pending. A Linstor ``local`` volume's PV
    nodeAffinity still binds the pod to the volume's node, as the scheduler always honours it.
    """
    terms: list[dict[str, Any]] = []
    for volume in volumes:
        if not _is_rwo(volume):
            continue
        for workload in volume.get("workloads") or []:
            labels = workload.get("podSelector")
            term = {
                "weight": 100,
                "podAffinityTerm": {
                    "labelSelector": {"matchLabels": dict(sorted((labels or {}).items()))},
                    "topologyKey": "kubernetes.io/hostname",
                },
            }
            if labels and term not in terms:
                terms.append(term)
    if not terms:
        return None
    return {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": terms}}


def backup_url(plan: dict[str, Any]) -> str:
    """``s3://BUCKET/PREFIX`` of the plan's backups (``spec.backup``)."""
    backup = plan["spec"]["backup"]
    bucket, prefix = backup.get("bucket"), backup.get("prefix", "")
    if not bucket:
        return str(backup["url"])
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


def _app_of(volume: dict[str, Any]) -> str | None:
    if volume.get("release"):
        return str(volume["release"])
    workloads = volume.get("workloads") or []
    return str(workloads[0]["name"]) if workloads else None


def backup_command(
    plan: dict[str, Any], volumes: list[dict[str, Any]], retention: dict[str, int]
) -> list[str]:
    """``migrator agent backup`` for ``volumes`` mounted at ``/mnt/source/<name>``."""
    command = ["migrator", "agent", "backup", "--to", backup_url(plan)]
    command += ["--plan-name", plan["metadata"]["name"], "--tmp-dir", "/tmp"]
    for volume in volumes:
        # NAME and PATH as separate arguments: executors map whole arguments to host paths
        command += ["--volume", volume["name"], f"{SOURCE_MOUNT}/{volume['name']}"]
        app = _app_of(volume)
        if app:
            command += ["--app", f"{volume['name']}={app}"]
    for rule, count in retention.items():
        command += [f"--keep-{rule}", str(count)]
    return command


def backup_is_offsite(plan: dict[str, Any]) -> bool:
    """Whether backups go to an S3 of their own (``spec.backup.endpoint``/``credentialsSecret``)."""
    backup = plan["spec"].get("backup") or {}
    return bool(backup.get("endpoint") or backup.get("credentialsSecret"))


def backup_s3(plan: dict[str, Any]) -> tuple[str | None, str]:
    """(endpoint, credentials Secret) of the backups' S3: their own when off-site (in local mode
    the Secret ``migrator-backup-credentials``, read from MIGRATOR_BACKUP_AWS_*), else the
    copies'."""
    if backup_is_offsite(plan):
        backup = plan["spec"]["backup"]
        return backup.get("endpoint"), backup.get("credentialsSecret", BACKUP_CREDENTIALS_SECRET)
    target = plan["spec"]["target"]
    return target.get("endpoint"), target.get("credentialsSecret", DEFAULT_CREDENTIALS_SECRET)


def _backup_env(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """S3 endpoint and credentials (by reference to the plan's Secret, never by value)."""
    endpoint, secret = backup_s3(plan)
    env: list[dict[str, Any]] = [{"name": "TMPDIR", "value": "/tmp"}]
    if endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": endpoint})
    return [
        *env,
        {"name": "AWS_ACCESS_KEY_ID", "valueFrom": _secret_ref(secret, "accessKey")},
        {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": _secret_ref(secret, "secretKey")},
    ]


def _container_security(caps: list[str]) -> dict[str, Any]:
    return {
        "runAsUser": 0,
        "runAsNonRoot": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": caps},
    }


def _scratch_limit(volumes: list[dict[str, Any]], factor: float = 1.0) -> str:
    largest = max((_volume_bytes(v) for v in volumes), default=0)
    return format_gi(math.ceil(largest * factor))


def _backup_pod(
    plan: dict[str, Any],
    name: str,
    command: list[str],
    volumes: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
    caps: list[str],
    affinity: dict[str, Any] | None,
    user: tuple[int, int] | None = None,
) -> dict[str, Any]:
    container = {
        "name": name,
        "image": plan["spec"]["image"],
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": _backup_env(plan),
        "volumeMounts": mounts,
        "resources": {
            "requests": {"cpu": "250m", "memory": "256Mi"},
            "limits": {"memory": "1Gi"},
        },
        "securityContext": _non_root_security(user) if user else _container_security(caps),
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # agents never call the Kubernetes API
        "containers": [container],
        "volumes": volumes,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }
    if affinity:
        pod["affinity"] = affinity
    if not backup_is_offsite(plan):  # the copies' CA is for their endpoint, not the off-site one
        _trust_ca(plan, pod)
    return pod


def _backup_labels(plan: dict[str, Any], step: str, volume: str | None) -> dict[str, str]:
    found = {
        **MANAGED_BY,
        "app.kubernetes.io/name": "migrator",
        LABEL_PLAN: plan["metadata"]["name"],
        LABEL_PHASE: "config",
        LABEL_STEP: step,
    }
    if volume:
        found[LABEL_VOLUME] = volume
    return found


def backup_deadline_seconds(volumes: list[dict[str, Any]]) -> int:
    """At least an hour; the bytes at a slow floor rate three times over; ends before tomorrow."""
    size = sum(_volume_bytes(v) for v in volumes)
    return min(MAX_BACKUP_SECONDS, max(3600, math.ceil(size / BACKUP_RATE_FLOOR) * 3))


def _cronjob(
    plan: dict[str, Any],
    name: str,
    object_labels: dict[str, str],
    schedule: str,
    pod: dict[str, Any],
    deadline: int,
) -> dict[str, Any]:
    spec = {
        "schedule": schedule,
        "timeZone": "Etc/UTC",
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": 3600,  # missed by over an hour (controller down): skip it
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
        "jobTemplate": {
            "metadata": {"labels": object_labels},
            "spec": {
                "backoffLimit": 2,
                "activeDeadlineSeconds": deadline,
                "template": {"metadata": {"labels": object_labels}, "spec": pod},
            },
        },
    }
    return _object("batch/v1", "CronJob", name, plan, object_labels, spec)


def build_backup_cronjob(
    plan: dict[str, Any],
    volumes: list[dict[str, Any]],
    schedule: str = BACKUP_SCHEDULE,
    retention: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The CronJob that snapshots ``volumes`` (config PVCs mounted read-only) every night.

    The pod runs ``migrator agent backup`` as root without privileges but DAC_OVERRIDE
    (to read any app's files; allowed by Pod Security "baseline"; in restricted mode as the app's
    user), preferably on the node of the app's running pod (where an RWO volume is attached when
    the Job starts), with a /tmp emptyDir
    large enough for the databases' copies. Concurrent runs are forbidden.
    """
    name = backup_cronjob_name(plan, volumes)
    single = volumes[0]["name"] if len(volumes) == 1 else None
    object_labels = _backup_labels(plan, "backup", single)
    pod_volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for index, volume in enumerate(volumes):
        claim = volume["source"].get("pvc", volume["name"])
        pod_volumes.append(
            {
                "name": f"source-{index}",
                "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
            }
        )
        mounts.append(
            {
                "name": f"source-{index}",
                "mountPath": f"{SOURCE_MOUNT}/{volume['name']}",
                "readOnly": True,
            }
        )
    pod_volumes.append({"name": "tmp", "emptyDir": {"sizeLimit": _scratch_limit(volumes)}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    # Plans made before workloads[].podSelector was recorded: the plan-time node, as before.
    affinity = _app_affinity(volumes) or next((a for a in map(_node_affinity, volumes) if a), None)
    command = backup_command(plan, volumes, dict(retention or {}))
    pod = _backup_pod(
        plan, "backup", command, pod_volumes, mounts, list(READ_CAPS), affinity,
        agent_user(plan, volumes),
    )  # fmt: skip
    return _cronjob(plan, name, object_labels, schedule, pod, backup_deadline_seconds(volumes))


def drill_max_age_hours(schedule: str) -> int:
    """How old the newest snapshot may be when a drill runs: two days for daily backups."""
    fields = schedule.split()
    daily = schedule in ("@daily", "@midnight", "@hourly") or (
        len(fields) == 5 and fields[2:] == ["*", "*", "*"]
    )
    return 48 if daily else 9 * 24


def build_drill_cronjob(
    plan: dict[str, Any], schedule: str, backup_schedule: str = BACKUP_SCHEDULE
) -> dict[str, Any]:
    """The restore drill: restore each config volume's newest snapshot into an emptyDir and
    verify it (every file's hash, mode, owner, mtime; PRAGMA integrity_check on each database).
    A failed drill, or a newest snapshot older than the backups' rhythm allows, fails the Job."""
    volumes = [v for v in plan["spec"]["volumes"] if v["role"] == "config"]
    name = f"migrator-backup-drill-{plan['metadata']['name']}"[:MAX_CRONJOB_NAME].rstrip("-")
    object_labels = _backup_labels(plan, "backup-drill", None)
    command = ["migrator", "agent", "backup-drill", "--from", backup_url(plan)]
    for volume in volumes:
        command += ["--volume", volume["name"]]
    command += [
        "--scratch",
        RESTORE_MOUNT,
        "--max-age-hours",
        str(drill_max_age_hours(backup_schedule)),
    ]
    pod_volumes = [
        {"name": "restore", "emptyDir": {"sizeLimit": _scratch_limit(volumes, 1.2)}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
    ]
    mounts = [{"name": "restore", "mountPath": RESTORE_MOUNT}, {"name": "tmp", "mountPath": "/tmp"}]
    # Restricted: the image's own user; owners that cannot be restored are notes, not failures.
    user = (AGENT_UID, AGENT_UID) if pod_security_level(plan) == "restricted" else None
    pod = _backup_pod(plan, "drill", command, pod_volumes, mounts, RESTORE_CAPS, None, user)
    return _cronjob(plan, name, object_labels, schedule, pod, backup_deadline_seconds(volumes))


def build_restore_job(
    plan: dict[str, Any],
    volume: dict[str, Any],
    snapshot: str,
    claim: str,
    force: bool = False,
    name: str | None = None,
    keep_setid: bool = False,
) -> dict[str, Any]:
    """A Job restoring ``snapshot`` of ``volume`` into the PVC ``claim`` (mounted read-write).

    It refuses a claim that is not empty unless ``force`` (which replaces its content), and
    restores files' setuid/setgid bits only with ``keep_setid``.
    """
    command = [
        "migrator", "agent", "backup-restore", "--from", backup_url(plan),
        "--volume", volume["name"], "--snapshot", snapshot, "--to", RESTORE_MOUNT,
    ]  # fmt: skip
    if force:
        command.append("--force")
    if keep_setid:
        command.append("--keep-setid")
    object_labels = _backup_labels(plan, "restore", volume["name"])
    pod_volumes = [
        {"name": "restore", "persistentVolumeClaim": {"claimName": claim}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
    ]
    mounts = [{"name": "restore", "mountPath": RESTORE_MOUNT}, {"name": "tmp", "mountPath": "/tmp"}]
    affinity = _app_affinity([volume]) if claim == volume["source"].get("pvc") else None
    pod = _backup_pod(
        plan, "restore", command, pod_volumes, mounts, RESTORE_CAPS, affinity,
        agent_user(plan, [volume]),
    )  # fmt: skip
    spec = {
        "backoffLimit": 0,  # a failed restore needs a look, not a blind retry
        "activeDeadlineSeconds": backup_deadline_seconds([volume]),
        "ttlSecondsAfterFinished": 7 * 24 * 3600,
        "template": {"metadata": {"labels": object_labels}, "spec": pod},
    }
    job = name or job_name("restore", volume["name"])
    return _object("batch/v1", "Job", job, plan, object_labels, spec)


def job_from_cronjob(cronjob: dict[str, Any], name: str) -> dict[str, Any]:
    """A one-off Job from a CronJob's template (what ``kubectl create job --from`` makes)."""
    template = cronjob["spec"]["jobTemplate"]
    metadata: dict[str, Any] = {"name": name, "labels": dict(template["metadata"]["labels"])}
    if cronjob["metadata"].get("namespace"):
        metadata["namespace"] = cronjob["metadata"]["namespace"]
    spec = {**template["spec"], "ttlSecondsAfterFinished": 24 * 3600}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}


def render_backups(
    plan: dict[str, Any],
    schedule: str = BACKUP_SCHEDULE,
    retention: dict[str, int] | None = None,
    drill_schedule: str | None = None,
) -> dict[str, dict[str, Any]]:
    """The backup CronJobs of a plan (and its drill), by file name."""
    files: dict[str, dict[str, Any]] = {}
    for group in backup_groups(plan):
        cronjob = build_backup_cronjob(plan, group, schedule, retention)
        files[f"{cronjob['metadata']['name']}.yaml"] = cronjob
    if drill_schedule and files:
        drill = build_drill_cronjob(plan, drill_schedule, schedule)
        files[f"{drill['metadata']['name']}.yaml"] = drill
    return files
