"""`migrator run` with the kubernetes executor, end to end: the API test server runs the rendered
Jobs' real commands (rclone, the agent) against real SeaweedFS, with PVCs mapped to directories."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from kubernetes import client

from migrator.samples import DatabaseWriter, SampleSizes, make_sample_tree
from migrator.seaweedfs import SeaweedFS
from tests import tenant_media
from tests.helpers import run_cli
from tests.kubeapi import JobController, KubeAPIServer
from tests.test_run_local import assert_identical

NS = tenant_media.NAMESPACE
SIZES = SampleSizes(
    covers=120, db_rows=300, episodes=3, episode_bytes=300 * 1024, movies=1, movie_bytes=600 * 1024
)


@pytest.fixture
def cozy(tmp_path: Path, seaweedfs: SeaweedFS) -> Iterator[tuple[KubeAPIServer, Any]]:
    """tenant-media with its PVCs backed by sample directories and a real bucket behind the Secret."""
    s3 = boto3.client(
        "s3", endpoint_url=seaweedfs.s3_endpoint, aws_access_key_id=seaweedfs.access_key,
        aws_secret_access_key=seaweedfs.secret_key, region_name="us-east-1",
    )  # fmt: skip
    bucket = f"{tenant_media.BUCKET_NAME}-{tmp_path.name[-20:].lower().strip('_-')}".replace(
        "_", "-"
    )[:63]
    s3.create_bucket(Bucket=bucket)
    tree = make_sample_tree(tmp_path / "volumes", SIZES)
    claims = {(NS, name): path for name, path in tree.source_dirs().items()}
    secret = tenant_media.credentials_secret(
        access_key=seaweedfs.access_key, secret_key=seaweedfs.secret_key, bucket=bucket
    )
    with KubeAPIServer(tmp_path / "kubeapi") as api:
        api.add_controller(JobController(claims))
        api.seed(tenant_media.tenant_media(secret=secret))
        api.settle()  # the workloads' pods are scheduled, as on a live cluster
        yield api, {"tree": tree, "bucket": bucket, "s3": s3, "server": seaweedfs, "tmp": tmp_path}


def plan(api: KubeAPIServer, env: dict[str, Any], *extra: str) -> Path:
    result = run_cli(
        "plan", "-n", NS, "--kubeconfig", str(api.kubeconfig_path), "--target", "s3://media/migrated",
        "--s3-credentials-secret", tenant_media.SECRET_NAME, "--s3-endpoint", env["server"].s3_endpoint,
        "--parallel", "2", *extra, cwd=env["tmp"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return env["tmp"] / "plans" / f"{NS}.yaml"


def run(api: KubeAPIServer, plan_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = run_cli(
        "run", "--plan", str(plan_path), "--kubeconfig", str(api.kubeconfig_path), "--json", *args
    )
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip().startswith(
        "{"
    ) else {}


def test_preseed_then_cutover_through_jobs(cozy: tuple[KubeAPIServer, Any]) -> None:
    api, env = cozy
    plan_path = plan(api, env)
    tree = env["tree"]
    with DatabaseWriter(tree.config_dirs["sonarr"] / "sonarr.db"):
        code, summary = run(api, plan_path, "--phase", "all")
    assert code == 0, summary["volumes"]
    assert {v["volume"]: v["status"] for v in summary["volumes"]} == {
        "media": "done", "prowlarr-config": "done", "radarr-config": "done", "sonarr-config": "done",
    }  # fmt: skip
    jobs = {j["metadata"]["name"]: j for j in api.list_objects("batch/v1", "Job", NS)}
    media_job = jobs["migrator-copy-media"]
    assert media_job["spec"]["completionMode"] == "Indexed"
    assert media_job["status"]["completedIndexes"] == "0-1"
    journal = api.get_object("v1", "ConfigMap", NS, f"migrator-{NS}")
    assert journal is not None
    assert (
        json.loads(journal["data"]["journal.json"])["volumes"]["media"]["preseed"]["status"]
        == "done"
    )
    assert (
        api.get_object("coordination.k8s.io/v1", "Lease", NS, f"migrator-{NS}") is None
    )  # released

    (tree.media_dir / "tv" / "new episode.mkv").write_bytes(b"x" * 1000)
    code, summary = run(api, plan_path, "--phase", "all", "--cutover")
    assert code == 0, summary
    for name in ("sonarr", "radarr", "prowlarr"):
        release = api.get_object("helm.toolkit.fluxcd.io/v2", "HelmRelease", NS, name)
        assert release is not None and release["spec"]["suspend"] is True
        deployment = api.get_object("apps/v1", "Deployment", NS, name)
        assert deployment is not None and deployment["spec"]["replicas"] == 0
    assert [
        p
        for p in api.list_objects("v1", "Pod", NS)
        if not p["metadata"]["name"].startswith("migrator-")
    ] == []
    assert any("cutover done" in note for note in summary["notes"])
    server: SeaweedFS = env["server"]
    for name, path in tree.source_dirs().items():
        assert_identical(server, path, f"s3:{env['bucket']}/migrated/{name}")
    journal = json.loads(
        api.get_object("v1", "ConfigMap", NS, f"migrator-{NS}")["data"]["journal.json"]
    )  # type: ignore[index]
    assert journal["workloads"]["Deployment/sonarr"]["previousReplicas"] == 1
    assert journal["releases"]["sonarr"]["previousSuspend"] is False


def test_a_held_lease_refuses_a_second_run(cozy: tuple[KubeAPIServer, Any]) -> None:
    api, env = cozy
    plan_path = plan(api, env, "--volume", "prowlarr-config")
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    lease = {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": f"migrator-{NS}", "namespace": NS},
        "spec": {"holderIdentity": "other-host/4242", "leaseDurationSeconds": 60, "renewTime": now},
    }  # fmt: skip
    api.seed([lease])
    result = run_cli(
        "run",
        "--plan",
        str(plan_path),
        "--kubeconfig",
        str(api.kubeconfig_path),
        "--phase",
        "config",
    )
    assert result.exit_code == 3
    assert "another migrator run of this plan is in progress (other-host/4242" in result.output


def test_deleted_pod_is_replaced_and_the_copy_completes(cozy: tuple[KubeAPIServer, Any]) -> None:
    api, env = cozy
    plan_path = plan(api, env, "--volume", "media")
    core = client.CoreV1Api(api.api_client())
    deleted: list[str] = []

    def delete_first_running_pod() -> None:
        def running() -> list[dict[str, Any]]:
            return [
                p for p in api.list_objects("v1", "Pod", NS)
                if p["metadata"]["name"].startswith("migrator-copy-media") and (p.get("status") or {}).get("phase") == "Running"
            ]  # fmt: skip

        api.wait_for(lambda: bool(running()), timeout=60)
        name = running()[0]["metadata"]["name"]
        core.delete_namespaced_pod(name, NS)
        deleted.append(name)

    killer = threading.Thread(target=delete_first_running_pod)
    killer.start()
    code, summary = run(api, plan_path, "--phase", "media")
    killer.join()
    assert deleted
    assert code == 0, summary
    assert_identical(env["server"], env["tree"].media_dir, f"s3:{env['bucket']}/migrated/media")
