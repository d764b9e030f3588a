"""The lean S3 client against a real SeaweedFS behind a fault proxy (tests/faultproxy.py)."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest

from migrator.objectstore import S3Settings
from migrator.s3wire import Client, Endpoint, WireError
from migrator.seaweedfs import SeaweedFS
from tests.faultproxy import FaultProxy

BODY = bytes(range(256)) * 64  # 16 KiB


@pytest.fixture
def proxy(seaweedfs: SeaweedFS) -> Iterator[FaultProxy]:
    port = int(seaweedfs.s3_endpoint.rsplit(":", 1)[1])
    with FaultProxy("127.0.0.1", port) as running:
        yield running


@pytest.fixture
def stored(seaweedfs: SeaweedFS, bucket: str) -> str:
    boto3.client(
        "s3",
        endpoint_url=seaweedfs.s3_endpoint,
        aws_access_key_id=seaweedfs.access_key,
        aws_secret_access_key=seaweedfs.secret_key,
        region_name="us-east-1",
    ).put_object(Bucket=bucket, Key="a/blob", Body=BODY)
    return bucket


def client_via(proxy: FaultProxy, seaweedfs: SeaweedFS, timeout: float) -> Client:
    settings = S3Settings(
        endpoint=proxy.url,
        access_key=seaweedfs.access_key,
        secret_key=seaweedfs.secret_key,
        region="us-east-1",
    )
    return Client(Endpoint.from_settings(settings), timeout=timeout)


def test_get_through_the_proxy_passes(proxy: FaultProxy, seaweedfs: SeaweedFS, stored: str) -> None:
    response = client_via(proxy, seaweedfs, 5.0).get(stored, "a/blob")
    assert (response.status, bytes(response.read())) == (200, BODY)
    assert proxy.requests == 1


def test_trickling_server_is_cut_off_by_the_whole_request_deadline(
    proxy: FaultProxy, seaweedfs: SeaweedFS, stored: str
) -> None:
    # Every recv gets a byte well within the 1 s timeout, so only a deadline on the whole
    # request ends it; before it, this GET took 16384 * 0.05 s = 13+ minutes.
    client = client_via(proxy, seaweedfs, 1.0)
    proxy.trickle(1, 0.05)
    # the head trickles too, so the GET itself may be what times out (after its retries)
    with pytest.raises((TimeoutError, WireError)) as caught:
        client.get(stored, "a/blob").read()
    message = str(caught.value)
    assert "Errno" not in message
    # the whole-request deadline, not the per-recv timeout (which every byte resets)
    assert "did not complete the request within its deadline" in message and "1 s" in message
    proxy.close()
    assert proxy.connections == 4  # the GET's attempts, each cut off by its deadline


def test_stalled_server_reports_a_timeout_not_errno_11(
    proxy: FaultProxy, seaweedfs: SeaweedFS, stored: str
) -> None:
    client = client_via(proxy, seaweedfs, 0.5)
    proxy.stall()
    with pytest.raises(WireError) as caught:
        client.get(stored, "a/blob")
    proxy.close()
    assert proxy.connections == 4  # each attempt timed out once, then it gave up
    message = str(caught.value)
    assert "Errno 11" not in message and "Resource temporarily unavailable" not in message
    assert "timed out" in message, message
    assert message.startswith(f"GET s3://{stored}/a/blob failed on {proxy.url}")


def test_get_retries_slow_down_then_succeeds(
    proxy: FaultProxy, seaweedfs: SeaweedFS, stored: str
) -> None:
    client = client_via(proxy, seaweedfs, 5.0)
    proxy.slow_down(2)
    response = client.get(stored, "a/blob")
    assert (response.status, bytes(response.read())) == (200, BODY)
    assert proxy.answered_slow_down == 2


def test_get_gives_up_on_persistent_slow_down_with_the_answer(
    proxy: FaultProxy, seaweedfs: SeaweedFS, stored: str
) -> None:
    client = client_via(proxy, seaweedfs, 5.0)
    proxy.slow_down(100)
    response = client.get(stored, "a/blob")
    assert response.status == 503
    assert b"<Code>SlowDown</Code>" in bytes(response.read())
    assert proxy.answered_slow_down == 4  # every attempt, then the last answer is returned


def test_connection_cut_mid_body_raises_a_connection_error(
    proxy: FaultProxy, seaweedfs: SeaweedFS, stored: str
) -> None:
    client = client_via(proxy, seaweedfs, 5.0)
    proxy.cut_after(4000)  # the head plus part of the body
    response = client.get(stored, "a/blob")
    with pytest.raises(ConnectionError, match="mid-body"):
        response.read()
    client.reset()
    again = client.get(stored, "a/blob")  # a fresh connection is not cut
    assert bytes(again.read()) == BODY
