#!/usr/bin/env python3
"""Benchmark: the cost of giving N files (default 20,000) their owner, mode and mtime in SeaweedFS.

Compares the two ways that exist (the S3 gateway and the filer HTTP API take neither owner nor
mtime): (1) migrator.filer over the filer's gRPC API (ListEntries per directory + pipelined
UpdateEntry), the way the copy agent does it; (2) chown + chmod + utime through a real weed mount
(what a pass in a Job mounting the bucket would do). Also times (1) again when nothing differs (a
re-run). Usage: python bench/filer_attributes.py [--files 20000] [--per-dir 500]
"""

from __future__ import annotations

import sys

# bench/copy.py is named like the stdlib module ``copy``: keep this folder off the import path.
sys.path[:] = [p for p in sys.path if not p.endswith("bench")]

import argparse  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import boto3  # noqa: E402

from migrator import filer  # noqa: E402
from migrator.seaweedfs import GRPC_OFFSET, SeaweedFS, find_weed  # noqa: E402


def upload(server: SeaweedFS, bucket: str, keys: list[str]) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=server.s3_endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=bucket)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=b"x" * 100), keys))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--per-dir", type=int, default=500)
    args = parser.parse_args()
    keys = [f"d{i // args.per_dir:04d}/f{i:06d}" for i in range(args.files)]
    with (
        tempfile.TemporaryDirectory(prefix="bench-filer-") as scratch,
        SeaweedFS(Path(scratch)) as server,
    ):
        upload(server, "grpc-bucket", keys)
        upload(server, "mount-bucket", keys)
        wanted = {
            k: filer.Attributes(0o640, 1000, 1000, 1_500_000_000_000_000_000 + i)
            for i, k in enumerate(keys)
        }
        with filer.FilerClient(f"127.0.0.1:{server.ports['filer'] + GRPC_OFFSET}") as client:
            started = time.monotonic()
            report = filer.apply_attributes(client, "/buckets/grpc-bucket", wanted)
            grpc_s = time.monotonic() - started
            started = time.monotonic()
            again = filer.apply_attributes(client, "/buckets/grpc-bucket", wanted)
            rerun_s = time.monotonic() - started
        assert report.updated == args.files and again.updated == 0 and not report.failures
        mnt = Path(scratch) / "mnt"
        mnt.mkdir()
        mount = subprocess.Popen(
            [
                find_weed(),
                "mount",
                f"-filer=127.0.0.1:{server.ports['filer']}",
                f"-dir={mnt}",
                "-filer.path=/buckets/mount-bucket",
                f"-cacheDir={scratch}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            while not os.path.ismount(mnt):
                time.sleep(0.1)
            started = time.monotonic()
            for key, attrs in wanted.items():
                path = mnt / key
                os.chown(path, attrs.uid, attrs.gid)
                os.chmod(path, attrs.mode)
                os.utime(path, ns=(attrs.mtime_ns, attrs.mtime_ns))
            mount_s = time.monotonic() - started
        finally:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
            mount.wait(15)
    print(f"{args.files} files in {args.files // args.per_dir} directories")
    print(f"filer gRPC (list + UpdateEntry): {grpc_s:.2f} s ({args.files / grpc_s:.0f} files/s)")
    print(f"filer gRPC, nothing to change:   {rerun_s:.2f} s")
    print(f"weed mount chown+chmod+utime:    {mount_s:.2f} s ({args.files / mount_s:.0f} files/s)")


if __name__ == "__main__":
    main()
