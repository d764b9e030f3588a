"""Swap's pure parts: the static PV/PVC it builds, the journal gate, and `migrator status`.

The flows against a cluster are in ``test_swap_cluster.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from migrator.journal import FileStore, Journal, journal_path
from migrator.manifests.swap import (
    build_seaweedfs_claim,
    build_seaweedfs_volume,
    seaweedfs_path,
    swap_capacity,
    swap_claim_name,
)
from migrator.plan import Plan, load_plan, volume_route
from migrator.workflows.swap.context import readiness_problems
from migrator.workflows.swap.status import status, volume_state
from tests.helpers import run_cli, validate_manifest
from tests.test_plan_local import make_config_dir, make_media_dir


def s3_plan(prefix: str = "migrated", name: str = "media") -> dict[str, Any]:
    volume = {
        "name": name,
        "role": "media",
        "action": "move",
        "source": {"pvc": name, "accessModes": ["ReadWriteMany"], "capacityBytes": 4 * 2**40},
        "workloads": [
            {
                "kind": "Deployment",
                "name": "sonarr",
                "container": "app",
                "mountPath": "/media",
                "readOnly": False,
            }
        ],
        "target": {"url": f"s3://bucket-7f3c2a9e-media/{prefix}/{name}"},
        "copy": {"tool": "rclone", "profile": "large-files", "shards": 1, "jobs": {}},
    }
    return {
        "metadata": {"name": "tenant-media"},
        "spec": {
            "source": {"mode": "cluster", "namespace": "tenant-media"},
            "target": {"type": "s3", "bucket": "bucket-7f3c2a9e-media", "prefix": prefix},
            "volumes": [volume],
        },
    }


def test_static_volume_and_claim_for_the_seaweedfs_csi_driver() -> None:
    plan = s3_plan()
    volume = plan["spec"]["volumes"][0]
    pv, pvc = build_seaweedfs_volume(plan, volume), build_seaweedfs_claim(plan, volume)
    validate_manifest(pv)
    validate_manifest(pvc)
    assert pv["metadata"]["name"] == "tenant-media-media-seaweedfs"
    assert "namespace" not in pv["metadata"]
    assert pv["spec"] == {
        "capacity": {"storage": "4096Gi"},
        "accessModes": ["ReadWriteMany"],
        "persistentVolumeReclaimPolicy": "Retain",
        "storageClassName": "",
        "volumeMode": "Filesystem",
        "claimRef": {"namespace": "tenant-media", "name": "media-seaweedfs"},
        "csi": {
            "driver": "seaweedfs-csi-driver",
            "volumeHandle": "tenant-media-media-seaweedfs",
            "volumeAttributes": {
                "path": "/buckets/bucket-7f3c2a9e-media/migrated/media",
                "collection": "bucket-7f3c2a9e-media",
            },
        },
    }
    assert pvc["metadata"]["namespace"] == "tenant-media"
    assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
    assert pvc["spec"]["storageClassName"] == ""
    assert pvc["spec"]["resources"]["requests"]["storage"] == "4096Gi"
    assert pvc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "migrator"


def test_names_paths_and_sizes() -> None:
    longest = "v" * 52  # the plan schema's longest volume name
    plan = s3_plan(prefix="", name=longest)
    volume = plan["spec"]["volumes"][0]
    assert swap_claim_name(plan, volume) == f"{longest}-seaweedfs"
    assert len(swap_claim_name(plan, volume)) <= 63
    assert seaweedfs_path(plan, volume) == f"/buckets/bucket-7f3c2a9e-media/{longest}"
    validate_manifest(build_seaweedfs_claim(plan, volume))
    volume["source"] = {"capacityBytes": 2**30, "usedBytes": 5 * 2**30}
    assert swap_capacity(volume) == "6Gi"  # what it holds plus headroom: the driver's quota
    plan["spec"]["target"] = {"type": "pvc"}
    volume["target"] = {"pvc": "media-replicated"}
    assert swap_claim_name(plan, volume) == "media-replicated"


def local_plan(tmp_path: Path) -> Plan:
    config = make_config_dir(tmp_path / "src" / "sonarr")
    media = make_media_dir(tmp_path / "src" / "media")
    result = run_cli(
        "plan",
        "--source-dir",
        f"sonarr-config={config}",
        "--source-dir",
        f"media={media}",
        "--target",
        "s3://media/migrated",
        "--s3-endpoint",
        "http://127.0.0.1:9",
        "--no-probe",
        "--filer-grpc",
        "127.0.0.1:18888",
        cwd=tmp_path,
    )
    assert result.exit_code == 0, result.output
    return load_plan(tmp_path / "plans" / "local.yaml")


def test_the_gate_needs_a_cutover_and_a_full_passed_verify_after_it(tmp_path: Path) -> None:
    plan = local_plan(tmp_path)
    journal = Journal(FileStore(journal_path(plan.path)), plan.name)  # type: ignore[arg-type]
    media = [plan.volume("media")]

    def problems() -> list[str]:
        return readiness_problems(plan, journal, media)

    assert problems() == [
        f"media was not cut over ('migrator run --plan {plan.path} --phase media --cutover')"
    ]
    journal.record("media", "cutover", "done")
    assert problems() == ["media was not verified since its cutover"]
    # What 'migrator verify' records (migrator/workflows/verify.py).
    journal.record("media", "verify", "failed", ok=False, differences=3, sample=None, error="")
    assert problems() == ["the last verify of media found differences (3)"]
    journal.record("media", "verify", "failed", ok=False, differences=0, error="Job timed out")
    assert problems() == ["the last verify of media failed: Job timed out"]
    journal.record("media", "verify", "done", ok=True, differences=0, sample=0.1)
    assert problems() == ["the last verify of media checked a sample (0.1); run a full one"]
    journal.record("media", "verify", "done", ok=True, differences=0, sample=None)
    assert problems() == [
        "the last verify of media did not compare owner, mode and mtime as the mount shows them: "
        f"run 'migrator verify --plan {plan.path} --strict-metadata'"
    ]
    journal.record("media", "verify", "done", ok=True, differences=0, mountMetadata=True)
    assert problems() == []
    journal.update(lambda d: d["volumes"]["media"]["cutover"].update(at="2999-01-01T00:00:00Z"))
    assert problems() == ["media was not verified since its cutover"]


def test_the_gate_refuses_a_cutover_or_verify_made_on_another_route(tmp_path: Path) -> None:
    """A plan re-written under the same name (another bucket, prefix or source) keeps its
    journal: what was cut over and verified for the old route must not let swap go ahead."""
    plan = local_plan(tmp_path)
    journal = Journal(FileStore(journal_path(plan.path)), plan.name)  # type: ignore[arg-type]
    media = plan.volume("media")
    route = volume_route(plan.spec, media)
    old = route.replace(media["target"]["url"], "s3://old-bucket/media")
    assert old != route

    def problems() -> list[str]:
        return readiness_problems(plan, journal, [media])

    journal.record("media", "cutover", "done", route=old)
    journal.record("media", "verify", "done", ok=True, differences=0, mountMetadata=True, route=old)
    assert problems() == [
        f"media was cut over on another route ({old}); the plan now says {route}: cut over again "
        f"('migrator run --plan {plan.path} --phase media --cutover') and verify"
    ]
    journal.record("media", "cutover", "done", route=route)
    assert problems() == [f"media was not verified on the plan's route ({route}) since its cutover"]
    journal.record(
        "media", "verify", "done", ok=True, differences=0, mountMetadata=True, route=route
    )
    assert problems() == []
    # status reads the same journal: the old route's steps do not count.
    journal.record("media", "cutover", "done", route=old)
    journal.record("media", "verify", "done", ok=True, differences=0, route=old)
    entry = status(plan, journal)["volumes"][0]
    assert entry["steps"] == {}
    assert (entry["state"], entry["detail"]) == (
        "planned",
        f"the plan's route changed; the journal's steps copied {old}",
    )


def test_the_gate_refuses_an_s3_plan_without_filer_attributes(tmp_path: Path) -> None:
    """Without --filer-grpc a mount shows uid 0 / 0660: apps could not read what verify passed."""
    config = make_config_dir(tmp_path / "src" / "sonarr")
    result = run_cli(
        "plan",
        "--source-dir",
        f"sonarr-config={config}",
        "--target",
        "s3://media/migrated",
        "--s3-endpoint",
        "http://127.0.0.1:9",
        "--no-probe",
        "--move-config",
        cwd=tmp_path,
    )
    assert result.exit_code == 0, result.output
    plan = load_plan(tmp_path / "plans" / "local.yaml")
    assert any(w["code"] == "no-filer-attributes" for w in plan.spec["warnings"])
    journal = Journal(FileStore(journal_path(plan.path)), plan.name)  # type: ignore[arg-type]
    journal.record("sonarr-config", "cutover", "done")
    journal.record("sonarr-config", "verify", "done", ok=True, differences=0, mountMetadata=False)
    assert readiness_problems(plan, journal, [plan.volume("sonarr-config")]) == [
        "the plan has no filer gRPC address, so a mount of sonarr-config shows every file as "
        "uid 0, mode 0660: re-plan with --filer-grpc HOST:PORT, re-run the cutover, then "
        f"'migrator verify --plan {plan.path} --strict-metadata'"
    ]


@pytest.mark.parametrize(
    ("entry", "state"),
    [
        ({}, "planned"),
        ({"preseed": {"status": "done", "at": "1"}}, "pre-seeded"),
        (
            {"preseed": {"status": "done", "at": "1"}, "cutover": {"status": "failed", "at": "2"}},
            "cutover failed",
        ),
        (
            {
                "cutover": {"status": "done", "at": "2"},
                "verify": {"status": "done", "ok": True, "at": "2"},
            },
            "verified",
        ),
        (
            {
                "cutover": {"status": "done", "at": "2"},
                "verify": {"status": "done", "ok": False, "at": "3"},
            },
            "verify failed",
        ),
        (
            {
                "verify": {"status": "done", "ok": True, "at": "3"},
                "swap": {"status": "done", "at": "3"},
            },
            "swapped",
        ),
        (
            {
                "swap": {"status": "rolled back", "at": "4"},
                "rollback": {"status": "done", "at": "4"},
            },
            "rolled back",
        ),
        (
            {"swap": {"status": "done", "at": "5"}, "rollback": {"status": "done", "at": "4"}},
            "swapped",
        ),
        ({"rollback": {"status": "partial", "at": "4"}}, "partly rolled back"),
    ],
)
def test_volume_state_is_the_latest_step(entry: dict[str, Any], state: str) -> None:
    assert volume_state(entry)[0] == state


def test_status_of_a_local_plan(tmp_path: Path) -> None:
    plan = local_plan(tmp_path)
    journal = Journal(FileStore(journal_path(plan.path)), plan.name)  # type: ignore[arg-type]
    journal.record("media", "preseed", "done", files=3)
    journal.record("sonarr-config", "preseed", "failed", message="rclone exited 1")
    result = run_cli("status", "--plan", str(plan.path), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(v["volume"], v["state"], v["steps"]) for v in report["volumes"]] == [
        ("media", "pre-seeded", {"preseed": "done"}),
        ("sonarr-config", "pre-seed failed", {"preseed": "failed"}),
    ]
    human = run_cli("status", "--plan", str(plan.path)).output
    assert "pre-seed failed" in human and "rclone exited 1" in human


def test_swap_and_rollback_need_a_cluster_plan(tmp_path: Path) -> None:
    plan = local_plan(tmp_path)
    for command in ("swap", "rollback"):
        result = run_cli(command, "--plan", str(plan.path), "--in-cluster")
        assert result.exit_code == 2
        assert "need a cluster plan (made with -n NAMESPACE)" in result.output


def test_status_of_a_missing_plan_is_bad_input(tmp_path: Path) -> None:
    result = run_cli("status", "--plan", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert result.output.startswith("Error: plan file")
