"""The Kubernetes client's own guarantees (migrator/kube.py): bounded requests, one-line errors
that say what to do, here against a hung server and a real kube-apiserver (the ServiceAccount of
docs/rbac.yaml, its token revoked or unknown, its CA missing)."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme
import yaml

from migrator.kube import CONNECT_TIMEOUT, READ_TIMEOUT, request_timeout
from tests import tenant_media
from tests.controlplane.cluster import Cluster

NS = tenant_media.NAMESPACE


@contextmanager
def silent_api_server(
    accepted: list[socket.socket] | None = None, tls: ssl.SSLContext | None = None
) -> Iterator[str]:
    """A loopback TCP server that accepts connections and never answers: a hung API server (or
    a half-open connection). Yields its ``host:port``. Every connection a client made is in
    ``accepted`` once the block has ended (the ones still queued are taken then: a count that
    load cannot change). With ``tls`` it completes the TLS handshake (as far as the client
    lets it) first."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    accepted = [] if accepted is None else accepted
    stopping = threading.Event()

    def handshake(conn: socket.socket) -> None:
        if tls is not None:
            conn.settimeout(10)
            with contextlib.suppress(OSError):  # the client refuses the certificate
                tls.wrap_socket(conn, server_side=True).close()

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn = listener.accept()[0]
            except TimeoutError:
                continue
            accepted.append(conn)
            handshake(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stopping.set()
        thread.join()
        listener.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:  # connections the kernel queued that the thread did not take
                accepted.append(listener.accept()[0])
        for conn in accepted:
            conn.close()
        listener.close()


def kubeconfig_for(path: Path, address: str, scheme: str = "http") -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "hung",
        "clusters": [{"name": "hung", "cluster": {"server": f"{scheme}://{address}"}}],
        "users": [{"name": "someone", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "hung", "context": {"cluster": "hung", "user": "someone"}}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def migrator(*args: str, cwd: Path, ceiling: float) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user does (its own process, no debug tracebacks); fail past ``ceiling``
    (a hang, not a measure)."""
    env = {k: v for k, v in os.environ.items() if k != "MIGRATOR_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "migrator", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=ceiling,
    )


@pytest.mark.slow  # it waits out one read timeout (20 s)
def test_an_api_server_that_never_answers_fails_plan_with_one_line(tmp_path: Path) -> None:
    accepted: list[socket.socket] = []
    with silent_api_server(accepted) as address:
        kubeconfig = kubeconfig_for(tmp_path / "kubeconfig", address)
        result = migrator(
            "plan",
            "-n",
            NS,
            "--kubeconfig",
            str(kubeconfig),
            "--target",
            "pvc:local",
            cwd=tmp_path,
            ceiling=90,
        )
    assert result.returncode == 3, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert f"the Kubernetes API server http://{address} did not answer within" in lines[0]
    assert "not-a-secret" not in result.stderr
    assert len(accepted) == 1  # one read timeout, not retried (that multiplies the wait)


def test_an_untrusted_api_server_certificate_is_not_retried(tmp_path: Path) -> None:
    ca = trustme.CA()  # the kubeconfig has no CA: the system's trust store does not know it
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    accepted: list[socket.socket] = []
    with silent_api_server(accepted, tls=server) as address:
        kubeconfig = kubeconfig_for(tmp_path / "kubeconfig", address, scheme="https")
        result = migrator(
            "plan",
            "-n",
            NS,
            "--kubeconfig",
            str(kubeconfig),
            "--target",
            "pvc:local",
            cwd=tmp_path,
            ceiling=90,
        )
    line = one_line_error(result, 3)
    assert f"the TLS certificate of the Kubernetes API server https://{address} is not " in line
    assert len(accepted) == 1  # retrying cannot make it trusted


def test_streams_are_bounded_by_what_they_asked_for() -> None:
    base = "https://api.example:6443/api/v1/namespaces/tenant-media/pods"
    assert request_timeout(base) == (CONNECT_TIMEOUT, READ_TIMEOUT)
    assert request_timeout(f"{base}?watch=true&timeoutSeconds=300") == (CONNECT_TIMEOUT, 330)
    assert request_timeout(f"{base}/app-0/log?follow=true") == (CONNECT_TIMEOUT, None)
    assert request_timeout(f"{base}?watch=false&limit=500") == (CONNECT_TIMEOUT, READ_TIMEOUT)


# --- one-line errors of the CLI against a real kube-apiserver ---------------------------------


def kubeconfig_like(
    cluster: Cluster, path: Path, token: str | None = None, ca: bytes | None = b"keep"
) -> Path:
    """The ServiceAccount's kubeconfig with another token and/or CA (``ca=None``: none, so
    only the system's trust store counts)."""
    config = yaml.safe_load(cluster.kubeconfig_path.read_text())
    if token is not None:
        config["users"][0]["user"]["token"] = token
    server = config["clusters"][0]["cluster"]
    if ca is None:
        del server["certificate-authority-data"]
    elif ca != b"keep":
        server["certificate-authority-data"] = base64.b64encode(ca).decode()
    path.write_text(yaml.safe_dump(config))
    return path


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def s3_plan_args(namespace: str, kubeconfig: Path) -> list[str]:
    return [
        "plan",
        "-n",
        namespace,
        "--kubeconfig",
        str(kubeconfig),
        "--target",
        "s3://media/m",
        "--s3-credentials-secret",
        tenant_media.SECRET_NAME,
        "--no-probe",
    ]


def test_an_unknown_namespace_is_exit_2(cluster: Cluster, tmp_path: Path) -> None:
    result = migrator(
        *s3_plan_args("tenant-nope", cluster.kubeconfig_path), cwd=tmp_path, ceiling=60
    )
    assert one_line_error(result, 2) == (
        "Error: namespace 'tenant-nope' does not exist; "
        "check the name with 'kubectl get namespaces'"
    )


def test_an_rbac_refusal_is_exit_3_and_names_what_was_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    # A namespace the account has no RoleBinding in: a plain user mistake.
    args = s3_plan_args("default", cluster.kubeconfig_path)
    result = migrator(*args, cwd=tmp_path, ceiling=60)
    line = one_line_error(result, 3)
    assert line.startswith("Error: listing PVCs: permission denied (persistentvolumeclaims is ")
    assert f'User "{cluster.user}" cannot list resource "persistentvolumeclaims"' in line
    assert 'in the namespace "default"' in line
    assert "grant it to the kubeconfig's user with RBAC (docs/rbac.yaml" in line
    assert cluster.forbidden() == ["list core/persistentvolumeclaims"]


def revoked_token(cluster: Cluster) -> str:
    """A token of the ServiceAccount bound to a Secret that is then deleted: the API server no
    longer accepts it, as it does not accept an expired one (which takes 10 minutes to get)."""
    holder = cluster.seed(
        [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "token-holder", "namespace": cluster.namespace},
            }
        ]
    )
    request = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "expirationSeconds": 3600,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Secret",
                "name": "token-holder",
                "uid": holder[0]["metadata"]["uid"],
            },
        },
    }
    token = str(
        cluster.core.create_namespaced_service_account_token(
            "migrator", cluster.namespace, request
        ).status.token
    )
    cluster.core.delete_namespaced_secret("token-holder", cluster.namespace)
    return token


@pytest.mark.parametrize("token", ["unknown", "revoked"])
def test_credentials_the_api_server_does_not_accept_are_exit_3_and_say_so(
    cluster: Cluster, tmp_path: Path, token: str
) -> None:
    value = "not-a-token-of-this-cluster" if token == "unknown" else revoked_token(cluster)
    kubeconfig = kubeconfig_like(cluster, tmp_path / "kubeconfig", token=value)

    def refused() -> bool:
        context = ssl.create_default_context(cafile=str(cluster.plane.ca_path))
        request = urllib.request.Request(
            f"{cluster.plane.server}/api", headers={"Authorization": f"Bearer {value}"}
        )
        try:
            urllib.request.urlopen(request, context=context, timeout=10).close()
        except urllib.error.HTTPError as error:
            return error.code == 401
        return False

    cluster.wait_for(refused, 30, "the token refused")
    result = migrator(*s3_plan_args(cluster.namespace, kubeconfig), cwd=tmp_path, ceiling=60)
    line = one_line_error(result, 3)
    assert line == (
        f"Error: reading namespace {cluster.namespace}: the Kubernetes API server "
        f"{cluster.plane.server} did not accept the credentials (401 Unauthorized); the token "
        "may have expired or been revoked: get a new one (kubectl -n NAMESPACE create token "
        "SERVICEACCOUNT) and put it in the kubeconfig"
    )
    assert value not in result.stderr


@pytest.mark.parametrize("ca", ["none", "another"])
def test_an_untrusted_api_server_certificate_is_exit_3_and_says_how_to_trust_it(
    cluster: Cluster, tmp_path: Path, ca: str
) -> None:
    other = trustme.CA().cert_pem.bytes() if ca == "another" else None
    kubeconfig = kubeconfig_like(cluster, tmp_path / "kubeconfig", ca=other)
    result = migrator(*s3_plan_args(cluster.namespace, kubeconfig), cwd=tmp_path, ceiling=60)
    line = one_line_error(result, 3)
    assert line.startswith(
        f"Error: reading namespace {cluster.namespace}: the TLS certificate of the Kubernetes "
        f"API server {cluster.plane.server} is not trusted ("
    )
    assert line.endswith(
        "); give its CA in the kubeconfig (certificate-authority-data, or "
        "certificate-authority: FILE)"
    )
    assert "unreachable" not in line  # (not retried: test_an_untrusted_api_server_...)
