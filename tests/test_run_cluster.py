"""`migrator run` with the kubernetes executor, end to end on the real control plane: the real
Job controller and scheduler, the process kubelet running the rendered Jobs' real commands (rclone,
the agent) against real SeaweedFS, with PVCs backed by directories."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from migrator.samples import DatabaseWriter, SampleSizes, SampleTree, make_sample_tree
from migrator.seaweedfs import SeaweedFS
from tests import tenant_media
from tests.controlplane.cluster import Cluster
from tests.helpers import run_cli
from tests.test_run_local import assert_identical
from tests.test_swap_cluster import audit_mark, writes_since

SIZES = SampleSizes(
    covers=120, db_rows=300, episodes=3, episode_bytes=300 * 1024, movies=1, movie_bytes=600 * 1024
)


@dataclass
class Cozy:
    cluster: Cluster
    tree: SampleTree
    bucket: str
    server: SeaweedFS
    tmp: Path

    @property
    def ns(self) -> str:
        return self.cluster.namespace

    @property
    def media_dir(self) -> Path:
        """The sample tree's media library (the fixture always makes one)."""
        assert self.tree.media_dir is not None
        return self.tree.media_dir

    def plan(self, *extra: str) -> Path:
        result = run_cli(
            "plan",
            "-n",
            self.ns,
            "--kubeconfig",
            str(self.cluster.kubeconfig_path),
            "--target",
            "s3://media/migrated",
            "--s3-credentials-secret",
            tenant_media.SECRET_NAME,
            "--s3-endpoint",
            self.server.s3_endpoint,
            "--parallel",
            "2",
            *extra,
            cwd=self.tmp,
        )
        assert result.exit_code == 0, result.output
        return self.tmp / "plans" / f"{self.ns}.yaml"

    def run(self, plan_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
        result = run_cli(
            "run",
            "--plan",
            str(plan_path),
            "--kubeconfig",
            str(self.cluster.kubeconfig_path),
            "--json",
            *args,
        )
        text = result.stdout.strip()
        return result.exit_code, json.loads(text) if text.startswith("{") else {
            "output": result.output
        }


@pytest.fixture
def cozy(make_cluster: Callable[..., Cluster], tmp_path: Path, seaweedfs: SeaweedFS) -> Cozy:
    """tenant-media with its PVCs backed by sample directories and a real bucket behind the Secret."""
    s3 = boto3.client(
        "s3",
        endpoint_url=seaweedfs.s3_endpoint,
        aws_access_key_id=seaweedfs.access_key,
        aws_secret_access_key=seaweedfs.secret_key,
        region_name="us-east-1",
    )
    bucket = f"{tenant_media.BUCKET_NAME}-{tmp_path.name[-20:].lower().strip('_-')}".replace(
        "_", "-"
    )[:63]
    s3.create_bucket(Bucket=bucket)
    tree = make_sample_tree(tmp_path / "volumes", SIZES)
    cluster = make_cluster(
        claims=tree.source_dirs(),
        secret={
            "access_key": seaweedfs.access_key,
            "secret_key": seaweedfs.secret_key,
            "bucket": bucket,
        },
    )
    return Cozy(cluster, tree, bucket, seaweedfs, tmp_path)


def test_preseed_then_cutover_through_jobs(cozy: Cozy) -> None:
    cluster, tree, ns = cozy.cluster, cozy.tree, cozy.ns
    plan_path = cozy.plan()
    mark = audit_mark(cluster)
    with DatabaseWriter(tree.config_dirs["sonarr"] / "sonarr.db"):
        code, summary = cozy.run(plan_path, "--phase", "all")
    assert code == 0, summary
    # The run held the Lease from before its first write to after its last.
    written = writes_since(cluster, mark)
    assert written[0] == "create leases" and written[-1] == "delete leases", written
    assert {v["volume"]: v["status"] for v in summary["volumes"]} == {
        "media": "done",
        "prowlarr-config": "done",
        "radarr-config": "done",
        "sonarr-config": "done",
    }
    jobs = {j["metadata"]["name"]: j for j in cluster.list_objects("batch/v1", "Job", ns)}
    media_job = jobs["migrator-copy-media"]
    assert media_job["spec"]["completionMode"] == "Indexed"
    assert media_job["status"]["completedIndexes"] == "0,1"  # the real controller: no range for two
    journal = cluster.get_object("v1", "ConfigMap", ns, f"migrator-{ns}")
    assert journal is not None
    document = json.loads(journal["data"]["journal.json"])
    assert document["volumes"]["media"]["preseed"]["status"] == "done"
    assert cluster.get_object("coordination.k8s.io/v1", "Lease", ns, f"migrator-{ns}") is None

    (cozy.media_dir / "tv" / "new episode.mkv").write_bytes(b"x" * 1000)
    code, summary = cozy.run(plan_path, "--phase", "all", "--cutover")
    assert code == 0, summary
    for name in ("sonarr", "radarr", "prowlarr"):
        release = cluster.get_object("helm.toolkit.fluxcd.io/v2", "HelmRelease", ns, name)
        assert release is not None and release["spec"]["suspend"] is True
        deployment = cluster.get_object("apps/v1", "Deployment", ns, name)
        assert deployment is not None and deployment["spec"]["replicas"] == 0
    apps = [
        p["metadata"]["name"]
        for p in cluster.list_objects("v1", "Pod", ns)
        if not p["metadata"]["name"].startswith("migrator-")
    ]
    assert apps == []
    assert any("cutover done" in note for note in summary["notes"])
    for name, path in tree.source_dirs().items():
        assert_identical(cozy.server, path, f"s3:{cozy.bucket}/migrated/{name}")
    journal = cluster.get_object("v1", "ConfigMap", ns, f"migrator-{ns}")
    assert journal is not None
    document = json.loads(journal["data"]["journal.json"])
    assert document["workloads"]["Deployment/sonarr"]["previousReplicas"] == 1
    assert document["releases"]["sonarr"]["previousSuspend"] is False


def test_a_dry_run_cutover_writes_nothing(cozy: Cozy) -> None:
    """Not even the Lease: a dry run is what a read-only account may run to review the cutover."""
    plan_path = cozy.plan()
    mark = audit_mark(cozy.cluster)
    code, summary = cozy.run(plan_path, "--phase", "all", "--cutover", "--dry-run")
    assert code == 0, summary
    assert {(v["status"], v["message"]) for v in summary["volumes"]} == {("skipped", "(dry run)")}
    assert writes_since(cozy.cluster, mark) == []
    assert cozy.cluster.list_objects("batch/v1", "Job", cozy.ns) == []


def test_a_held_lease_refuses_a_second_run(cozy: Cozy) -> None:
    plan_path = cozy.plan("--volume", "prowlarr-config")
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": f"migrator-{cozy.ns}", "namespace": cozy.ns},
        "spec": {"holderIdentity": "other-host/4242", "leaseDurationSeconds": 60, "renewTime": now},
    }
    cozy.cluster.seed([lease])
    code, summary = cozy.run(plan_path, "--phase", "config")
    assert code == 3, summary
    assert "another migrator run of this plan is in progress (other-host/4242" in summary["output"]


def test_deleted_pod_is_replaced_and_the_copy_completes(cozy: Cozy) -> None:
    cluster, ns = cozy.cluster, cozy.ns
    plan_path = cozy.plan("--volume", "media")
    deleted: list[str] = []

    def running() -> list[dict[str, Any]]:
        return [
            p
            for p in cluster.list_objects("v1", "Pod", ns, "job-name=migrator-copy-media")
            if (p.get("status") or {}).get("phase") == "Running"
        ]

    def delete_first_running_pod() -> None:
        cluster.wait_for(lambda: bool(running()), timeout=60, what="a running copy pod")
        name = running()[0]["metadata"]["name"]
        cluster.core.delete_namespaced_pod(name, ns)
        deleted.append(name)

    killer = threading.Thread(target=delete_first_running_pod)
    killer.start()
    code, summary = cozy.run(plan_path, "--phase", "media")
    killer.join()
    assert deleted
    assert code == 0, summary
    assert_identical(cozy.server, cozy.media_dir, f"s3:{cozy.bucket}/migrated/media")
