"""`migrator plan` in cluster mode against the Kubernetes API test server (real REST, real client)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import tenant_media
from tests.helpers import load_yaml, run_cli, validate_manifest
from tests.kubeapi import KubeAPIServer

NS = tenant_media.NAMESPACE


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[KubeAPIServer]:
    with KubeAPIServer(tmp_path / "kubeapi") as api:
        api.seed(tenant_media.tenant_media())
        api.settle()  # the workloads' pods are scheduled, as on a live cluster
        yield api


def plan(api: KubeAPIServer, cwd: Path, *extra: str) -> Any:
    result = run_cli("plan", "-n", NS, "--kubeconfig", str(api.kubeconfig_path), *extra, cwd=cwd)
    return result


def s3_plan(api: KubeAPIServer, cwd: Path, *extra: str) -> Any:
    return plan(
        api, cwd, "--target", "s3://media/migrated",
        "--s3-credentials-secret", tenant_media.SECRET_NAME, *extra,
    )  # fmt: skip


def test_discovery_and_classification(cluster: KubeAPIServer, tmp_path: Path) -> None:
    result = s3_plan(cluster, tmp_path, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    volumes = {v["name"]: v for v in document["spec"]["volumes"]}
    assert sorted(volumes) == ["media", "prowlarr-config", "radarr-config", "sonarr-config"]
    sonarr = volumes["sonarr-config"]
    assert (sonarr["role"], sonarr["action"], sonarr["release"]) == ("config", "copy", "sonarr")
    assert sonarr["roleReason"] == "mounted at /config by Deployment/sonarr"
    assert sonarr["source"]["storageClass"] == "replicated"
    assert sonarr["source"]["provisioner"] == "linstor.csi.linbit.com"
    assert sonarr["source"]["accessModes"] == ["ReadWriteOnce"]
    assert sonarr["source"]["capacityBytes"] == 2 * 2**30
    assert sonarr["workloads"] == [
        {"kind": "Deployment", "name": "sonarr", "container": "app", "mountPath": "/config",
         "readOnly": False, "runAsUser": 911, "fsGroup": 911,
         "podSelector": {"app.kubernetes.io/instance": "sonarr", "app.kubernetes.io/name": "sonarr"}},
    ]  # fmt: skip
    assert volumes["prowlarr-config"]["workloads"][0]["runAsUser"] == 1000
    media = volumes["media"]
    assert (media["role"], media["action"]) == ("media", "move")
    assert {w["name"] for w in media["workloads"]} == {"sonarr", "radarr"}
    assert media["source"]["accessModes"] == ["ReadWriteMany"]
    assert media["copy"]["shards"] == 8  # 4 TiB at 200 GiB a shard, capped at 8
    releases = {r["name"]: r for r in document["spec"]["releases"]}
    assert releases["sonarr"]["chart"] == "app-template"
    assert releases["sonarr"]["workloads"] == ["Deployment/sonarr"]
    assert releases["sonarr"]["kustomization"] == "flux-system/apps"


def test_cosi_secret_gives_bucket_and_endpoint_but_no_secret_values(
    cluster: KubeAPIServer, tmp_path: Path
) -> None:
    result = s3_plan(cluster, tmp_path, "--backup-target", "s3://media/backups")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "plans" / f"{NS}.yaml").read_text()
    document = load_yaml(tmp_path / "plans" / f"{NS}.yaml")
    target = document["spec"]["target"]
    assert target["bucket"] == tenant_media.BUCKET_NAME
    assert target["endpoint"] == f"https://{tenant_media.S3_HOST}"
    assert target["credentialsSecret"] == tenant_media.SECRET_NAME
    assert document["spec"]["backup"]["bucket"] == tenant_media.BUCKET_NAME  # same Bucket app
    assert "unreachable from here" in target["probe"]  # in-cluster endpoint: a warning only
    for secret in ("topsecretvalue", "AKIAEXAMPLE"):
        assert secret not in text
        assert secret not in result.output
        for job in (tmp_path / "jobs" / NS).glob("*.yaml"):
            assert secret not in job.read_text()
    job = load_yaml(tmp_path / "jobs" / NS / "copy-media.yaml")
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RCLONE_CONFIG_DEST_SECRET_ACCESS_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": tenant_media.SECRET_NAME, "key": "secretKey"}
    }


def only_line(result: Any) -> str:
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    return str(result.output)


def raw_cosi_secret(name: str) -> dict[str, Any]:
    """The Secret COSI itself makes per user (``<bucket app>-<user>``): only BucketInfo JSON."""
    secret = tenant_media.credentials_secret()
    secret["metadata"]["name"] = name
    secret["data"] = {"BucketInfo": secret["data"]["BucketInfo"]}
    return secret


def test_a_raw_cosi_secret_is_refused_naming_the_credentials_secret(
    cluster: KubeAPIServer, tmp_path: Path
) -> None:
    """Jobs read accessKey/secretKey by secretKeyRef; a BucketInfo-only Secret has neither, so
    the plan refuses it instead of rendering Jobs that fail with CreateContainerConfigError."""
    other = tenant_media.credentials_secret()
    other["metadata"]["name"], other["data"] = "bucket-media-notes", {"notes": "eA=="}
    cluster.seed([raw_cosi_secret("bucket-media-admin"), other])
    result = plan(cluster, tmp_path, "--target", "s3://media/migrated", "--s3-credentials-secret",
                  "bucket-media-admin")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert "Secret 'bucket-media-admin' holds only COSI BucketInfo" in result.output
    assert "use 'bucket-media-admin-credentials'" in result.output
    assert "users:" in result.output
    for value in ("topsecretvalue", "AKIAEXAMPLE"):
        assert value not in result.output
    result = s3_plan(cluster, tmp_path, "--backup-target", "s3://arr-offsite/nightly",
                     "--backup-credentials-secret", "bucket-media-admin")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "use 'bucket-media-admin-credentials'" in only_line(result)
    assert not (tmp_path / "plans" / f"{NS}.yaml").exists()
    result = plan(cluster, tmp_path, "--target", "s3://media", "--s3-credentials-secret",
                  "bucket-media-notes")  # fmt: skip
    assert result.exit_code == 2
    assert "Secret 'bucket-media-notes' has no accessKey/secretKey (keys: notes)" in result.output


def test_every_rendered_manifest_validates_strictly(cluster: KubeAPIServer, tmp_path: Path) -> None:
    assert s3_plan(cluster, tmp_path).exit_code == 0
    assert (
        plan(cluster, tmp_path, "--target", "pvc:seaweedfs-storage", "--name", "to-pvc").exit_code
        == 0
    )
    files = [p for d in ("tenant-media", "to-pvc") for p in (tmp_path / "jobs" / d).glob("*.yaml")]
    assert len(files) == 2 * (4 * 2 + 1) + 4  # copy+sync per volume, kustomizations, 4 target PVCs
    for path in files:
        if path.name != "kustomization.yaml":
            validate_manifest(load_yaml(path))


def test_copy_job_mounts_source_read_only_and_pins_rwo_to_its_node(
    cluster: KubeAPIServer, tmp_path: Path
) -> None:
    assert s3_plan(cluster, tmp_path).exit_code == 0
    job = load_yaml(tmp_path / "jobs" / NS / "copy-sonarr-config.yaml")
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"][0] == {
        "name": "source",
        "persistentVolumeClaim": {"claimName": "sonarr-config", "readOnly": True},
    }
    assert pod["containers"][0]["volumeMounts"][0] == {
        "name": "source",
        "mountPath": "/mnt/source",
        "readOnly": True,
    }
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    nodes = load_yaml(tmp_path / "plans" / f"{NS}.yaml")["spec"]["volumes"]
    sonarr_nodes = next(v for v in nodes if v["name"] == "sonarr-config")["source"]["nodes"]
    assert sonarr_nodes and terms[0]["matchExpressions"][0]["values"] == sonarr_nodes
    command = pod["containers"][0]["command"]
    dest = f"dest:{tenant_media.BUCKET_NAME}/migrated/sonarr-config"
    assert command[:7] == ["migrator", "agent", "copy", "--source", "/mnt/source", "--dest", dest]
    assert command[7:9] == [
        "--state",
        f"dest:{tenant_media.BUCKET_NAME}/migrated/.migrator/sonarr-config",
    ]
    assert "--skip-live-sqlite" in command and "--delete" not in command  # live databases wait
    sync = load_yaml(tmp_path / "jobs" / NS / "sync-sonarr-config.yaml")
    sync_command = sync["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--delete" in sync_command and "--skip-live-sqlite" not in sync_command
    assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "migrator"


def test_pvc_target_sizes_claims_with_headroom(cluster: KubeAPIServer, tmp_path: Path) -> None:
    result = plan(cluster, tmp_path, "--target", "pvc:seaweedfs-storage", "--json", "--move-config")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    volume = next(v for v in document["spec"]["volumes"] if v["name"] == "radarr-config")
    assert volume["target"] == {
        "pvc": "radarr-config-seaweedfs-storage",
        "storageClass": "seaweedfs-storage",
        "sizeBytes": 2 * 2**30,
    }
    claim = load_yaml(tmp_path / "jobs" / NS / "pvc-radarr-config.yaml")
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert claim["spec"]["storageClassName"] == "seaweedfs-storage"
    codes = {(w["code"], w.get("volume")) for w in document["spec"]["warnings"]}
    assert ("sqlite-on-network-fs", "radarr-config") in codes  # seaweedfs CSI is FUSE
    job = load_yaml(tmp_path / "jobs" / NS / "copy-radarr-config.yaml")
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[3:7] == ["--source", "/mnt/source", "--dest", "/mnt/dest"]
    assert "--state" not in command


def test_block_pvc_target_has_no_sqlite_warning(cluster: KubeAPIServer, tmp_path: Path) -> None:
    result = plan(
        cluster,
        tmp_path,
        "--target",
        "pvc:local",
        "--json",
        "--move-config",
        "--target-capacity",
        "1Gi",
    )
    document = json.loads(result.stdout)
    codes = {w["code"] for w in document["spec"]["warnings"]}
    assert "sqlite-on-network-fs" not in codes
    capacity = [w for w in document["spec"]["warnings"] if w["code"] == "capacity"]
    assert {w["volume"] for w in capacity} == {
        "media",
        "prowlarr-config",
        "radarr-config",
        "sonarr-config",
    }


def test_flux_lints(tmp_path: Path) -> None:
    with KubeAPIServer(tmp_path / "kubeapi") as api:
        api.seed(tenant_media.tenant_media(drift="enabled"))
        api.settle()  # the workloads' pods are scheduled, as on a live cluster
        result = s3_plan(api, tmp_path, "--json", "--release", "sonarr")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    # The shared media volume comes along, with every release that mounts it (all stop at cutover).
    assert sorted(v["name"] for v in document["spec"]["volumes"]) == ["media", "sonarr-config"]
    assert [r["name"] for r in document["spec"]["releases"]] == ["radarr", "sonarr"]
    assert "release" not in document["spec"]["volumes"][0]
    assert document["metadata"]["name"] == "sonarr"
    messages = {w["code"]: w["message"] for w in document["spec"]["warnings"]}
    assert "reverts a manual scale-down" in messages["helm-drift-detection"]
    assert "Kustomization flux-system/apps" in messages["kustomization-reconciles"]
    assert "seaweedfs-csi-driver" in messages["csi-driver-missing"]


def test_rwo_volume_on_cordoned_node(cluster: KubeAPIServer, tmp_path: Path) -> None:
    from kubernetes import client

    def radarr_pods() -> list[dict[str, Any]]:
        return [
            p
            for p in cluster.list_objects("v1", "Pod", NS)
            if p["metadata"]["name"].startswith("radarr")
        ]

    cluster.wait_for(lambda: bool(radarr_pods()) and bool(radarr_pods()[0]["spec"].get("nodeName")))
    node = radarr_pods()[0]["spec"]["nodeName"]
    taint = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
    client.CoreV1Api(cluster.api_client()).patch_node(
        node, {"spec": {"unschedulable": True, "taints": [taint]}}
    )
    result = s3_plan(cluster, tmp_path, "--json")
    document = json.loads(result.stdout)
    findings = [w for w in document["spec"]["warnings"] if w["code"] == "rwo-node-unreachable"]
    on_node = {
        f"{p['metadata']['labels']['app.kubernetes.io/name']}-config"
        for p in cluster.list_objects("v1", "Pod", NS)
        if p["spec"].get("nodeName") == node
    }
    assert "radarr-config" in on_node
    assert [w["volume"] for w in findings] == sorted(on_node)  # the RWX media volume is not pinned
    assert f"attached on {node}, which is cordoned" in findings[0]["message"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["-n", "tenant-nope", "--target", "s3://media"],
            2,
            "namespace 'tenant-nope' does not exist",
        ),
        (
            ["--target", "s3://media", "--s3-credentials-secret", "nope"],
            2,
            "Secret 'nope' not found in namespace 'tenant-media'",
        ),
        (["--target", "s3://media"], 2, "needs --s3-credentials-secret"),
        (
            ["--target", "pvc:fast"],
            2,
            "StorageClass 'fast' not found; known classes: local, nfs, replicated, seaweedfs-storage",
        ),
        (
            ["--target", "pvc:local", "--volume", "sonar-config"],
            2,
            "no volume named 'sonar-config'",
        ),
        (
            ["--target", "pvc:local", "--release", "lidarr"],
            2,
            "no HelmRelease named 'lidarr'; known releases: prowlarr, radarr, sonarr",
        ),
    ],
)
def test_cluster_bad_input(
    cluster: KubeAPIServer, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    if args[0] != "-n":
        args = ["-n", NS, *args]
    result = run_cli("plan", "--kubeconfig", str(cluster.kubeconfig_path), *args, cwd=tmp_path)
    assert result.exit_code == code
    assert message in result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1


def test_permission_denied_is_exit_3(cluster: KubeAPIServer, tmp_path: Path) -> None:
    cluster.deny("list", "persistentvolumeclaims")
    result = s3_plan(cluster, tmp_path)
    assert result.exit_code == 3
    assert "permission denied" in result.output and "RBAC" in result.output


def test_unreachable_cluster_is_exit_3(tmp_path: Path) -> None:
    with KubeAPIServer(tmp_path / "kubeapi") as api:
        kubeconfig = api.kubeconfig_path
    result = run_cli(
        "plan", "-n", NS, "--kubeconfig", str(kubeconfig), "--target", "pvc:local", cwd=tmp_path
    )
    assert result.exit_code == 3
    assert "unreachable" in result.output


def test_missing_kubeconfig_is_bad_input(tmp_path: Path) -> None:
    result = run_cli(
        "plan",
        "-n",
        NS,
        "--kubeconfig",
        str(tmp_path / "nope"),
        "--target",
        "pvc:local",
        cwd=tmp_path,
    )
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_filer_address_reaches_copy_sync_and_verify_jobs(
    cluster: KubeAPIServer, tmp_path: Path
) -> None:
    from migrator.manifests import build_verify_job

    filer = "seaweedfs-filer.tenant-root.svc:18888"
    result = s3_plan(cluster, tmp_path, "--filer-grpc", filer, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["spec"]["target"]["filer"] == filer
    assert "no-filer-attributes" not in {w["code"] for w in document["spec"]["warnings"]}
    for name in ("copy-media.yaml", "sync-media.yaml"):
        job = load_yaml(tmp_path / "jobs" / NS / name)
        command = job["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[command.index("--filer") + 1] == filer, name
    media = next(v for v in document["spec"]["volumes"] if v["name"] == "media")
    verify = build_verify_job(document, media, None, True, True)
    command = verify["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--filer") + 1] == filer and "--strict-metadata" in command


def test_without_a_filer_address_the_plan_warns_that_mounts_show_root(
    cluster: KubeAPIServer, tmp_path: Path
) -> None:
    result = s3_plan(cluster, tmp_path, "--json")
    assert result.exit_code == 0, result.output
    findings = json.loads(result.stdout)["spec"]["warnings"]
    finding = next(w for w in findings if w["code"] == "no-filer-attributes")
    assert finding["severity"] == "warning" and "uid 0, gid 0, mode 0660" in finding["message"]
    assert "--filer" not in (tmp_path / "jobs" / NS / "copy-media.yaml").read_text()


def test_filer_address_is_for_s3_targets_only(cluster: KubeAPIServer, tmp_path: Path) -> None:
    result = plan(cluster, tmp_path, "--target", "pvc:seaweedfs-storage", "--filer-grpc", "f:1")
    assert result.exit_code == 2
    assert result.output.strip() == "Error: --filer-grpc is for s3:// targets on SeaweedFS"


def test_filer_address_must_be_host_and_port(cluster: KubeAPIServer, tmp_path: Path) -> None:
    result = s3_plan(cluster, tmp_path, "--filer-grpc", "http://seaweedfs-filer:8888")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: --filer-grpc 'http://seaweedfs-filer:8888' must be HOST:PORT, the filer's gRPC "
        "port (its HTTP port + 10000), e.g. seaweedfs-filer.tenant-root.svc:18888"
    )
