"""Damage at the destination that verify finds is repaired by `migrator run --recheck`.

The copy state says what was copied; a re-run trusts it. An object truncated or deleted since
(by hand, by a lifecycle rule, by a broken disk) is only recopied once the state is checked
against what the destination holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3

from migrator.manifests.copy import with_recheck
from migrator.seaweedfs import SeaweedFS
from tests.helpers import run_cli
from tests.test_run_local import by_volume, make_plan, run


def s3_client(server: SeaweedFS) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.s3_endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
    )


def damage(server: SeaweedFS, bucket: str, prefix: str) -> tuple[str, str, str]:
    """Truncate one object, delete another and change the bytes of a third at the same size
    (under ``prefix``); their keys."""
    client = s3_client(server)
    sizes = {
        item["Key"]: item["Size"]
        for item in client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
        if item["Size"] > 10
    }
    truncated, changed, deleted = sorted(sizes)[:3]
    client.put_object(Bucket=bucket, Key=truncated, Body=b"short")
    client.put_object(Bucket=bucket, Key=changed, Body=b"\0" * sizes[changed])
    client.delete_object(Bucket=bucket, Key=deleted)
    return truncated, changed, deleted


def test_recheck_repairs_what_verify_finds_and_verify_says_how(
    tmp_path: Path, s3_env: SeaweedFS, bucket: str
) -> None:
    plan, _tree = make_plan(tmp_path, s3_env, bucket, "--volume", "media")
    assert run(plan, "--phase", "media", "--cutover")["ok"]
    truncated, changed, deleted = damage(s3_env, bucket, "arr/media/")

    # The copy state is trusted: neither a pre-seed nor another cutover sees the damage.
    assert by_volume(run(plan, "--phase", "media"))["media"]["copied"] == 0
    assert by_volume(run(plan, "--phase", "media", "--cutover"))["media"]["status"] == "skipped"

    found = run_cli("verify", "--plan", str(plan), "--no-cache")
    assert found.exit_code == 1
    assert f"migrator run --plan {plan} --phase media --recheck" in found.stdout, found.stdout
    as_json = run_cli("verify", "--plan", str(plan), "--no-cache", "--json")
    assert json.loads(as_json.stdout)["repair"] == (
        f"migrator run --plan {plan} --phase media --recheck"
    )

    repaired = by_volume(run(plan, "--phase", "media", "--recheck"))["media"]
    assert repaired["status"] == "done" and repaired["copied"] == 3
    objects = {
        item["Key"]: item["Size"]
        for item in s3_client(s3_env).list_objects_v2(Bucket=bucket, Prefix="arr/media/")[
            "Contents"
        ]
    }
    assert deleted in objects and objects[truncated] > len(b"short")
    assert b"\0" * 8 not in s3_client(s3_env).get_object(Bucket=bucket, Key=changed)["Body"].read()
    checked = run_cli("verify", "--plan", str(plan), "--no-cache")
    assert checked.exit_code == 0, checked.output
    assert "--recheck" not in checked.stdout
    # Nothing damaged (empty directories, a symlink, an empty file): a recheck copies nothing.
    assert by_volume(run(plan, "--phase", "media", "--recheck"))["media"]["copied"] == 0

    # After a cutover, --recheck runs the cutover's sync again instead of skipping it.
    damage(s3_env, bucket, "arr/media/")
    assert run_cli("verify", "--plan", str(plan)).exit_code == 1  # (its differences feed back)
    again = by_volume(run(plan, "--phase", "media", "--cutover", "--recheck"))["media"]
    assert again["status"] == "done" and again["copied"] == 3
    assert run_cli("verify", "--plan", str(plan), "--no-cache").exit_code == 0


def test_with_recheck_adds_the_flag_before_the_rclone_flags_once() -> None:
    container = {"command": ["migrator", "agent", "copy", "--dest", "d", "--", "--links"]}
    job = {"spec": {"template": {"spec": {"containers": [container]}}}}
    rechecked = with_recheck(job)
    [built] = rechecked["spec"]["template"]["spec"]["containers"]
    assert built["command"] == [
        "migrator",
        "agent",
        "copy",
        "--dest",
        "d",
        "--recheck",
        "--",
        "--links",
    ]
    assert container["command"][-2:] == ["--", "--links"]  # the rendered Job is left as it was
    assert with_recheck(rechecked) == rechecked
