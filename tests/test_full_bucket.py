"""A full bucket, for real: SeaweedFS's own quota enforcement makes a bucket read-only, and the
copy agent and the backup agent each fail with one line that names the likely cause, quickly,
instead of a traceback or minutes of retries."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from migrator.seaweedfs import SeaweedFS, find_weed
from tests.helpers import run_cli
from tests.test_uploader import FLAGS, remote_env

HINT = "SeaweedFS answers this when the bucket is over its quota or its volumes are full"


def weed_shell(server: SeaweedFS, script: str) -> str:
    master, filer = server.ports["master"], server.ports["filer"]
    done = subprocess.run(
        [find_weed(), "shell", f"-master=127.0.0.1:{master}", f"-filer=127.0.0.1:{filer}"],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def client(server: SeaweedFS) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.s3_endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
    )


def refuses_writes(s3: Any, bucket: str) -> bool:
    try:
        s3.put_object(Bucket=bucket, Key="probe", Body=b"x")
    except ClientError as error:
        return error.response["Error"]["Code"] == "InternalError"
    return False


@pytest.fixture(scope="module")
def full_bucket(seaweedfs: SeaweedFS) -> str:
    """A bucket holding 3 MiB under a 1 MiB quota, made read-only by `s3.bucket.quota.enforce`."""
    name = f"full-{os.getpid()}"
    s3 = client(seaweedfs)
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="filler", Body=os.urandom(3 * 2**20))
    weed_shell(seaweedfs, f"lock\ns3.bucket.quota -name={name} -op=set -sizeMB=1\nunlock\n")
    deadline = time.monotonic() + 60
    # The usage the enforcement reads comes from volume heartbeats: apply until it bites.
    while not refuses_writes(s3, name):
        assert time.monotonic() < deadline, "SeaweedFS never enforced the quota"
        weed_shell(seaweedfs, "lock\ns3.bucket.quota.enforce -apply\nunlock\n")
        time.sleep(1)
    return name  # it stays read-only: no other test uses it


def test_copy_into_a_full_bucket_stops_after_one_file_of_retries(
    tmp_path: Path, seaweedfs: SeaweedFS, full_bucket: str
) -> None:
    source = tmp_path / "media"
    source.mkdir()
    for index in range(30):
        (source / f"episode {index}.mkv").write_bytes(os.urandom(50_000))
    started = time.monotonic()
    result = run_cli(
        "agent",
        "copy",
        "--source",
        str(source),
        "--dest",
        f"dest:{full_bucket}/media",
        "--state",
        f"dest:{full_bucket}/state",
        "--",
        *FLAGS,
        env=remote_env(seaweedfs),
    )
    took = time.monotonic() - started
    assert result.exit_code == 3, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"Error: every write to S3 at 127.0.0.1:{seaweedfs.ports['s3']}")
    assert f"(bucket {full_bucket!r}) failed for" in last
    assert "HTTP 500 InternalError" in last and HINT in last
    assert last.endswith("progress saved, re-run to resume")
    assert "Traceback" not in result.output
    assert took < 60  # one file's retries (about 24 s), not 30 files' worth


def test_backup_into_a_full_bucket_is_one_line(
    tmp_path: Path, seaweedfs: SeaweedFS, full_bucket: str
) -> None:
    config = tmp_path / "sonarr"
    config.mkdir()
    (config / "config.xml").write_text("<Config/>\n")
    (config / "big.bin").write_bytes(os.urandom(6 * 2**20))
    result = run_cli(
        "agent",
        "backup",
        "--to",
        f"s3://{full_bucket}/backups",
        "--volume",
        "sonarr-config",
        str(config),
        "--part-size",
        "5",
        env={
            "AWS_ENDPOINT_URL": seaweedfs.s3_endpoint,
            "AWS_ACCESS_KEY_ID": seaweedfs.access_key,
            "AWS_SECRET_ACCESS_KEY": seaweedfs.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        },
    )
    assert result.exit_code == 3, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"Error: backup failed for sonarr-config: uploading s3://{full_bucket}/")
    assert "HTTP 500 InternalError" in last and HINT in last
    assert "Traceback" not in result.output
