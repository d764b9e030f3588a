"""`migrator run` fails fast, in one line naming the cause, when its Jobs' pods cannot start:
refused at admission (FailedCreate), an image that does not pull, a missing Secret key, no node
that fits. A cutover that fails that way brings the apps back unless --keep-down. All on the real
control plane: its Pod Security admission, Job controller and scheduler, and the process kubelet.

Jobs that never start need no SeaweedFS (plans made with --no-probe); the restricted test copies.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import re
import socket
import ssl
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import trustme
import yaml

from migrator.seaweedfs import SeaweedFS
from tests import tenant_media
from tests.controlplane.cluster import Cluster
from tests.helpers import run_cli

VOLUME = "prowlarr-config"
# --timeout: far above the fail-fast bound, so a pass proves nobody waited it out.
TIMEOUT = "600"
UNPUBLISHED = "ghcr.io/nobody/migrator-agent:0.0.0"


class Tenant:
    def __init__(self, cluster: Cluster, root: Path) -> None:
        self.cluster, self.root, self.ns = cluster, root, cluster.namespace

    def plan(self, *extra: str) -> Path:
        result = run_cli(
            "plan",
            "-n",
            self.ns,
            "--kubeconfig",
            str(self.cluster.kubeconfig_path),
            "--target",
            "s3://media/migrated",
            "--s3-credentials-secret",
            tenant_media.SECRET_NAME,
            "--s3-endpoint",
            "https://s3.example:8333",
            "--no-probe",
            "--volume",
            VOLUME,
            *extra,
            cwd=self.root,
        )
        assert result.exit_code == 0, result.output
        return self.root / "plans" / f"{self.ns}.yaml"

    def run(
        self, plan_path: Path, *args: str, kubeconfig: Path | None = None
    ) -> tuple[int, str, float]:
        started = time.monotonic()
        result = run_cli(
            "run",
            "--plan",
            str(plan_path),
            "--kubeconfig",
            str(kubeconfig or self.cluster.kubeconfig_path),
            "--phase",
            "config",
            "--timeout",
            TIMEOUT,
            *args,
        )
        return result.exit_code, result.output, time.monotonic() - started

    def jobs(self) -> list[str]:
        return [
            j["metadata"]["name"] for j in self.cluster.list_objects("batch/v1", "Job", self.ns)
        ]


@pytest.fixture
def tenant(make_cluster: Callable[..., Cluster], tmp_path: Path) -> Iterator[Tenant]:
    source = tmp_path / "prowlarr"
    source.mkdir()
    (source / "config.xml").write_text("<Config/>")
    cluster = make_cluster(claims={VOLUME: source})
    cluster.kubelet.unpublished.add(UNPUBLISHED)  # what the registry lacks
    try:
        yield Tenant(cluster, tmp_path)
    finally:
        cluster.kubelet.unpublished.discard(UNPUBLISHED)


def error_line(output: str) -> str:
    [line] = [line for line in output.splitlines() if line.startswith("Error: ")]
    return line


def test_pods_refused_by_pod_security_fail_the_run_at_once(tenant: Tenant) -> None:
    plan_path = tenant.plan()
    tenant.cluster.label_namespace(
        {"pod-security.kubernetes.io/enforce": "restricted"}
    )  # agents run as root
    code, output, seconds = tenant.run(plan_path)
    assert code == 3, output
    line = error_line(output)
    # The job controller names the pod it tried (generateName plus a suffix), as it reports it.
    assert re.match(
        f"Error: copy failed for {VOLUME}: Job migrator-copy-{VOLUME} cannot create its "
        f'pods: Error creating: pods "migrator-copy-{VOLUME}-[a-z0-9]*" is forbidden: violates '
        'PodSecurity "restricted:latest": ',
        line,
    ), line
    assert "runAsNonRoot != true" in line
    assert tenant.jobs() == []  # deleted: it must not start by itself later
    print(f"refused at admission: failed after {seconds:.1f}s")


def test_an_image_that_does_not_pull_fails_the_run(tenant: Tenant) -> None:
    plan_path = tenant.plan("--image", UNPUBLISHED)
    code, output, seconds = tenant.run(plan_path)
    assert code == 3, output
    line = error_line(output)
    assert f"pod migrator-copy-{VOLUME}-" in line
    assert "cannot start: ErrImagePull: " in line or "cannot start: ImagePullBackOff: " in line
    assert UNPUBLISHED in line
    assert tenant.jobs() == []
    print(f"image pull: failed after {seconds:.1f}s")


def test_a_missing_secret_key_fails_the_run(tenant: Tenant) -> None:
    plan_path = tenant.plan()
    tenant.cluster.patch_object(
        "v1", "Secret", tenant.ns, tenant_media.SECRET_NAME, {"data": {"accessKey": None}}
    )
    code, output, seconds = tenant.run(plan_path)
    assert code == 3, output
    line = error_line(output)
    assert "cannot start: CreateContainerConfigError: " in line
    assert "accessKey" in line
    print(f"missing Secret key: failed after {seconds:.1f}s")


def test_an_unschedulable_pod_fails_the_run(tenant: Tenant) -> None:
    plan_path = tenant.plan()
    nodes = [n["metadata"]["name"] for n in tenant.cluster.list_objects("v1", "Node")]
    try:  # the Nodes are shared by the whole session: cordoned for this test only
        for node in nodes:
            tenant.cluster.patch_object("v1", "Node", None, node, {"spec": {"unschedulable": True}})
        code, output, seconds = tenant.run(plan_path)
    finally:
        for node in nodes:
            tenant.cluster.patch_object("v1", "Node", None, node, {"spec": {"unschedulable": None}})
    assert code == 3, output
    line = error_line(output)
    assert f"pod migrator-copy-{VOLUME}-" in line and "cannot be scheduled: 0/3 nodes" in line
    print(f"unschedulable: failed after {seconds:.1f}s")


def journal(tenant: Tenant) -> dict[str, Any]:
    found = tenant.cluster.get_object("v1", "ConfigMap", tenant.ns, f"migrator-{tenant.ns}")
    assert found is not None
    document: dict[str, Any] = json.loads(found["data"]["journal.json"])
    return document


def test_a_failed_cutover_brings_the_apps_back(tenant: Tenant) -> None:
    plan_path = tenant.plan("--image", UNPUBLISHED)  # the apps' own images pull fine
    code, output, _ = tenant.run(plan_path, "--cutover")
    assert code == 3, output
    assert "cutover failed: bringing the apps back" in output
    release = tenant.cluster.get_object(
        "helm.toolkit.fluxcd.io/v2", "HelmRelease", tenant.ns, "prowlarr"
    )
    assert release is not None and not release["spec"].get("suspend")
    deployment = tenant.cluster.get_object("apps/v1", "Deployment", tenant.ns, "prowlarr")
    assert deployment is not None and deployment["spec"]["replicas"] == 1
    assert "Deployment/prowlarr: scaled, 1 replicas, Ready" in output
    assert journal(tenant)["volumes"][VOLUME]["cutover"]["status"] == "failed"


def test_keep_down_leaves_the_apps_stopped_after_a_failed_cutover(tenant: Tenant) -> None:
    plan_path = tenant.plan("--image", UNPUBLISHED)
    code, output, _ = tenant.run(plan_path, "--cutover", "--keep-down")
    assert code == 3, output
    assert "the apps stay stopped and their releases suspended (--keep-down)" in output
    release = tenant.cluster.get_object(
        "helm.toolkit.fluxcd.io/v2", "HelmRelease", tenant.ns, "prowlarr"
    )
    assert release is not None and release["spec"]["suspend"] is True
    deployment = tenant.cluster.get_object("apps/v1", "Deployment", tenant.ns, "prowlarr")
    assert deployment is not None and deployment["spec"]["replicas"] == 0


def test_a_restricted_namespace_admits_the_restricted_mode_agents_and_they_copy(
    make_cluster: Callable[..., Cluster], tmp_path: Path, seaweedfs: SeaweedFS, bucket: str
) -> None:
    """End to end through Pod Security admission: the namespace enforces restricted (labelled
    once the apps run), plan picks restricted mode, and the copy Job's pods are admitted."""
    source = tmp_path / "prowlarr"
    source.mkdir()
    (source / "config.xml").write_text("<Config><ApiKey>x</ApiKey></Config>")
    (source / "Backups").mkdir()
    (source / "Backups" / "note.txt").write_text("hello")
    cluster = make_cluster(
        claims={VOLUME: source},
        secret={
            "access_key": seaweedfs.access_key,
            "secret_key": seaweedfs.secret_key,
            "bucket": bucket,
        },
    )
    ns = cluster.namespace
    cluster.label_namespace({"pod-security.kubernetes.io/enforce": "restricted"})
    result = run_cli(
        "plan",
        "-n",
        ns,
        "--kubeconfig",
        str(cluster.kubeconfig_path),
        "--target",
        "s3://media/migrated",
        "--s3-credentials-secret",
        tenant_media.SECRET_NAME,
        "--s3-endpoint",
        seaweedfs.s3_endpoint,
        "--volume",
        VOLUME,
        cwd=tmp_path,
    )
    assert result.exit_code == 0, result.output
    plan_path = tmp_path / "plans" / f"{ns}.yaml"
    job = yaml.safe_load((tmp_path / "jobs" / ns / f"copy-{VOLUME}.yaml").read_text())
    context = job["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert (context["runAsUser"], context["runAsNonRoot"]) == (1000, True)
    code, output, _ = Tenant(cluster, tmp_path).run(plan_path)
    assert code == 0, output
    s3 = boto3.client(
        "s3",
        endpoint_url=seaweedfs.s3_endpoint,
        aws_access_key_id=seaweedfs.access_key,
        aws_secret_access_key=seaweedfs.secret_key,
        region_name="us-east-1",
    )
    keys = {
        o["Key"]
        for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"migrated/{VOLUME}/")["Contents"]
    }
    assert {f"migrated/{VOLUME}/config.xml", f"migrated/{VOLUME}/Backups/note.txt"} <= keys


class StallingProxy:
    """A TLS-terminating HTTP proxy to the API server that answers every watch request with
    silence: the connection stays open and nothing ever arrives (a half-open connection, as after
    a NAT or load balancer drops it). Clients trust :attr:`ca` (its own); it trusts the API
    server's. Each client connection is served by one thread, one request after another, over its
    own upstream connection: no TLS socket is ever used from two threads."""

    def __init__(self, upstream: tuple[str, int], upstream_ca: Path) -> None:
        self.ca = trustme.CA()
        self.closing = threading.Event()
        self.errors: list[str] = []
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert("127.0.0.1").configure_cert(server_context)
        client_context = ssl.create_default_context(cafile=str(upstream_ca))
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            upstream_connection: http.client.HTTPSConnection | None = None

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                if "watch=true" in urllib.parse.urlsplit(self.path).query.lower():
                    proxy.closing.wait()  # never answer
                    self.close_connection = True
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.upstream_connection is None:
                    self.upstream_connection = http.client.HTTPSConnection(
                        *upstream, context=client_context, timeout=60
                    )
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                self.upstream_connection.request(self.command, self.path, body, headers)
                answer = self.upstream_connection.getresponse()
                self.send_response_only(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while chunk := answer.read1(65536):  # streamed: a followed log arrives as it comes
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                answer.close()  # read to its end: the upstream connection serves the next one
                if answer.will_close:
                    self.upstream_connection.close()
                    self.upstream_connection = None

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                proxy.errors.append(traceback.format_exc())

            def get_request(self) -> tuple[socket.socket, Any]:
                raw, address = super().get_request()
                return server_context.wrap_socket(raw, server_side=True), address

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "host",
}


def test_timeout_holds_when_the_job_watch_goes_silent(tenant: Tenant) -> None:
    """The executor's watch has a client-side read deadline: --timeout ends the wait even when
    the watch connection is open but silent (the Job's pod waits for its claim forever)."""
    plan_path = tenant.plan()
    # The copy pod waits for its volume: ContainerCreating, nothing to report.
    tenant.cluster.kubelet.unmountable.add((tenant.ns, VOLUME))
    plane = tenant.cluster.plane
    url = urllib.parse.urlsplit(plane.server)
    proxy = StallingProxy((url.hostname or "127.0.0.1", url.port or 443), plane.ca_path)
    try:
        config = yaml.safe_load(tenant.cluster.kubeconfig_path.read_text())
        cluster_entry = config["clusters"][0]["cluster"]
        cluster_entry["server"] = f"https://127.0.0.1:{proxy.port}"
        cluster_entry["certificate-authority-data"] = base64.b64encode(
            proxy.ca.cert_pem.bytes()
        ).decode()
        stalled = tenant.root / "stalled-kubeconfig.yaml"
        stalled.write_text(yaml.safe_dump(config))
        started = time.monotonic()
        result = run_cli(
            "run",
            "--plan",
            str(plan_path),
            "--kubeconfig",
            str(stalled),
            "--phase",
            "config",
            "--timeout",
            "8",
        )
        seconds = time.monotonic() - started
    finally:
        proxy.close()
        tenant.cluster.kubelet.unmountable.discard((tenant.ns, VOLUME))
    assert result.exit_code == 3, (result.output, proxy.errors)
    assert f"Job migrator-copy-{VOLUME} did not finish within 8s" in result.output, proxy.errors
    assert seconds < 45  # generous (measured ~10 s): urllib3 retries alone made it 60 s
    print(f"silent watch: gave up after {seconds:.1f}s with --timeout 8")
