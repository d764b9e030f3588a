"""The Kubernetes client's own guarantees (migrator/kube.py): bounded requests, one-line errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from migrator.kube import CONNECT_TIMEOUT, READ_TIMEOUT, request_timeout
from tests import tenant_media

NS = tenant_media.NAMESPACE


@contextmanager
def silent_api_server() -> Iterator[str]:
    """A loopback TCP server that accepts connections and never answers: a hung API server (or
    a half-open connection). Yields its ``host:port``."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    accepted: list[socket.socket] = []
    stopping = threading.Event()

    def accept() -> None:
        while not stopping.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stopping.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


def kubeconfig_for(path: Path, address: str) -> Path:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "hung",
        "clusters": [{"name": "hung", "cluster": {"server": f"http://{address}"}}],
        "users": [{"name": "someone", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "hung", "context": {"cluster": "hung", "user": "someone"}}],
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


def migrator(
    *args: str, cwd: Path, ceiling: float
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the CLI as a user does (its own process, no debug tracebacks); fail past ``ceiling``."""
    env = {k: v for k, v in os.environ.items() if k != "MIGRATOR_DEBUG"}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "migrator", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=ceiling,
    )  # fmt: skip
    return result, time.monotonic() - started


def test_an_api_server_that_never_answers_fails_plan_with_one_line(tmp_path: Path) -> None:
    with silent_api_server() as address:
        kubeconfig = kubeconfig_for(tmp_path / "kubeconfig", address)
        result, elapsed = migrator(
            "plan", "-n", NS, "--kubeconfig", str(kubeconfig), "--target", "pvc:local",
            cwd=tmp_path, ceiling=90,
        )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert f"the Kubernetes API server http://{address} did not answer within" in lines[0]
    assert "not-a-secret" not in result.stderr
    assert elapsed < 60  # one read timeout (20 s), not retried; generous for a busy machine


def test_streams_are_bounded_by_what_they_asked_for() -> None:
    base = "https://api.example:6443/api/v1/namespaces/tenant-media/pods"
    assert request_timeout(base) == (CONNECT_TIMEOUT, READ_TIMEOUT)
    assert request_timeout(f"{base}?watch=true&timeoutSeconds=300") == (CONNECT_TIMEOUT, 330)
    assert request_timeout(f"{base}/app-0/log?follow=true") == (CONNECT_TIMEOUT, None)
    assert request_timeout(f"{base}?watch=false&limit=500") == (CONNECT_TIMEOUT, READ_TIMEOUT)


def test_an_api_error_carries_the_api_servers_own_message() -> None:
    """A 400/422 names what the server objected to, not only the status line."""
    from kubernetes.client.exceptions import ApiException

    from migrator.errors import OperationFailedError
    from migrator.kube import KubeClient

    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "BadRequest",
              "code": 400, "message": 'Lease in version "v1" cannot be handled as a Lease'}  # fmt: skip
    error = ApiException(status=400, reason="Bad Request")
    error.body = json.dumps(status)

    def fail() -> None:
        raise error

    kube = KubeClient.__new__(KubeClient)  # no API server is asked
    with pytest.raises(OperationFailedError) as raised:
        kube.call("taking the run Lease", fail)
    assert str(raised.value) == (
        'taking the run Lease: API error 400 Bad Request: Lease in version "v1" cannot be '
        "handled as a Lease"
    )
    error.body = "<html>bad gateway</html>"  # not a Status: the status line alone
    with pytest.raises(OperationFailedError) as raised:
        kube.call("taking the run Lease", fail)
    assert str(raised.value) == "taking the run Lease: API error 400 Bad Request"
