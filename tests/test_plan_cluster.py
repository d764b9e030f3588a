"""`migrator plan` in cluster mode against a real kube-apiserver (tests/controlplane), run with the
kubeconfig of docs/rbac.yaml's ServiceAccount in a fresh tenant namespace per test."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests import tenant_media
from tests.controlplane.cluster import Cluster
from tests.helpers import load_yaml, run_cli, validate_manifest

HR = "helm.toolkit.fluxcd.io/v2"


def plan(cluster: Cluster, cwd: Path, *extra: str) -> Any:
    return run_cli(
        "plan",
        "-n",
        cluster.namespace,
        "--kubeconfig",
        str(cluster.kubeconfig_path),
        *extra,
        cwd=cwd,
    )


def s3_plan(cluster: Cluster, cwd: Path, *extra: str) -> Any:
    return plan(
        cluster,
        cwd,
        "--target",
        "s3://media/migrated",
        "--s3-credentials-secret",
        tenant_media.SECRET_NAME,
        *extra,
    )


def place_pods(cluster: Cluster) -> dict[str, str]:
    """Bind each app's pod to the node its nodeSelector names, as kube-scheduler would, and
    return {pod: node}. Until the process kubelet (tests/kubelet/) registers Nodes, the scheduler
    has none to choose and the pods stay unscheduled; a live cluster's are scheduled, and the
    plan pins RWO copies to the nodes the pods run on."""
    ns, core = cluster.namespace, client.CoreV1Api(cluster.admin)

    def pods() -> list[dict[str, Any]]:
        return cluster.list_objects("v1", "Pod", ns)

    cluster.wait_for(lambda: len(pods()) == len(tenant_media.APPS), 60, f"the pods of {ns}")
    placed = {}
    for pod in pods():
        name, spec = pod["metadata"]["name"], pod["spec"]
        node = spec.get("nodeName") or spec["nodeSelector"]["kubernetes.io/hostname"]
        if not spec.get("nodeName"):
            binding = {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": name},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            }
            # The client cannot read a Binding answer back (kubernetes-client/python#825).
            core.create_namespaced_pod_binding(name, ns, binding, _preload_content=False)
        placed[name] = node
    return placed


def test_discovery_and_classification(cluster: Cluster, tmp_path: Path) -> None:
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
        {
            "kind": "Deployment",
            "name": "sonarr",
            "container": "app",
            "mountPath": "/config",
            "readOnly": False,
            "runAsUser": 911,
            "fsGroup": 911,
            "podSelector": {
                "app.kubernetes.io/instance": "sonarr",
                "app.kubernetes.io/name": "sonarr",
            },
        },
    ]
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
    assert cluster.forbidden() == []


def test_cosi_secret_gives_bucket_and_endpoint_but_no_secret_values(
    cluster: Cluster, tmp_path: Path
) -> None:
    ns = cluster.namespace
    result = s3_plan(cluster, tmp_path, "--backup-target", "s3://media/backups")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "plans" / f"{ns}.yaml").read_text()
    document = load_yaml(tmp_path / "plans" / f"{ns}.yaml")
    target = document["spec"]["target"]
    assert target["bucket"] == tenant_media.BUCKET_NAME
    assert target["endpoint"] == f"https://{tenant_media.S3_HOST}"
    assert target["credentialsSecret"] == tenant_media.SECRET_NAME
    assert document["spec"]["backup"]["bucket"] == tenant_media.BUCKET_NAME  # same Bucket app
    assert "unreachable from here" in target["probe"]  # in-cluster endpoint: a warning only
    for secret in ("topsecretvalue", "AKIAEXAMPLE"):
        assert secret not in text
        assert secret not in result.output
        for job in (tmp_path / "jobs" / ns).glob("*.yaml"):
            assert secret not in job.read_text()
    job = load_yaml(tmp_path / "jobs" / ns / "copy-media.yaml")
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RCLONE_CONFIG_DEST_SECRET_ACCESS_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": tenant_media.SECRET_NAME, "key": "secretKey"}
    }
    # The Secret is read by name only: RBAC grants no list, so no other Secret is ever seen.
    secret_reads = [
        e for e in cluster.requests() if (e.get("objectRef") or {}).get("resource") == "secrets"
    ]
    assert secret_reads and {e["verb"] for e in secret_reads} == {"get"}
    assert {e["objectRef"]["name"] for e in secret_reads} == {tenant_media.SECRET_NAME}


def only_line(result: Any) -> str:
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    return str(result.output)


def raw_cosi_secret(name: str, ns: str) -> dict[str, Any]:
    """The Secret COSI itself makes per user (``<bucket app>-<user>``): only BucketInfo JSON."""
    secret = tenant_media.credentials_secret(namespace=ns)
    secret["metadata"]["name"] = name
    secret["data"] = {"BucketInfo": secret["data"]["BucketInfo"]}
    return secret


def test_a_raw_cosi_secret_is_refused_naming_the_credentials_secret(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Jobs read accessKey/secretKey by secretKeyRef; a BucketInfo-only Secret has neither, so
    the plan refuses it instead of rendering Jobs that fail with CreateContainerConfigError."""
    ns = cluster.namespace
    other = tenant_media.credentials_secret(namespace=ns)
    other["metadata"]["name"], other["data"] = "bucket-media-notes", {"notes": "eA=="}
    cluster.seed([raw_cosi_secret("bucket-media-admin", ns), other])
    result = plan(
        cluster,
        tmp_path,
        "--target",
        "s3://media/migrated",
        "--s3-credentials-secret",
        "bucket-media-admin",
    )
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert "Secret 'bucket-media-admin' holds only COSI BucketInfo" in result.output
    assert "use 'bucket-media-admin-credentials'" in result.output
    assert "users:" in result.output
    for value in ("topsecretvalue", "AKIAEXAMPLE"):
        assert value not in result.output
    result = s3_plan(
        cluster,
        tmp_path,
        "--backup-target",
        "s3://arr-offsite/nightly",
        "--backup-credentials-secret",
        "bucket-media-admin",
    )
    assert result.exit_code == 2, result.output
    assert "use 'bucket-media-admin-credentials'" in only_line(result)
    assert not (tmp_path / "plans" / f"{ns}.yaml").exists()
    result = plan(
        cluster, tmp_path, "--target", "s3://media", "--s3-credentials-secret", "bucket-media-notes"
    )
    assert result.exit_code == 2
    assert "Secret 'bucket-media-notes' has no accessKey/secretKey (keys: notes)" in result.output


def test_every_rendered_manifest_validates_strictly(cluster: Cluster, tmp_path: Path) -> None:
    assert s3_plan(cluster, tmp_path).exit_code == 0
    assert (
        plan(cluster, tmp_path, "--target", "pvc:seaweedfs-storage", "--name", "to-pvc").exit_code
        == 0
    )
    files = [
        p for d in (cluster.namespace, "to-pvc") for p in (tmp_path / "jobs" / d).glob("*.yaml")
    ]
    assert len(files) == 2 * (4 * 3 + 1) + 4  # copy+sync+verify per volume, kustomizations, 4 PVCs
    for path in files:
        if path.name != "kustomization.yaml":
            validate_manifest(load_yaml(path))


def test_copy_job_mounts_source_read_only_and_pins_rwo_to_its_node(
    cluster: Cluster, tmp_path: Path
) -> None:
    ns = cluster.namespace
    placed = place_pods(cluster)
    assert s3_plan(cluster, tmp_path).exit_code == 0
    job = load_yaml(tmp_path / "jobs" / ns / "copy-sonarr-config.yaml")
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
    nodes = load_yaml(tmp_path / "plans" / f"{ns}.yaml")["spec"]["volumes"]
    sonarr_nodes = next(v for v in nodes if v["name"] == "sonarr-config")["source"]["nodes"]
    assert sonarr_nodes == [node for pod, node in placed.items() if pod.startswith("sonarr-")]
    assert terms[0]["matchExpressions"][0]["values"] == sonarr_nodes
    command = pod["containers"][0]["command"]
    dest = f"dest:{tenant_media.BUCKET_NAME}/migrated/sonarr-config"
    assert command[:7] == ["migrator", "agent", "copy", "--source", "/mnt/source", "--dest", dest]
    assert command[7:9] == [
        "--state",
        f"dest:{tenant_media.BUCKET_NAME}/migrated/.migrator/sonarr-config",
    ]
    assert "--skip-live-sqlite" in command and "--delete" not in command  # live databases wait
    sync = load_yaml(tmp_path / "jobs" / ns / "sync-sonarr-config.yaml")
    sync_command = sync["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--delete" in sync_command and "--skip-live-sqlite" not in sync_command
    assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "migrator"


def test_pvc_target_sizes_claims_with_headroom(cluster: Cluster, tmp_path: Path) -> None:
    result = plan(cluster, tmp_path, "--target", "pvc:seaweedfs-storage", "--json", "--move-config")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    volume = next(v for v in document["spec"]["volumes"] if v["name"] == "radarr-config")
    assert volume["target"] == {
        "pvc": "radarr-config-seaweedfs-storage",
        "storageClass": "seaweedfs-storage",
        "sizeBytes": 2 * 2**30,
    }
    claim = load_yaml(tmp_path / "jobs" / cluster.namespace / "pvc-radarr-config.yaml")
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert claim["spec"]["storageClassName"] == "seaweedfs-storage"
    codes = {(w["code"], w.get("volume")) for w in document["spec"]["warnings"]}
    assert ("sqlite-on-network-fs", "radarr-config") in codes  # seaweedfs CSI is FUSE
    job = load_yaml(tmp_path / "jobs" / cluster.namespace / "copy-radarr-config.yaml")
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[3:7] == ["--source", "/mnt/source", "--dest", "/mnt/dest"]
    assert "--state" not in command


def test_block_pvc_target_has_no_sqlite_warning(cluster: Cluster, tmp_path: Path) -> None:
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
    assert result.exit_code == 0, result.output
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


@pytest.fixture
def without_csi_driver(cluster: Cluster) -> Iterator[None]:
    """No CSIDriver seaweedfs-csi-driver (Cozystack's SeaweedFS is S3-only); one another test of
    the session left behind is put back afterwards."""
    name = "seaweedfs-csi-driver"
    found = cluster.get_object("storage.k8s.io/v1", "CSIDriver", None, name)
    if found is not None:
        client.StorageV1Api(cluster.admin).delete_csi_driver(name)
        cluster.wait_for(
            lambda: cluster.get_object("storage.k8s.io/v1", "CSIDriver", None, name) is None,
            30,
            f"CSIDriver {name} gone",
        )
    yield
    if found is not None:
        meta = {"name": name, "labels": found["metadata"].get("labels") or {}}
        cluster.seed(
            [
                {
                    "apiVersion": "storage.k8s.io/v1",
                    "kind": "CSIDriver",
                    "metadata": meta,
                    "spec": found["spec"],
                }
            ]
        )


def test_flux_lints(cluster: Cluster, tmp_path: Path, without_csi_driver: None) -> None:
    for app in tenant_media.APPS:  # drift detection on, as many Flux repos have it
        cluster.patch_object(
            HR,
            "HelmRelease",
            cluster.namespace,
            app,
            {"spec": {"driftDetection": {"mode": "enabled"}}},
        )
    result = s3_plan(cluster, tmp_path, "--json", "--release", "sonarr")
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


@pytest.fixture
def cordoned_node(cluster: Cluster) -> Iterator[str]:
    """tenant_media's Nodes, Ready, with the one radarr's nodeSelector names cordoned as
    ``kubectl cordon`` leaves it; returns that node's name. Nodes this fixture made are deleted
    afterwards, one that already existed (a kubelet's) is uncordoned again.

    Until the process kubelet registers Nodes there are none, so they are made here, Ready and
    with no allocatable resources: the scheduler places no pod on them."""
    radarr = tenant_media.deployment("radarr", 911, node="worker-2")
    name = radarr["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/hostname"]
    core = client.CoreV1Api(cluster.admin)
    made = []
    for node in tenant_media.nodes():
        if cluster.seed([node]):
            made.append(node["metadata"]["name"])
            core.patch_node_status(node["metadata"]["name"], {"status": node["status"]})
            # Admission (TaintNodesByCondition) taints a new Node not-ready; the node lifecycle
            # controller, which this control plane does not run, lifts it once the node is Ready.
            cluster.patch_object(
                "v1", "Node", None, node["metadata"]["name"], {"spec": {"taints": None}}
            )
    cordon = next(n for n in tenant_media.nodes(cordoned=(name,)) if n["metadata"]["name"] == name)
    cluster.patch_object("v1", "Node", None, name, {"spec": cordon["spec"]})
    try:
        yield name
    finally:
        for node_name in made:
            core.delete_node(node_name)
        if name not in made:
            cluster.patch_object(
                "v1", "Node", None, name, {"spec": {"unschedulable": None, "taints": None}}
            )


def test_rwo_volume_on_cordoned_node(cluster: Cluster, tmp_path: Path, cordoned_node: str) -> None:
    ns = cluster.namespace
    placed = place_pods(cluster)
    node = cordoned_node
    assert any(pod.startswith("radarr-") and on == node for pod, on in placed.items())
    result = s3_plan(cluster, tmp_path, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    findings = [w for w in document["spec"]["warnings"] if w["code"] == "rwo-node-unreachable"]
    on_node = {
        f"{p['metadata']['labels']['app.kubernetes.io/name']}-config"
        for p in cluster.list_objects("v1", "Pod", ns)
        if p["spec"].get("nodeName") == node
    }
    assert "radarr-config" in on_node
    # The RWX media volume is not pinned.
    assert [w["volume"] for w in findings] == sorted(on_node), findings
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
            "Secret 'nope' not found in namespace '{ns}'",
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
    cluster: Cluster, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    if args[0] != "-n":
        args = ["-n", cluster.namespace, *args]
    result = run_cli("plan", "--kubeconfig", str(cluster.kubeconfig_path), *args, cwd=tmp_path)
    assert result.exit_code == code, result.output
    assert message.format(ns=cluster.namespace) in result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1


def test_permission_denied_is_exit_3(cluster: Cluster, tmp_path: Path) -> None:
    """The account's role without 'list persistentvolumeclaims' (a trimmed copy of docs/rbac.yaml,
    bound in its place): the API server's 403 is exit 3, naming RBAC."""
    ns, rbac = cluster.namespace, client.RbacAuthorizationV1Api(cluster.admin)
    role = cluster.get_object("rbac.authorization.k8s.io/v1", "ClusterRole", None, "migrator")
    assert role is not None
    rules = []
    for rule in role["rules"]:
        if "persistentvolumeclaims" in rule["resources"]:
            rule = {**rule, "verbs": [v for v in rule["verbs"] if v != "list"]}
        rules.append(rule)
    binding = cluster.get_object("rbac.authorization.k8s.io/v1", "RoleBinding", ns, "migrator")
    assert binding is not None
    rbac.delete_namespaced_role_binding("migrator", ns)
    cluster.seed(
        [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "migrator-without-list-claims", "namespace": ns},
                "rules": rules,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "migrator", "namespace": ns},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "migrator-without-list-claims",
                },
                "subjects": binding["subjects"],
            },
        ]
    )
    result = s3_plan(cluster, tmp_path)
    assert result.exit_code == 3, result.output
    assert "permission denied" in result.output and "RBAC" in result.output
    assert "list core/persistentvolumeclaims" in cluster.forbidden()


def test_unreachable_cluster_is_exit_3(cluster: Cluster, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kubeconfig = yaml.safe_load(cluster.kubeconfig_path.read_text())
    kubeconfig["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    result = run_cli(
        "plan",
        "-n",
        cluster.namespace,
        "--kubeconfig",
        str(path),
        "--target",
        "pvc:local",
        cwd=tmp_path,
    )
    assert result.exit_code == 3
    assert "unreachable" in result.output


def test_missing_kubeconfig_is_bad_input(tmp_path: Path) -> None:
    result = run_cli(
        "plan",
        "-n",
        tenant_media.NAMESPACE,
        "--kubeconfig",
        str(tmp_path / "nope"),
        "--target",
        "pvc:local",
        cwd=tmp_path,
    )
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_filer_address_reaches_copy_sync_and_verify_jobs(cluster: Cluster, tmp_path: Path) -> None:
    from migrator.manifests.verify import build_verify_job

    filer = "seaweedfs-filer.tenant-root.svc:18888"
    result = s3_plan(cluster, tmp_path, "--filer-grpc", filer, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["spec"]["target"]["filer"] == filer
    assert "no-filer-attributes" not in {w["code"] for w in document["spec"]["warnings"]}
    for name in ("copy-media.yaml", "sync-media.yaml"):
        job = load_yaml(tmp_path / "jobs" / cluster.namespace / name)
        command = job["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[command.index("--filer") + 1] == filer, name
    media = next(v for v in document["spec"]["volumes"] if v["name"] == "media")
    verify = build_verify_job(document, media, None, True, True)
    command = verify["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--filer") + 1] == filer and "--strict-metadata" in command


def test_without_a_filer_address_the_plan_warns_that_mounts_show_root(
    cluster: Cluster, tmp_path: Path
) -> None:
    result = s3_plan(cluster, tmp_path, "--json")
    assert result.exit_code == 0, result.output
    findings = json.loads(result.stdout)["spec"]["warnings"]
    finding = next(w for w in findings if w["code"] == "no-filer-attributes")
    assert finding["severity"] == "warning" and "uid 0, gid 0, mode 0660" in finding["message"]
    copy_media = tmp_path / "jobs" / cluster.namespace / "copy-media.yaml"
    assert "--filer" not in copy_media.read_text()


def test_filer_address_is_for_s3_targets_only(cluster: Cluster, tmp_path: Path) -> None:
    result = plan(cluster, tmp_path, "--target", "pvc:seaweedfs-storage", "--filer-grpc", "f:1")
    assert result.exit_code == 2
    assert result.output.strip() == "Error: --filer-grpc is for s3:// targets on SeaweedFS"


def test_filer_address_must_be_host_and_port(cluster: Cluster, tmp_path: Path) -> None:
    result = s3_plan(cluster, tmp_path, "--filer-grpc", "http://seaweedfs-filer:8888")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: --filer-grpc 'http://seaweedfs-filer:8888' must be HOST:PORT, the filer's gRPC "
        "port (its HTTP port + 10000), e.g. seaweedfs-filer.tenant-root.svc:18888"
    )
