"""An S3 endpoint behind a private CA (TLS with a certificate no system trusts), for real: a
SeaweedFS whose S3 gateway speaks HTTPS only, with a certificate from a throwaway CA.

`plan --s3-ca-bundle` puts the CA into the plan; every Job (copy, verify, backup) mounts it and
points rclone, boto3 and migrator's own S3 client at it; without it, a copy fails at once with
one line saying what to pass."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import trustme

from migrator.plan import load_plan
from migrator.samples import SampleSizes, make_sample_tree
from migrator.seaweedfs import SeaweedFS
from tests import tenant_media
from tests.controlplane.cluster import Cluster
from tests.helpers import load_yaml, run_cli, validate_manifest

SIZES = SampleSizes(
    covers=40, db_rows=200, episodes=2, episode_bytes=1536 * 1024, movies=1, movie_bytes=300 * 1024
)
NS = tenant_media.NAMESPACE


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SeaweedFS, Path]]:
    """A TLS-only SeaweedFS and the PEM file of the private CA that signed its certificate."""
    root = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(root / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    server = SeaweedFS(root / "weed", tls_cert=root / "cert.pem", tls_key=root / "key.pem")
    server.start()
    try:
        yield server, root / "ca.pem"
    finally:
        server.stop()


def s3(server: SeaweedFS, ca: Path) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.s3_endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
        verify=str(ca),
    )


def new_bucket(server: SeaweedFS, ca: Path, name: str) -> str:
    bucket = f"{name}-{time.monotonic_ns() % 10**9}"
    s3(server, ca).create_bucket(Bucket=bucket)
    return bucket


def aws_env(server: SeaweedFS) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def test_local_copy_verify_and_backup_trust_the_plans_ca(
    tmp_path: Path, tls: tuple[SeaweedFS, Path]
) -> None:
    server, ca = tls
    bucket = new_bucket(server, ca, "tls")
    tree = make_sample_tree(tmp_path / "src", SIZES)
    # A name that is not UTF-8 goes through rclone, the rest through the native uploader.
    assert tree.media_dir is not None
    (tree.media_dir / os.fsdecode(b"caf\xe9.nfo")).write_bytes(b"latin-1")
    args = [
        "plan",
        "--target",
        f"s3://{bucket}/arr",
        "--s3-endpoint",
        server.s3_endpoint,
        "--s3-ca-bundle",
        str(ca),
        "--backup-target",
        f"s3://{bucket}/backups",
    ]
    for name, path in tree.source_dirs().items():
        args += ["--source-dir", f"{name}={path}"]
    env = aws_env(server)
    result = run_cli(*args, cwd=tmp_path, env=env)
    assert result.exit_code == 0, result.output
    plan = load_plan(tmp_path / "plans" / "local.yaml")
    target = plan.spec["target"]
    assert target["caBundle"] == {"path": str(ca)} and target["probe"] == "bucket exists"
    job = load_yaml(tmp_path / "jobs" / "local" / "copy-media.yaml")
    validate_manifest(job)
    pod = job["spec"]["template"]["spec"]
    assert {"name": "s3-ca", "hostPath": {"path": str(ca), "type": "File"}} in pod["volumes"]
    env_of = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env_of["RCLONE_CA_CERT"] == env_of["AWS_CA_BUNDLE"] == "/etc/migrator/s3-ca/ca.crt"

    plan_file = str(tmp_path / "plans" / "local.yaml")
    result = run_cli("run", "--plan", plan_file, "--phase", "all", "--json", env=env)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert {v["volume"]: v["status"] for v in summary["volumes"]} == {
        name: "done" for name in tree.source_dirs()
    }
    stored = {
        item["Key"]
        for page in s3(server, ca).get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for item in page.get("Contents", [])
    }
    assert any(key.startswith("arr/media/") and "caf" in key for key in stored)  # via rclone
    # Live SQLite databases wait for the cutover.
    result = run_cli("run", "--plan", plan_file, "--phase", "all", "--cutover", env=env)
    assert result.exit_code == 0, result.output
    result = run_cli("verify", "--plan", plan_file, "--json", env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"] is True

    result = run_cli("backup", "run", "--plan", plan_file, "--json", env=env)
    assert result.exit_code == 0, result.output
    result = run_cli("backup", "list", "--plan", plan_file, "--json", env=env)
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["snapshots"]) == 3  # sonarr, radarr, prowlarr


def test_an_untrusted_certificate_fails_at_once_with_what_to_pass(
    tmp_path: Path, tls: tuple[SeaweedFS, Path]
) -> None:
    server, ca = tls
    bucket = new_bucket(server, ca, "untrusted")
    source = tmp_path / "media"
    (source / "tv").mkdir(parents=True)
    for index in range(20):
        (source / "tv" / f"e{index}.mkv").write_bytes(os.urandom(20_000))
    env = aws_env(server)
    result = run_cli(
        "plan",
        "--source-dir",
        f"media={source}",
        "--target",
        f"s3://{bucket}/x",
        "--s3-endpoint",
        server.s3_endpoint,
        cwd=tmp_path,
        env=env,
    )
    assert result.exit_code == 0, result.output  # the probe only notes what it found
    started = time.monotonic()
    result = run_cli(
        "run", "--plan", str(tmp_path / "plans" / "local.yaml"), "--phase", "media", env=env
    )
    assert result.exit_code == 3
    assert time.monotonic() - started < 20  # no retries: they cannot help
    assert f"the TLS certificate of 127.0.0.1:{server.ports['s3']} is not trusted" in result.output
    assert "give its CA with --s3-ca-bundle when planning" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("missing.pem", "--s3-ca-bundle missing.pem: No such file or directory"),
        ("not-a-cert.pem", "--s3-ca-bundle: {dir}/not-a-cert.pem holds no PEM certificate"),
    ],
)
def test_a_bad_ca_bundle_is_one_line(tmp_path: Path, value: str, message: str) -> None:
    (tmp_path / "not-a-cert.pem").write_text("hello\n")
    (tmp_path / "src").mkdir()
    result = run_cli(
        "plan",
        "--source-dir",
        f"media={tmp_path / 'src'}",
        "--target",
        "s3://bucket/x",
        "--s3-endpoint",
        "https://127.0.0.1:9",
        "--s3-ca-bundle",
        value,
        cwd=tmp_path,
    )
    assert result.exit_code == 2
    assert result.output.strip() == "Error: " + message.format(dir=tmp_path)


# --- cluster mode: the CA from a ConfigMap, on a real kube-apiserver --------------------------


@pytest.fixture
def tenant(cluster: Cluster, tmp_path: Path, tls: tuple[SeaweedFS, Path]) -> tuple[Cluster, Any]:
    """The real cluster's tenant namespace, its COSI Secret pointing at the TLS SeaweedFS and a
    CA bundle ConfigMap beside it (as trust-manager distributes one)."""
    server, ca = tls
    bucket = new_bucket(server, ca, "tenant")
    secret = tenant_media.credentials_secret(
        host=server.s3_endpoint.removeprefix("https://"),
        access_key=server.access_key,
        secret_key=server.secret_key,
        bucket=bucket,
        namespace=cluster.namespace,
    )
    cluster.patch_object(
        "v1", "Secret", cluster.namespace, tenant_media.SECRET_NAME, {"data": secret["data"]}
    )
    cluster.seed(
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "private-ca", "namespace": cluster.namespace},
                "data": {"ca-bundle.pem": ca.read_text()},
            }
        ]
    )
    return cluster, {"bucket": bucket, "tmp": tmp_path, "server": server, "ca": ca}


def tenant_plan(cluster: Cluster, env: dict[str, Any], *extra: str) -> Any:
    """``migrator plan`` as the ServiceAccount of docs/rbac.yaml."""
    return run_cli(
        "plan",
        "-n",
        cluster.namespace,
        "--kubeconfig",
        str(cluster.kubeconfig_path),
        "--target",
        "s3://media/migrated",
        "--s3-credentials-secret",
        tenant_media.SECRET_NAME,
        "--volume",
        "media",
        "--volume",
        "prowlarr-config",
        "--backup-target",
        "s3://media/backups",
        *extra,
        cwd=env["tmp"],
    )


def plan_with_the_configmap_ca(cluster: Cluster, env: dict[str, Any]) -> Path:
    """Plan with ``--s3-ca-bundle private-ca/ca-bundle.pem`` and check what it made: the plan
    refers to the ConfigMap (it never holds the bundle), its probe got through TLS with that CA,
    and the copy Job and the backup CronJobs mount the CA where rclone and the AWS SDK read it.
    Returns the plan's path."""
    result = tenant_plan(cluster, env, "--s3-ca-bundle", "private-ca/ca-bundle.pem")
    assert result.exit_code == 0, result.output
    plan_path: Path = env["tmp"] / "plans" / f"{cluster.namespace}.yaml"
    target = load_plan(plan_path).spec["target"]
    assert target["caBundle"] == {"configMap": "private-ca", "key": "ca-bundle.pem"}
    # The probe (unsigned: the keys stay in the cluster) got through TLS with the ConfigMap's CA.
    assert target["probe"] == "reachable; bucket not checked (no credentials here)"
    assert target["bucket"] == env["bucket"]  # read from the Secret as the ServiceAccount
    assert "BEGIN CERTIFICATE" not in plan_path.read_text()  # a reference, not the bundle
    job = load_yaml(env["tmp"] / "jobs" / cluster.namespace / "copy-media.yaml")
    validate_manifest(job)
    pod = job["spec"]["template"]["spec"]
    assert {
        "name": "s3-ca",
        "configMap": {"name": "private-ca", "items": [{"key": "ca-bundle.pem", "path": "ca.crt"}]},
    } in pod["volumes"]
    [container] = pod["containers"]
    assert {"name": "s3-ca", "mountPath": "/etc/migrator/s3-ca", "readOnly": True} in container[
        "volumeMounts"
    ]
    env_of = {e["name"]: e.get("value") for e in container["env"]}
    assert env_of["RCLONE_CA_CERT"] == env_of["AWS_CA_BUNDLE"] == "/etc/migrator/s3-ca/ca.crt"

    result = run_cli("backup", "install", "--plan", str(plan_path), "--json")
    assert result.exit_code == 0, result.output
    for cronjob in json.loads(result.stdout):
        validate_manifest(cronjob)
        pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert pod["volumes"][-1]["configMap"]["name"] == "private-ca"
        env_of = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env_of["AWS_CA_BUNDLE"] == "/etc/migrator/s3-ca/ca.crt"
    return plan_path


def test_cluster_plan_takes_the_ca_from_a_configmap(tenant: tuple[Cluster, Any]) -> None:
    cluster, env = tenant
    plan_with_the_configmap_ca(cluster, env)
    assert cluster.forbidden() == []


def test_a_missing_ca_configmap_or_key_is_one_line(tenant: tuple[Cluster, Any]) -> None:
    cluster, env = tenant
    result = tenant_plan(cluster, env, "--s3-ca-bundle", "no-such-ca")
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: ConfigMap 'no-such-ca' not found in namespace {cluster.namespace}"
    )
    result = tenant_plan(cluster, env, "--s3-ca-bundle", "private-ca")  # the default key, ca.crt
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: ConfigMap 'private-ca' has no key 'ca.crt' (keys: ca-bundle.pem)"
    )


def test_a_ca_bundle_for_a_pvc_target_is_refused(tenant: tuple[Cluster, Any]) -> None:
    cluster, env = tenant
    result = run_cli(
        "plan",
        "-n",
        cluster.namespace,
        "--kubeconfig",
        str(cluster.kubeconfig_path),
        "--target",
        "pvc:seaweedfs-storage",
        "--s3-ca-bundle",
        "private-ca/ca-bundle.pem",
        cwd=env["tmp"],
    )
    assert result.exit_code == 2
    assert result.output.strip() == "Error: --s3-ca-bundle is for s3:// targets"


# --- the Jobs' copy and verify with the CA, run by the process kubelet ---------------------------


@pytest.fixture
def cozy(
    make_cluster: Callable[..., Cluster], tmp_path: Path, tls: tuple[SeaweedFS, Path]
) -> tuple[Cluster, dict[str, Any]]:
    server, ca = tls
    bucket = new_bucket(server, ca, "cozy")
    tree = make_sample_tree(tmp_path / "volumes", SIZES)
    # As Cozystack's COSI Secret: the endpoint is https://HOST, from BucketInfo.
    secret = {
        "host": server.s3_endpoint.removeprefix("https://"),
        "access_key": server.access_key,
        "secret_key": server.secret_key,
        "bucket": bucket,
    }
    cluster = make_cluster(claims=tree.source_dirs(), secret=secret)
    # As trust-manager distributes a CA bundle: a ConfigMap in the namespace.
    cluster.seed(
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "private-ca", "namespace": cluster.namespace},
                "data": {"ca-bundle.pem": ca.read_text()},
            }
        ]
    )
    return cluster, {"tree": tree, "bucket": bucket, "tmp": tmp_path, "server": server, "ca": ca}


def test_cluster_jobs_mount_the_ca_from_a_configmap(cozy: tuple[Cluster, dict[str, Any]]) -> None:
    cluster, env = cozy
    plan_path = plan_with_the_configmap_ca(cluster, env)

    kubeconfig = str(cluster.kubeconfig_path)
    result = run_cli("run", "--plan", str(plan_path), "--kubeconfig", kubeconfig, "--phase", "all")
    assert result.exit_code == 0, result.output
    # (the config volume's live databases wait for a cutover)
    result = run_cli(
        "verify",
        "--plan",
        str(plan_path),
        "--kubeconfig",
        kubeconfig,
        "--volume",
        "media",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"] is True
    assert cluster.forbidden() == []
