#!/usr/bin/env python3
"""Measure: how long migrator's S3 client (migrator/s3wire.py) holds a GET against a server that
trickles one byte every 1.5 s, with a 2 s timeout (issue #10). A real SeaweedFS sits behind the
test fault proxy (tests/faultproxy.py); prints the seconds and the error for the default client
(4 attempts) and for one that leaves timeouts to its caller (the copy agent's uploader).

  .venv/bin/python -m bench.trickle_deadline    # from the repository root
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import boto3

from migrator.objectstore import S3Settings
from migrator.s3wire import Client, Endpoint
from migrator.seaweedfs import SeaweedFS
from tests.faultproxy import FaultProxy


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch, SeaweedFS(Path(scratch)) as server:
        s3 = boto3.client(
            "s3",
            endpoint_url=server.s3_endpoint,
            aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket="trickle")
        s3.put_object(Bucket="trickle", Key="object", Body=b"x" * 4096)
        with FaultProxy("127.0.0.1", int(server.s3_endpoint.rsplit(":", 1)[1])) as proxy:
            settings = S3Settings(
                endpoint=proxy.url,
                access_key=server.access_key,
                secret_key=server.secret_key,
                region="us-east-1",
            )
            for retry in (True, False):
                proxy.trickle(1, 1.5)
                client = Client(Endpoint.from_settings(settings), 2.0, retry_timeouts=retry)
                started = time.monotonic()
                try:
                    client.get("trickle", "object").read()
                    outcome = "completed"
                except Exception as exc:  # the point is to show what it raises
                    outcome = f"{type(exc).__name__}: {exc}"
                print(f"retry_timeouts={retry}: {time.monotonic() - started:.1f} s: {outcome}")
                proxy.resume()
                proxy.drop_all()


if __name__ == "__main__":
    main()
