"""Copy (pre-seed) and sync (cutover) Jobs, the target PVCs of ``pvc:`` targets, and the files
``migrator plan`` renders into ``jobs/<plan>/`` with their kustomization."""

from __future__ import annotations

import copy
from typing import Any

from migrator.manifests.pod import (
    DEST_MOUNT,
    DEST_REMOTE,
    SOURCE_MOUNT,
    active_deadline_seconds,
    agent_mounts,
    agent_security,
    agent_volumes,
    job_name,
    kube_object,
    labels,
    node_affinity,
    secret_ref,
    trust_ca,
)
from migrator.quantity import format_gi

# Measured on 2 cores against SeaweedFS (bench/copy.py): 8 transfers beat 4 (rclone's default)
# and 16 (more contention for the same CPU) on many small files.
SMALL_FILES_FLAGS = ("--transfers", "8", "--checkers", "8")
LARGE_FILES_FLAGS = (
    "--transfers",
    "4",
    "--checkers",
    "8",
    "--fast-list",
    "--s3-chunk-size",
    "64M",
    "--s3-upload-concurrency",
    "4",
)
COMMON_FLAGS = ("--metadata", "--links", "--retries", "5", "--low-level-retries", "20")
# The agent verifies with its own xxh3 pass (migrator verify); MD5-per-upload and a HEAD after
# every PUT cost client CPU per object without adding to that proof.
# (--s3-directory-markers is not among them: it more than doubles the time of many small files;
# the agent creates markers for empty directories itself.)
S3_FLAGS = ("--s3-no-check-bucket", "--s3-no-head", "--s3-disable-checksum")


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
        {"name": prefix + "ACCESS_KEY_ID", "valueFrom": secret_ref(secret, "accessKey")},
        {"name": prefix + "SECRET_ACCESS_KEY", "valueFrom": secret_ref(secret, "secretKey")},
    ]
    return env


def _index_env() -> dict[str, Any]:
    path = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    return {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _resources(volume: dict[str, Any]) -> dict[str, Any]:
    large = volume["copy"].get("profile") == "large-files"
    return {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"memory": "2Gi" if large else "1Gi"},
    }


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
        "volumeMounts": agent_mounts(plan),
        "resources": _resources(volume),
        "securityContext": agent_security(
            plan, [volume], writes_claim=plan["spec"]["target"]["type"] == "pvc"
        ),
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # agents never call the Kubernetes API
        "containers": [container],
        "volumes": agent_volumes(plan, volume),
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }
    affinity = node_affinity(volume)
    if affinity:
        pod_spec["affinity"] = affinity
    trust_ca(plan, pod_spec)
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
    return kube_object("batch/v1", "Job", name, plan, step_labels, spec)


def build_target_claim(plan: dict[str, Any], volume: dict[str, Any]) -> dict[str, Any]:
    """The new PVC a ``pvc:`` target copies into."""
    target = volume["target"]
    modes = volume["source"].get("accessModes") or ["ReadWriteOnce"]
    spec = {
        "storageClassName": target["storageClass"],
        "accessModes": list(modes),
        "resources": {"requests": {"storage": format_gi(target["sizeBytes"])}},
    }
    return kube_object(
        "v1", "PersistentVolumeClaim", target["pvc"], plan, labels(plan, volume, "claim"), spec
    )


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
