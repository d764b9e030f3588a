"""Backups: the nightly backup CronJobs, restore drills, restore Jobs (see migrator/backup/ for
what they run and migrator/workflows/backup.py for what applies them)."""

from __future__ import annotations

import math
from typing import Any

from migrator.manifests.pod import (
    AGENT_UID,
    BACKUP_CREDENTIALS_SECRET,
    DEFAULT_CREDENTIALS_SECRET,
    LABEL_PHASE,
    LABEL_PLAN,
    LABEL_STEP,
    LABEL_VOLUME,
    MANAGED_BY,
    READ_CAPS,
    SOURCE_MOUNT,
    agent_user,
    job_name,
    kube_object,
    node_affinity,
    non_root_security,
    pod_security_level,
    secret_ref,
    trust_ca,
    volume_owner,
)
from migrator.quantity import format_gi

BACKUP_SCHEDULE = "0 3 * * *"
DRILL_SCHEDULES = {"weekly": "30 4 * * 0", "daily": "30 4 * * *"}  # after the nightly backup
RESTORE_MOUNT = "/mnt/restore"
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
        {"name": "AWS_ACCESS_KEY_ID", "valueFrom": secret_ref(secret, "accessKey")},
        {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": secret_ref(secret, "secretKey")},
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
        "securityContext": non_root_security(user) if user else _container_security(caps),
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
        trust_ca(plan, pod)
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
    return kube_object("batch/v1", "CronJob", name, plan, object_labels, spec)


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
    affinity = _app_affinity(volumes) or next((a for a in map(node_affinity, volumes) if a), None)
    command = backup_command(plan, volumes, dict(retention or {}))
    pod = _backup_pod(
        plan,
        "backup",
        command,
        pod_volumes,
        mounts,
        list(READ_CAPS),
        affinity,
        agent_user(plan, volumes),
    )
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
        "migrator",
        "agent",
        "backup-restore",
        "--from",
        backup_url(plan),
        "--volume",
        volume["name"],
        "--snapshot",
        snapshot,
        "--to",
        RESTORE_MOUNT,
    ]
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
        plan,
        "restore",
        command,
        pod_volumes,
        mounts,
        RESTORE_CAPS,
        affinity,
        agent_user(plan, [volume]),
    )
    spec = {
        "backoffLimit": 0,  # a failed restore needs a look, not a blind retry
        "activeDeadlineSeconds": backup_deadline_seconds([volume]),
        "ttlSecondsAfterFinished": 7 * 24 * 3600,
        "template": {"metadata": {"labels": object_labels}, "spec": pod},
    }
    job = name or job_name("restore", volume["name"])
    return kube_object("batch/v1", "Job", job, plan, object_labels, spec)


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
