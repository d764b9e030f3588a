"""Backups on a cluster: the CronJobs `backup install` renders (validated strictly), `--out` and
`--apply`, and the rendered commands run for real on the real control plane (tests/controlplane:
kube-apiserver, the Job, CronJob and scheduler controllers) with the process kubelet
(tests/kubelet/process.py) running the pods: a backup of a PVC mounted read-only while the app
writes, a restore Job into a PVC, a drill, off-site backups, and the backup pod following the app
from node to node. The CLI only ever gets the kubeconfig of docs/rbac.yaml's ServiceAccount."""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from kubernetes import client

from migrator.manifests.backup import (
    build_drill_cronjob,
    build_restore_job,
    job_from_cronjob,
    render_backups,
)
from migrator.plan import dump_yaml, load_plan
from migrator.samples import DatabaseWriter, SampleSizes, make_config_dir
from migrator.seaweedfs import SeaweedFS
from tests import tenant_media
from tests.conftest import BASELINE
from tests.controlplane import ControlPlane
from tests.controlplane.cluster import Cluster, unique_namespace
from tests.helpers import load_yaml, run_cli, validate_manifest
from tests.kubelet.process import ProcessKubelet

SIZES = SampleSizes(covers=40, db_rows=300, cover_bytes=(512, 4096))


@dataclass
class Cozy:
    cluster: Cluster
    root: Path
    bucket: str
    server: SeaweedFS
    claims: dict[str, Path]  # claim name -> the host directory behind it

    @property
    def ns(self) -> str:
        return self.cluster.namespace

    def cli(self, *args: str) -> Any:
        """``migrator ARGS`` as docs/rbac.yaml's ServiceAccount."""
        return run_cli(*args, "--kubeconfig", str(self.cluster.kubeconfig_path), cwd=self.root)

    def plan(self, *extra: str) -> Path:
        result = self.cli(
            "plan",
            "-n",
            self.ns,
            "--target",
            "s3://media/migrated",
            "--s3-credentials-secret",
            tenant_media.SECRET_NAME,
            "--s3-endpoint",
            self.server.s3_endpoint,
            "--backup-target",
            f"s3://{self.bucket}/backups",
            *extra,
        )
        assert result.exit_code == 0, result.output
        return self.root / "plans" / f"{self.ns}.yaml"

    def new_claim(self, name: str) -> Path:
        """A new, empty RWO claim of the ``replicated`` class (its PV is provisioned once a pod
        using it is scheduled), backed by a host directory the test can read."""
        directory = self.root / "volumes" / name
        directory.mkdir(parents=True)
        self.cluster.kubelet.add_claim(self.ns, name, directory)
        self.claims[name] = directory
        self.cluster.seed(
            [
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": name, "namespace": self.ns},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "storageClassName": "replicated",
                        "resources": {"requests": {"storage": "2Gi"}},
                    },
                }
            ]
        )
        return directory

    def live_pods(self, **labels: str) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items()) or None
        return [
            p
            for p in self.cluster.list_objects("v1", "Pod", self.ns, selector)
            if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            and not p["metadata"].get("deletionTimestamp")
        ]


@pytest.fixture
def cozy(
    control_plane: ControlPlane,
    kubelet: ProcessKubelet,
    tmp_path: Path,
    seaweedfs: SeaweedFS,
    bucket: str,
) -> Iterator[Cozy]:
    """A fresh tenant namespace (Pod Security baseline) seeded with tenant-media's objects, the
    config claims backed by sample config directories and the credentials Secret's keys real."""
    namespace = unique_namespace()
    cluster = Cluster(control_plane, namespace, tmp_path / "cluster", kubelet)
    claims: dict[str, Path] = {}
    for app in tenant_media.APPS:
        claims[f"{app}-config"] = make_config_dir(
            tmp_path / "volumes" / app, app, SIZES, random.Random(app)
        )
        kubelet.add_claim(namespace, f"{app}-config", claims[f"{app}-config"])
    secret = tenant_media.credentials_secret(
        access_key=seaweedfs.access_key,
        secret_key=seaweedfs.secret_key,
        bucket=bucket,
        namespace=namespace,
    )
    try:
        cluster.create_namespace(BASELINE)
        cluster.seed(tenant_media.tenant_media(secret=secret, ns=namespace, with_nodes=False)[1:])
        cluster.settle()  # the apps run (idle processes on their nodes), as on a live cluster
        yield Cozy(cluster, tmp_path, bucket, seaweedfs, claims)
    finally:
        cluster.delete()


def trigger(cozy: Cozy, cronjob: str, job: str) -> dict[str, Any]:
    """Run an applied CronJob now, as ``kubectl create job --from=cronjob/NAME`` does (as admin),
    and wait until the Job finished; returns it."""
    stored = cozy.cluster.get_object("batch/v1", "CronJob", cozy.ns, cronjob)
    assert stored is not None
    template = stored["spec"]["jobTemplate"]
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job,
            "namespace": cozy.ns,
            "labels": template["metadata"].get("labels") or {},
            "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": cronjob,
                    "uid": stored["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": template["spec"],
    }
    cozy.cluster.seed([body])

    def finished() -> bool:
        found = cozy.cluster.get_object("batch/v1", "Job", cozy.ns, job) or {}
        conditions = (found.get("status") or {}).get("conditions") or []
        return any(
            c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions
        )

    cozy.cluster.wait_for(finished, 120, f"Job {job} finished")
    return cozy.cluster.get_object("batch/v1", "Job", cozy.ns, job) or {}


def container(cronjob: dict[str, Any]) -> dict[str, Any]:
    [found] = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return dict(found)


def test_install_renders_strictly_valid_cronjobs(cozy: Cozy) -> None:
    plan_path = cozy.plan()
    result = run_cli(
        "backup",
        "install",
        "--plan",
        str(plan_path),
        "--drill",
        "weekly",
        "--keep-daily",
        "10",
        "--json",
    )
    assert result.exit_code == 0, result.output
    rendered = {m["metadata"]["name"]: m for m in json.loads(result.stdout)}
    # Each app's RWO config PVC is attached on that app's node: one pod cannot mount them all.
    assert sorted(rendered) == [
        f"migrator-backup-drill-{cozy.ns}",
        "migrator-backup-prowlarr-config",
        "migrator-backup-radarr-config",
        "migrator-backup-sonarr-config",
    ]
    for manifest in rendered.values():
        validate_manifest(manifest)
        assert manifest["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "migrator"
        assert len(manifest["metadata"]["name"]) <= 52
    sonarr = rendered["migrator-backup-sonarr-config"]
    spec = sonarr["spec"]
    assert (spec["schedule"], spec["timeZone"], spec["concurrencyPolicy"]) == (
        "0 3 * * *",
        "Etc/UTC",
        "Forbid",
    )
    assert spec["startingDeadlineSeconds"] == 3600
    assert (spec["successfulJobsHistoryLimit"], spec["failedJobsHistoryLimit"]) == (3, 3)
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 2 and 3600 <= job["activeDeadlineSeconds"] <= 20 * 3600
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    # Not pinned to the node of plan time: it prefers wherever the app's pod runs tonight.
    assert pod["affinity"] == {
        "podAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "labelSelector": {
                            "matchLabels": {
                                "app.kubernetes.io/instance": "sonarr",
                                "app.kubernetes.io/name": "sonarr",
                            }
                        },
                        "topologyKey": "kubernetes.io/hostname",
                    },
                }
            ]
        }
    }
    assert pod["volumes"][0] == {
        "name": "source-0",
        "persistentVolumeClaim": {"claimName": "sonarr-config", "readOnly": True},
    }
    main = container(sonarr)
    assert main["image"] == load_plan(plan_path).spec["image"]
    assert main["volumeMounts"][0] == {
        "name": "source-0",
        "mountPath": "/mnt/source/sonarr-config",
        "readOnly": True,
    }
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["DAC_OVERRIDE"]}
    assert main["resources"]["limits"]["memory"] == "1Gi"
    assert main["command"] == [
        "migrator",
        "agent",
        "backup",
        "--to",
        f"s3://{cozy.bucket}/backups",
        "--plan-name",
        cozy.ns,
        "--tmp-dir",
        "/tmp",
        "--volume",
        "sonarr-config",
        "/mnt/source/sonarr-config",
        "--app",
        "sonarr-config=sonarr",
        "--keep-last",
        "0",
        "--keep-daily",
        "10",
        "--keep-weekly",
        "4",
        "--keep-monthly",
        "6",
    ]
    env = {e["name"]: e for e in main["env"]}
    assert env["AWS_ENDPOINT_URL"]["value"] == cozy.server.s3_endpoint
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {
        "secretKeyRef": {"name": tenant_media.SECRET_NAME, "key": "accessKey"}
    }
    assert cozy.server.secret_key not in result.stdout  # by reference only, never by value

    drill = rendered[f"migrator-backup-drill-{cozy.ns}"]
    assert drill["spec"]["schedule"] == "30 4 * * 0"
    assert container(drill)["command"] == [
        "migrator",
        "agent",
        "backup-drill",
        "--from",
        f"s3://{cozy.bucket}/backups",
        "--volume",
        "prowlarr-config",
        "--volume",
        "radarr-config",
        "--volume",
        "sonarr-config",
        "--scratch",
        "/mnt/restore",
        "--max-age-hours",
        "48",
    ]
    drill_pod = drill["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert all("persistentVolumeClaim" not in v for v in drill_pod["volumes"])


def test_one_cronjob_per_plan_when_one_pod_can_mount_every_volume(cozy: Cozy) -> None:
    document = load_plan(cozy.plan()).document
    for volume in document["spec"]["volumes"]:
        volume["source"]["accessModes"] = ["ReadWriteMany"]  # any node may mount them together
    files = render_backups(document)
    [(name, cronjob)] = files.items()
    assert name == f"migrator-backup-{cozy.ns}.yaml"
    validate_manifest(cronjob)
    mounts = container(cronjob)["volumeMounts"]
    assert [m["mountPath"] for m in mounts] == [
        "/mnt/source/prowlarr-config",
        "/mnt/source/radarr-config",
        "/mnt/source/sonarr-config",
        "/tmp",
    ]
    assert all(m["readOnly"] for m in mounts[:3])


def test_apps_sharing_a_node_at_plan_time_still_get_a_cronjob_each(cozy: Cozy) -> None:
    """Where two apps run tonight is not known at plan time; an app's volumes stay together."""
    document = load_plan(cozy.plan()).document
    volumes = {v["name"]: v for v in document["spec"]["volumes"]}
    for volume in volumes.values():
        volume["source"]["nodes"] = ["worker-1"]
    second = json.loads(json.dumps(volumes["sonarr-config"]))
    second["name"], second["source"]["pvc"] = "sonarr-logs", "sonarr-logs"
    document["spec"]["volumes"].append(second)
    files = render_backups(document)
    assert sorted(files) == [
        "migrator-backup-prowlarr-config.yaml",
        "migrator-backup-radarr-config.yaml",
        "migrator-backup-sonarr.yaml",
    ]
    sonarr = files["migrator-backup-sonarr.yaml"]
    validate_manifest(sonarr)
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in sonarr["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["sonarr-config", "sonarr-logs"]
    [term] = sonarr["spec"]["jobTemplate"]["spec"]["template"]["spec"]["affinity"]["podAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"]["app.kubernetes.io/name"] == (
        "sonarr"
    )


def test_a_plan_without_pod_selectors_keeps_the_plan_time_node(cozy: Cozy) -> None:
    """Plans written before podSelector was recorded still render a schedulable CronJob."""
    document = load_plan(cozy.plan("--volume", "sonarr-config")).document
    for workload in document["spec"]["volumes"][0]["workloads"]:
        del workload["podSelector"]
    [cronjob] = render_backups(document).values()
    affinity = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["affinity"]
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["worker-1"]


def test_install_out_writes_files_for_the_flux_repository(cozy: Cozy) -> None:
    plan_path = cozy.plan("--volume", "sonarr-config")
    out = cozy.root / "flux" / "backups"
    result = run_cli("backup", "install", "--plan", str(plan_path), "--out", str(out))
    assert result.exit_code == 0, result.output
    file = f"migrator-backup-{cozy.ns}.yaml"
    assert sorted(p.name for p in out.iterdir()) == ["kustomization.yaml", file]
    assert load_yaml(out / "kustomization.yaml")["resources"] == [file]
    validate_manifest(load_yaml(out / file))
    (out / "kustomization.yaml").write_text("resources: [mine.yaml]\n")
    result = run_cli("backup", "install", "--plan", str(plan_path), "--out", str(out))
    assert result.exit_code == 0
    assert (out / "kustomization.yaml").read_text() == "resources: [mine.yaml]\n"  # left alone


def test_install_apply_creates_the_cronjob_server_side(cozy: Cozy) -> None:
    plan_path = cozy.plan("--volume", "sonarr-config")
    for _ in range(2):  # idempotent
        result = cozy.cli(
            "backup", "install", "--plan", str(plan_path), "--apply", "--drill", "daily"
        )
        assert result.exit_code == 0, result.output
    name, drill_name = f"migrator-backup-{cozy.ns}", f"migrator-backup-drill-{cozy.ns}"
    stored = cozy.cluster.get_object("batch/v1", "CronJob", cozy.ns, name)
    assert stored is not None and stored["spec"]["concurrencyPolicy"] == "Forbid"
    managers = {m["manager"] for m in stored["metadata"].get("managedFields", [])}
    assert managers == {"migrator"}
    drill = cozy.cluster.get_object("batch/v1", "CronJob", cozy.ns, drill_name)
    assert drill is not None and drill["spec"]["schedule"] == "30 4 * * *"
    assert cozy.cluster.forbidden() == []

    # What the applied CronJobs run, triggered now: a snapshot lands in S3, the drill restores it.
    backup = trigger(cozy, name, "nightly-now")
    assert backup["status"].get("succeeded") == 1, backup["status"]
    listed = run_cli(
        "backup",
        "list",
        "--plan",
        str(plan_path),
        "--json",
        env={
            "AWS_ACCESS_KEY_ID": cozy.server.access_key,
            "AWS_SECRET_ACCESS_KEY": cozy.server.secret_key,
        },
    )
    assert listed.exit_code == 0, listed.output
    [snapshot] = json.loads(listed.stdout)["snapshots"]
    assert snapshot["volume"] == "sonarr-config"
    drilled = trigger(cozy, drill_name, "drill-now")
    assert drilled["status"].get("succeeded") == 1, drilled["status"]


def test_bad_install_requests_are_bad_input(cozy: Cozy, tmp_path: Path) -> None:
    plan_path = cozy.plan("--volume", "sonarr-config")
    result = run_cli("backup", "install", "--plan", str(plan_path), "--schedule", "nightly")
    assert result.exit_code == 2 and "is not a cron expression" in result.output
    result = run_cli("backup", "install", "--plan", str(plan_path), "--schedule", "99 99 * * *")
    assert result.exit_code == 2, result.output
    assert "minute 99 is out of range 0-59" in result.output
    media = cozy.plan("--volume", "media")
    result = run_cli("backup", "install", "--plan", str(media))
    assert result.exit_code == 2 and "has no config volumes to back up" in result.output


def rows(path: Path) -> int:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(connection.execute("select count(*) from Writes").fetchone()[0])
    finally:
        connection.close()


def test_backup_job_on_a_read_only_mount_then_restore_job_and_drill(cozy: Cozy) -> None:
    plan_path = cozy.plan("--volume", "sonarr-config")
    source = cozy.claims["sonarr-config"]
    database = source / "sonarr.db"
    with DatabaseWriter(database) as writer:
        while writer.rows_written < 20:
            writer.stopping.wait(0.01)
        before = rows(database)
        result = cozy.cli("backup", "run", "--plan", str(plan_path), "--json")
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert outcome["executor"] == "kubernetes"
    [volume] = outcome["volumes"]
    assert volume["status"] == "done" and volume["databases"] == ["logs.db", "sonarr.db"]
    [job_name] = outcome["jobs"]
    job = cozy.cluster.get_object("batch/v1", "Job", cozy.ns, job_name)
    assert job is not None and job["status"].get("succeeded") == 1
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["volumes"][0]["persistentVolumeClaim"]["readOnly"] is True
    # It ran beside the app (the RWO claim is attached there) and the log was followed.
    [pod] = cozy.cluster.list_objects("v1", "Pod", cozy.ns, f"job-name={job_name}")
    [app] = cozy.live_pods(**{"app.kubernetes.io/name": "sonarr"})
    assert pod["spec"]["nodeName"] == app["spec"]["nodeName"]

    # Restoring into the live claim is refused while the app's pod mounts it.
    live = cozy.cli(
        "backup",
        "restore",
        "latest",
        "--plan",
        str(plan_path),
        "--volume",
        "sonarr-config",
        "--to-pvc",
        "sonarr-config",
        "--force",
    )
    assert live.exit_code == 2
    assert (
        "is mounted by running pod(s) sonarr-" in live.output
        and "stop the app first" in live.output
    )

    restored = cozy.new_claim("sonarr-restored")
    result = cozy.cli(
        "backup",
        "restore",
        volume["snapshot"],
        "--plan",
        str(plan_path),
        "--volume",
        "sonarr-config",
        "--to-pvc",
        "sonarr-restored",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["databases"] == ["logs.db", "sonarr.db"]
    assert rows(restored / "sonarr.db") >= before
    assert (restored / "config.xml").read_bytes() == (source / "config.xml").read_bytes()

    drill_cronjob = build_drill_cronjob(load_plan(plan_path).document, "30 4 * * 0")
    drill_job = job_from_cronjob(drill_cronjob, "migrator-backup-drill-now")
    from migrator.executors.kubernetes import KubernetesExecutor
    from migrator.kube import KubeClient

    kube = KubeClient.from_kubeconfig(str(cozy.cluster.kubeconfig_path))
    events: list[dict[str, Any]] = []
    drilled = KubernetesExecutor(kube, 120).run_job(drill_job, lambda _i, e: events.append(e))
    assert drilled.succeeded, drilled.message
    done = [e for e in events if e.get("event") == "done"]
    assert done and done[-1]["ok"] and done[-1]["volumes"][0]["snapshot"] == volume["snapshot"]
    assert cozy.cluster.forbidden() == []


def test_restore_job_into_the_apps_own_claim_once_the_app_is_stopped(cozy: Cozy) -> None:
    """The documented way back: scale the app to 0, then restore over its claim (--force)."""
    plan_path = cozy.plan("--volume", "sonarr-config")
    config = cozy.claims["sonarr-config"] / "config.xml"
    good = config.read_bytes()
    result = cozy.cli("backup", "run", "--plan", str(plan_path), "--json")
    assert result.exit_code == 0, result.output
    config.write_text("<Config>damaged</Config>\n")
    cozy.cluster.patch_object("apps/v1", "Deployment", cozy.ns, "sonarr", {"spec": {"replicas": 0}})
    cozy.cluster.wait_for(  # gone, not only terminating: until then it still mounts the claim
        lambda: (
            not cozy.cluster.list_objects("v1", "Pod", cozy.ns, "app.kubernetes.io/name=sonarr")
        ),
        60,
        "sonarr's pod gone",
    )
    result = cozy.cli(
        "backup",
        "restore",
        "latest",
        "--plan",
        str(plan_path),
        "--volume",
        "sonarr-config",
        "--to-pvc",
        "sonarr-config",
        "--force",
        "--timeout",
        "120",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"]
    assert config.read_bytes() == good
    assert cozy.cluster.forbidden() == []


def test_listing_from_a_workstation_uses_its_own_endpoint_and_keys(cozy: Cozy) -> None:
    plan_path = cozy.plan("--volume", "sonarr-config")
    s3 = boto3.client(
        "s3",
        endpoint_url=cozy.server.s3_endpoint,
        aws_access_key_id=cozy.server.access_key,
        aws_secret_access_key=cozy.server.secret_key,
        region_name="us-east-1",
    )
    assert s3.list_objects_v2(Bucket=cozy.bucket).get("KeyCount") == 0
    result = run_cli(
        "backup",
        "list",
        "--plan",
        str(plan_path),
        "--json",
        env={
            "AWS_ACCESS_KEY_ID": cozy.server.access_key,
            "AWS_SECRET_ACCESS_KEY": cozy.server.secret_key,
        },
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["snapshots"] == []


def test_restore_job_brings_back_setuid_bits_only_when_asked(cozy: Cozy) -> None:
    plan_path = cozy.plan("--volume", "sonarr-config")
    source = cozy.claims["sonarr-config"]
    (source / "tool").write_bytes(b"#!/bin/sh\n")
    (source / "tool").chmod(0o4755)
    result = cozy.cli("backup", "run", "--plan", str(plan_path), "--json")
    assert result.exit_code == 0, result.output
    modes = {}
    for claim, extra in (("sonarr-plain", ()), ("sonarr-kept", ("--keep-setid",))):
        restored = cozy.new_claim(claim)
        result = cozy.cli(
            "backup",
            "restore",
            "latest",
            "--plan",
            str(plan_path),
            "--volume",
            "sonarr-config",
            "--to-pvc",
            claim,
            "--json",
            *extra,
        )
        assert result.exit_code == 0, result.output
        modes[claim] = (restored / "tool").stat().st_mode & 0o7777
    assert modes == {"sonarr-plain": 0o755, "sonarr-kept": 0o4755}
    assert cozy.cluster.forbidden() == []
    job = build_restore_job(
        load_plan(plan_path).document,
        {"name": "sonarr-config", "source": {}},
        "latest",
        "sonarr-kept",
        keep_setid=True,
    )
    validate_manifest(job)
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "--keep-setid"


def test_nightly_backup_follows_the_app_to_another_node_and_runs_while_it_is_down(
    cozy: Cozy,
) -> None:
    """After a drain the app runs elsewhere: the backup pod must go there (RWO Multi-Attach)."""
    plan_path = cozy.plan("--volume", "sonarr-config")
    batch = client.BatchV1Api(cozy.cluster.admin)
    sonarr = {"app.kubernetes.io/name": "sonarr"}

    def backup_node() -> str:
        # --timeout: a pod on the wrong node waits on Multi-Attach; a minute is plenty otherwise
        result = cozy.cli("backup", "run", "--plan", str(plan_path), "--timeout", "90", "--json")
        assert result.exit_code == 0, result.output
        [job] = json.loads(result.stdout)["jobs"]
        [pod] = cozy.cluster.list_objects("v1", "Pod", cozy.ns, f"job-name={job}")
        # Manual Jobs are named by the second: two runs within one would share the first Job.
        batch.delete_namespaced_job(job, cozy.ns, propagation_policy="Background")
        return str(pod["spec"]["nodeName"])

    def move(patch: dict[str, Any], node: str | None) -> None:
        cozy.cluster.patch_object("apps/v1", "Deployment", cozy.ns, "sonarr", patch)
        cozy.cluster.wait_for(
            lambda: (
                [p["spec"].get("nodeName") for p in cozy.live_pods(**sonarr)]
                == ([node] if node else [])
            ),
            60,
            f"sonarr on {node or 'no node'}",
        )
        if node:
            cozy.cluster.settle()

    [app_pod] = cozy.live_pods(**sonarr)
    assert app_pod["spec"]["nodeName"] == "worker-1"
    assert backup_node() == "worker-1"

    # A drain moves the app to worker-3 (here: a new nodeSelector, the pod is rescheduled).
    move(
        {"spec": {"template": {"spec": {"nodeSelector": {"kubernetes.io/hostname": "worker-3"}}}}},
        "worker-3",
    )
    assert backup_node() == "worker-3"

    # Scaled to 0 (e.g. during a cutover): nothing to follow, the backup runs on any node.
    move({"spec": {"replicas": 0}}, None)
    assert backup_node() in {"worker-1", "worker-2", "worker-3"}
    assert cozy.cluster.forbidden() == []


def test_a_backup_pinned_to_a_node_the_app_left_says_what_its_pod_waits_for(
    cozy: Cozy,
) -> None:
    """A plan without pod selectors pins the backup to the plan-time node; once the app runs
    elsewhere the RWO claim is attached there and the pod waits on Multi-Attach: the timeout
    names that, not only the time."""
    plan_path = cozy.plan("--volume", "sonarr-config")
    document = load_yaml(plan_path)
    for workload in document["spec"]["volumes"][0]["workloads"]:
        del workload["podSelector"]
    plan_path.write_text(dump_yaml(document))
    cozy.cluster.patch_object(
        "apps/v1",
        "Deployment",
        cozy.ns,
        "sonarr",
        {"spec": {"template": {"spec": {"nodeSelector": {"kubernetes.io/hostname": "worker-3"}}}}},
    )
    cozy.cluster.wait_for(
        lambda: (
            [
                p["spec"].get("nodeName")
                for p in cozy.live_pods(**{"app.kubernetes.io/name": "sonarr"})
            ]
            == ["worker-3"]
        ),
        60,
        "sonarr on worker-3",
    )
    result = cozy.cli("backup", "run", "--plan", str(plan_path), "--timeout", "15")
    assert result.exit_code == 3, result.output
    error = result.output.splitlines()[-1]
    assert error.startswith(f"Error: Job migrator-backup-{cozy.ns}-manual-"), error
    assert "did not finish within 15s; its pod migrator-backup-" in error
    assert "is still waiting: FailedAttachVolume: Multi-Attach error for volume" in error
    assert "Volume is already used by pod(s) sonarr-" in error
    assert cozy.cluster.forbidden() == []


def test_offsite_backups_use_their_own_secret_and_endpoint(
    cozy: Cozy, offsite_seaweedfs: SeaweedFS
) -> None:
    """Backups to another S3 (another Bucket app, or another provider): its Secret by reference,
    its endpoint, and the Job really writes there."""
    from tests.conftest import make_bucket

    offsite_bucket = make_bucket(offsite_seaweedfs)
    secret = tenant_media.credentials_secret(
        host=offsite_seaweedfs.s3_endpoint.removeprefix("http://"),
        bucket=offsite_bucket,
        access_key=offsite_seaweedfs.access_key,
        secret_key=offsite_seaweedfs.secret_key,
    )
    secret["metadata"]["name"] = "bucket-arr-offsite-backup-credentials"
    secret["metadata"]["namespace"] = cozy.ns
    cozy.cluster.seed([secret])
    result = cozy.cli(
        "plan",
        "-n",
        cozy.ns,
        "--target",
        "s3://media/migrated",
        "--volume",
        "sonarr-config",
        "--s3-credentials-secret",
        tenant_media.SECRET_NAME,
        "--s3-endpoint",
        cozy.server.s3_endpoint,
        "--backup-target",
        "s3://arr-offsite/nightly",
        "--backup-credentials-secret",
        "bucket-arr-offsite-backup-credentials",
        "--backup-endpoint",
        offsite_seaweedfs.s3_endpoint,
    )
    assert result.exit_code == 0, result.output
    plan_path = cozy.root / "plans" / f"{cozy.ns}.yaml"
    backup = load_plan(plan_path).spec["backup"]
    assert backup == {
        "url": "s3://arr-offsite/nightly",
        "bucket": offsite_bucket,
        "prefix": "nightly",
        "endpoint": offsite_seaweedfs.s3_endpoint,
        "credentialsSecret": "bucket-arr-offsite-backup-credentials",
    }
    assert offsite_seaweedfs.secret_key not in plan_path.read_text()

    result = run_cli("backup", "install", "--plan", str(plan_path), "--drill", "weekly", "--json")
    assert result.exit_code == 0, result.output
    for manifest in json.loads(result.stdout):
        env = {e["name"]: e for e in container(manifest)["env"]}
        assert env["AWS_ENDPOINT_URL"]["value"] == offsite_seaweedfs.s3_endpoint
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {
            "secretKeyRef": {"name": "bucket-arr-offsite-backup-credentials", "key": "secretKey"}
        }
    assert offsite_seaweedfs.secret_key not in result.stdout

    result = cozy.cli("backup", "run", "--plan", str(plan_path), "--timeout", "90", "--json")
    assert result.exit_code == 0, result.output
    [volume] = json.loads(result.stdout)["volumes"]
    offsite = boto3.client(
        "s3",
        endpoint_url=offsite_seaweedfs.s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=offsite_seaweedfs.access_key,
        aws_secret_access_key=offsite_seaweedfs.secret_key,
    )
    keys = [o["Key"] for o in offsite.list_objects_v2(Bucket=offsite_bucket)["Contents"]]
    assert any(k.startswith("nightly/sonarr-config/") and volume["snapshot"] in k for k in keys)
    result = run_cli(
        "backup",
        "list",
        "--plan",
        str(plan_path),
        "--json",
        env={
            "MIGRATOR_BACKUP_AWS_ACCESS_KEY_ID": offsite_seaweedfs.access_key,
            "MIGRATOR_BACKUP_AWS_SECRET_ACCESS_KEY": offsite_seaweedfs.secret_key,
        },
    )
    assert result.exit_code == 0, result.output
    assert [s["id"] for s in json.loads(result.stdout)["snapshots"]] == [volume["snapshot"]]
    assert cozy.cluster.forbidden() == []
