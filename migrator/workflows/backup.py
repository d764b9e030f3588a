"""The ``backup`` workflow: from a plan to CronJobs, runs, listings, prunes, restores, verifies.

``backup run`` runs exactly the container command of the rendered CronJob: on this host with
the local executor (``--source-dir`` plans), or as a one-off Job on the cluster. ``list``,
``prune``, ``restore --to`` and ``verify`` talk to S3 from where they run: the endpoint comes
from ``--s3-endpoint``, the plan, or AWS_ENDPOINT_URL; credentials from the AWS_* variables,
or the MIGRATOR_BACKUP_AWS_* ones when the backups go to an S3 of their own (off-site).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migrator.backup.cron import check_schedule
from migrator.backup.prune import PruneResult, prune_volume
from migrator.backup.reader import ReadReport
from migrator.backup.repository import BackupRepository, Snapshot, VolumeListing
from migrator.backup.restore import restore_snapshot
from migrator.backup.retention import RetentionPolicy
from migrator.backup.verify import verify_directory, verify_snapshot
from migrator.errors import BadInputError, OperationFailedError
from migrator.executors import JobResult
from migrator.manifests.backup import (
    DRILL_SCHEDULES,
    backup_groups,
    backup_is_offsite,
    backup_url,
    build_backup_cronjob,
    build_restore_job,
    job_from_cronjob,
    render_backups,
)
from migrator.manifests.copy import build_kustomization
from migrator.manifests.pod import job_name
from migrator.objectstore import BACKUP_ENV_PREFIX, S3Location, S3Settings, make_client
from migrator.plan import Plan, dump_yaml


def backup_location(plan: Plan) -> S3Location:
    """The plan's ``spec.backup`` as a location; BadInputError when the plan has none."""
    backup = plan.spec.get("backup")
    if not backup:
        raise BadInputError(
            f"plan {plan.name} has no backup target; re-run 'migrator plan' with "
            "--backup-target s3://BUCKET/PREFIX"
        )
    return S3Location.parse(backup_url(plan.document))


def config_volumes(plan: Plan, names: tuple[str, ...] | list[str] = ()) -> list[dict[str, Any]]:
    """The config volumes (all, or those named); BadInputError for unknown or media volumes."""
    if not names:
        found = plan.volumes_for_phase("config")
        if not found:
            raise BadInputError(f"plan {plan.name} has no config volumes to back up")
        return found
    volumes = [plan.volume(name) for name in names]
    for volume in volumes:
        if volume["role"] != "config":
            raise BadInputError(
                f"volume {volume['name']} is a media volume; backups cover config volumes"
            )
    return volumes


def open_repository(plan: Plan, endpoint: str | None = None) -> BackupRepository:
    """The plan's backups, reached from this machine: with AWS_* keys, or MIGRATOR_BACKUP_AWS_*
    ones when they go to an S3 of their own (off-site); BadInputError when those are unset."""
    location = backup_location(plan)
    if backup_is_offsite(plan.document):
        settings = S3Settings.from_environment(
            endpoint or plan.spec["backup"].get("endpoint"), BACKUP_ENV_PREFIX
        )
        if not (settings.access_key and settings.secret_key):
            raise BadInputError(
                f"plan {plan.name} keeps its backups on an S3 of their own: set "
                f"{BACKUP_ENV_PREFIX}AWS_ACCESS_KEY_ID and {BACKUP_ENV_PREFIX}AWS_SECRET_ACCESS_KEY"
            )
        return BackupRepository(make_client(settings, flexible_checksums=False), location)
    settings = S3Settings.from_environment(endpoint or plan.spec["target"].get("endpoint"))
    bundle = plan.spec["target"].get("caBundle") or {}
    if bundle.get("path"):  # local mode: the plan's CA file, what the Jobs trust too
        settings = dataclasses.replace(settings, ca_bundle=bundle["path"])
    return BackupRepository(make_client(settings, flexible_checksums=False), location)


def drill_schedule(value: str | None) -> str | None:
    """``weekly``/``daily`` or a cron expression for the restore drill (None: no drill)."""
    if not value or value == "off":
        return None
    return DRILL_SCHEDULES.get(value) or check_schedule(value)


def retention_args(policy: RetentionPolicy) -> dict[str, int]:
    return {rule: count for rule, count in policy.rules()}


def render_install(
    plan: Plan, schedule: str, drill: str | None, policy: RetentionPolicy
) -> dict[str, dict[str, Any]]:
    """The CronJobs ``backup install`` renders, by file name."""
    schedule, drill = check_schedule(schedule), drill_schedule(drill)  # wrong whatever the plan
    if plan.mode != "cluster":
        raise BadInputError(
            "backup install renders CronJobs for cluster plans; on this host schedule "
            f"'migrator backup run --plan {plan.path}' with cron or a systemd timer"
        )
    backup_location(plan)
    config_volumes(plan)
    return render_backups(plan.document, schedule, retention_args(policy), drill)


def write_manifests(files: dict[str, dict[str, Any]], out: Path) -> list[Path]:
    """Write each manifest to ``out`` and a kustomization.yaml if there is none yet."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, manifest in files.items():
        path = out / name
        path.write_text(dump_yaml(manifest), encoding="utf-8")
        written.append(path)
    kustomization = out / "kustomization.yaml"
    if not kustomization.exists():
        kustomization.write_text(dump_yaml(build_kustomization(list(files))))
        written.append(kustomization)
    return written


def apply_cronjobs(kube: Any, files: dict[str, dict[str, Any]]) -> list[str]:
    """Server-side apply every CronJob (field manager ``migrator``); returns their names."""
    from migrator.kube import FIELD_MANAGER

    applied = []
    for manifest in files.values():
        name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
        kube.call(
            f"applying CronJob {name}",
            lambda m=manifest, n=name, ns=namespace: kube.batch.patch_namespaced_cron_job(
                n,
                ns,
                m,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type="application/apply-patch+yaml",
            ),
        )
        applied.append(f"{namespace}/{name}")
    return applied


# --- backup run ---------------------------------------------------------------------------------


@dataclass
class RunOutcome:
    """How one ``backup run`` went: the Jobs run and every volume's outcome."""

    plan: str
    executor: str
    jobs: list[str] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and all(v.get("status") == "done" for v in self.volumes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "plan": self.plan,
            "executor": self.executor,
            "jobs": self.jobs,
            "volumes": self.volumes,
            "failures": self.failures,
        }


def backup_jobs(
    plan: Plan, volumes: list[dict[str, Any]], policy: RetentionPolicy
) -> list[dict[str, Any]]:
    """One-off Jobs from the plan's backup CronJobs, restricted to ``volumes``."""
    wanted = {v["name"] for v in volumes}
    jobs = []
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    for group in backup_groups(plan.document):
        chosen = [v for v in group if v["name"] in wanted]
        if not chosen:
            continue
        cronjob = build_backup_cronjob(plan.document, chosen, retention=retention_args(policy))
        name = f"{cronjob['metadata']['name'][:40].rstrip('-')}-manual-{stamp}"
        jobs.append(job_from_cronjob(cronjob, name))
    return jobs


def run_backup(
    plan: Plan,
    volumes: list[dict[str, Any]],
    policy: RetentionPolicy,
    executor: Any,
    executor_name: str,
    on_event: Callable[[dict[str, Any]], None],
) -> RunOutcome:
    """Run the backup Jobs of ``volumes`` with ``executor`` and collect the agent's outcomes."""
    backup_location(plan)
    outcome = RunOutcome(plan.name, executor_name)
    for job in backup_jobs(plan, volumes, policy):
        outcome.jobs.append(job["metadata"]["name"])
        finished: dict[str, dict[str, Any]] = {}  # the last attempt's outcome of each volume

        def sink(_index: int, event: dict[str, Any], finished: dict[str, Any] = finished) -> None:
            if event.get("event") == "volume-done":
                finished[event["volume"]] = {
                    k: v for k, v in event.items() if k not in ("migrator", "event")
                }
            on_event(event)

        result: JobResult = executor.run_job(job, sink)
        outcome.volumes += finished.values()
        if not result.succeeded and not any(v.get("status") == "failed" for v in finished.values()):
            outcome.failures.append(f"Job {result.name}: {result.message or 'failed'}")
    return outcome


def local_executor(plan: Plan) -> Any:
    """The local executor with the plan's source directories as its claims."""
    from migrator.executors.local import LocalExecutor, local_claims

    return LocalExecutor(local_claims(plan.volumes))


# --- from this machine ------------------------------------------------------------------------


def list_snapshots(
    repository: BackupRepository, volumes: list[dict[str, Any]]
) -> list[VolumeListing]:
    """Every volume's snapshots with their records loaded (oldest first)."""
    listings = [repository.list_volume(v["name"]) for v in volumes]
    repository.load_records([s for listing in listings for s in listing.snapshots])
    return listings


def prune(
    repository: BackupRepository,
    volumes: list[dict[str, Any]],
    policy: RetentionPolicy,
    dry_run: bool,
) -> list[PruneResult]:
    return [prune_volume(repository, v["name"], policy, dry_run) for v in volumes]


def restore_to_directory(
    repository: BackupRepository,
    volume: str,
    snapshot: str,
    target: Path,
    force: bool,
    progress: Callable[[int, int], None] | None = None,
    keep_setid: bool = False,
) -> ReadReport:
    found = repository.resolve(volume, snapshot)
    return restore_snapshot(repository, found, target, force, progress, keep_setid)


def verify(
    repository: BackupRepository,
    volume: str,
    snapshot: str,
    directory: Path | None = None,
    strict_metadata: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Snapshot, ReadReport]:
    found = repository.resolve(volume, snapshot)
    if directory is not None:
        if not directory.is_dir():
            raise BadInputError(f"{directory} is not a directory")
        return found, verify_directory(repository, found, directory, strict_metadata)
    return found, verify_snapshot(repository, found, progress=progress)


def restore_to_claim(
    plan: Plan,
    volume: dict[str, Any],
    snapshot: str,
    claim: str,
    force: bool,
    kube: Any,
    timeout: float,
    on_event: Callable[[dict[str, Any]], None],
    keep_setid: bool = False,
) -> JobResult:
    """Run a restore Job into the PVC ``claim``; refuses a claim a running pod mounts."""
    from migrator.executors.kubernetes import KubernetesExecutor

    if plan.mode != "cluster" or not plan.namespace:
        raise BadInputError("--to-pvc needs a cluster plan; restore a local plan with --to DIR")
    backup_location(plan)
    users = _pods_mounting(kube, plan.namespace, claim)
    if users:
        raise BadInputError(
            f"PVC {claim} is mounted by running pod(s) {', '.join(users)}: stop the app first "
            "(suspend its HelmRelease and scale it to 0) or restore into a new PVC"
        )
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    name = f"{job_name('restore', volume['name'])[:46].rstrip('-')}-{stamp}"
    job = build_restore_job(plan.document, volume, snapshot, claim, force, name, keep_setid)
    result: JobResult = KubernetesExecutor(kube, timeout).run_job(
        job, lambda _index, event: on_event(event)
    )
    return result


def _pods_mounting(kube: Any, namespace: str, claim: str) -> list[str]:
    users = []
    for pod in kube.list_pods(namespace):
        phase = (pod.get("status") or {}).get("phase")
        if phase not in ("Pending", "Running"):
            continue
        for volume in (pod.get("spec") or {}).get("volumes") or []:
            if (volume.get("persistentVolumeClaim") or {}).get("claimName") == claim:
                users.append(pod["metadata"]["name"])
    return users


def restore_claim_outcome(
    plan: Plan,
    volume: dict[str, Any],
    snapshot: str,
    claim: str,
    force: bool,
    kube: Any,
    timeout: float,
    keep_setid: bool = False,
) -> dict[str, Any]:
    """Run the restore Job and return its report; OperationFailedError when it gave none."""
    result = restore_to_claim(
        plan, volume, snapshot, claim, force, kube, timeout, lambda _e: None, keep_setid
    )
    if result.done_events:
        done = result.done_events[-1]
        return {k: v for k, v in done.items() if k not in ("migrator", "event")}
    raise OperationFailedError(f"restore Job {result.name} failed: {result.message or 'no report'}")
