"""Verify Jobs: hash a volume's source (mounted read-only) and destination, and compare."""

from __future__ import annotations

import copy
from typing import Any

from migrator.manifests.pod import (
    DEST_MOUNT,
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
        # Without the caches (--no-cache) every file is read again, and the fresh hashes are
        # saved: the next verify is fast again.
        command += ["--cache", f"s3://{target['bucket']}/{state}"]
        if not cache:
            command.append("--rehash")
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
        {"name": "AWS_ACCESS_KEY_ID", "valueFrom": secret_ref(secret, "accessKey")},
        {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": secret_ref(secret, "secretKey")},
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
    mounts = agent_mounts(plan)
    volumes = agent_volumes(plan, volume)
    if plan["spec"]["target"]["type"] == "pvc":  # verifying never writes the new claim either
        for mount in mounts:
            if mount["name"] == "dest":
                mount["readOnly"] = True
        for item in volumes:
            if item["name"] == "dest":
                item["persistentVolumeClaim"]["readOnly"] = True
    security = agent_security(plan, [volume], writes_claim=False)  # read-only everywhere
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
    affinity = node_affinity(volume)
    if affinity:
        pod_spec["affinity"] = affinity
    trust_ca(plan, pod_spec)
    spec = {
        "backoffLimit": 2,
        "activeDeadlineSeconds": active_deadline_seconds(volume),
        "ttlSecondsAfterFinished": 7 * 24 * 3600,
        "template": {"metadata": {"labels": step_labels}, "spec": pod_spec},
    }
    name = job_name("verify", volume["name"])
    return kube_object("batch/v1", "Job", name, plan, step_labels, spec)


def with_verify_options(
    manifest: dict[str, Any],
    sample: float | None = None,
    strict_metadata: bool = False,
    cache: bool = True,
) -> dict[str, Any]:
    """A rendered verify Job with the run-time options of ``migrator verify`` applied to its
    command: ``--sample``, ``--strict-metadata``, and ``--rehash`` (read every file again, then
    save fresh caches) when ``cache`` is off.

    Everything else stays as reviewed. Applied to :func:`build_verify_job`'s default Job it gives
    exactly what :func:`build_verify_job` builds with the same options.
    """
    job = copy.deepcopy(manifest)
    [container] = job["spec"]["template"]["spec"]["containers"]
    command: list[str] = container["command"]
    if not cache and "--cache" in command and "--rehash" not in command:
        at = command.index("--cache") + 2
        command[at:at] = ["--rehash"]
    if sample is not None:
        if "--sample" in command:
            at = command.index("--sample")
            del command[at : at + 2]
        at = command.index("--strict-metadata") if "--strict-metadata" in command else len(command)
        command[at:at] = ["--sample", repr(sample)]
    if strict_metadata and "--strict-metadata" not in command:
        command.append("--strict-metadata")
    return job


def render_verify_jobs(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The verify Job of each volume that records one (``copy.jobs.verify``), by file name.

    Kept apart from the copy Jobs' kustomization: applying that must not start verifies.
    """
    return {
        volume["copy"]["jobs"]["verify"]: build_verify_job(plan, volume)
        for volume in plan["spec"]["volumes"]
        if "verify" in volume["copy"]["jobs"]
    }
