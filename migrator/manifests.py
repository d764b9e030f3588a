"""Pure builders of the Kubernetes manifests a plan runs: copy Jobs, sync Jobs, PVCs.

Nothing here does I/O. The rendered manifests are the single truth of what a Job does: the
kubernetes executor applies them and the local executor runs exactly their container command.
"""

from __future__ import annotations

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
SMALL_FILES_FLAGS = ("--transfers", "16", "--checkers", "16", "--fast-list")
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
    if step == "cutover":
        command.append("--delete")
    elif volume["role"] == "config":
        command.append("--skip-live-sqlite")
    if volume["copy"]["shards"] > 1:
        command += ["--shard", f"$(JOB_COMPLETION_INDEX)/{volume['copy']['shards']}"]
    return [*command, "--", *rclone_flags(plan, volume)]


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


def _security_context(plan: dict[str, Any]) -> dict[str, Any]:
    # Root without privileges: reading files of any app UID (911, 1000) needs DAC_READ_SEARCH;
    # writing a PVC with their owners kept needs CHOWN/FOWNER/DAC_OVERRIDE too.
    caps = ["DAC_READ_SEARCH"]
    if plan["spec"]["target"]["type"] == "pvc":
        caps += ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"]
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
    return max(3600, math.ceil(size / shards / COPY_RATE_FLOOR) * 3)


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
        "securityContext": _security_context(plan),
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": _volumes(plan, volume),
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }
    affinity = _node_affinity(volume)
    if affinity:
        pod_spec["affinity"] = affinity
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
    security = _security_context({"spec": {"target": {"type": "s3"}}})  # read-only everywhere
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
        "containers": [container],
        "volumes": volumes,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }
    affinity = _node_affinity(volume)
    if affinity:
        pod_spec["affinity"] = affinity
    spec = {
        "backoffLimit": 2,
        "activeDeadlineSeconds": active_deadline_seconds(volume),
        "ttlSecondsAfterFinished": 7 * 24 * 3600,
        "template": {"metadata": {"labels": step_labels}, "spec": pod_spec},
    }
    return _object("batch/v1", "Job", job_name("verify", volume["name"]), plan, step_labels, spec)
