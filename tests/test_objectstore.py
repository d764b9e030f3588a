"""migrator.objectstore's resumable reader against a real SeaweedFS behind a fault proxy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from migrator.errors import StorageError
from migrator.objectstore import S3Settings, get_bytes, make_client, open_object
from migrator.seaweedfs import SeaweedFS
from tests.faultproxy import FaultProxy

BODY = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture
def proxy(seaweedfs: SeaweedFS) -> Iterator[FaultProxy]:
    port = int(seaweedfs.s3_endpoint.rsplit(":", 1)[1])
    with FaultProxy("127.0.0.1", port) as running:
        yield running


@pytest.fixture
def client(proxy: FaultProxy, seaweedfs: SeaweedFS, bucket: str) -> object:
    settings = S3Settings(proxy.url, seaweedfs.access_key, seaweedfs.secret_key)
    s3 = make_client(settings)
    s3.put_object(Bucket=bucket, Key="backup/blob", Body=BODY)
    return s3


def test_reader_rides_out_slow_down_answers_to_its_gets(
    client: object, proxy: FaultProxy, bucket: str
) -> None:
    # botocore's standard retry mode retries 5xx and SlowDown with exponential backoff
    # (objectstore.make_client: 5 attempts); the reader re-opens dropped bodies itself.
    proxy.slow_down(2, method="GET")
    with open_object(client, bucket, "backup/blob") as stream:
        assert stream.read() == BODY
    assert proxy.answered_slow_down == 2


def test_reader_reports_persistent_slow_down_in_one_line(
    client: object, proxy: FaultProxy, bucket: str
) -> None:
    proxy.slow_down(100, method="GET")
    with pytest.raises(StorageError) as caught:
        get_bytes(client, bucket, "backup/blob")
    # make_client asks for max_attempts=5, which botocore counts as retries: 6 requests
    assert proxy.answered_slow_down == 6
    message = str(caught.value)
    assert message.startswith(f"reading s3://{bucket}/backup/blob: SlowDown")
    assert "\n" not in message
