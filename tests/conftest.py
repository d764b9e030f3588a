"""Shared fixtures: one real SeaweedFS per test session, fresh buckets per test."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import boto3
import pytest

from migrator.seaweedfs import SeaweedFS
from tests.controlplane import (
    ControlPlane,
    ControlPlaneUnavailable,
    ensure_binaries,
    say_to_terminal,
)
from tests.controlplane.cluster import Cluster, unique_namespace
from tests.helpers import unavailable
from tests.kubelet.process import ProcessKubelet

_bucket_numbers = itertools.count(1)
BASELINE = {
    "pod-security.kubernetes.io/enforce": "baseline",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
# Unexpected exceptions surface as tracebacks in tests instead of a one-line error.
os.environ["MIGRATOR_DEBUG"] = "1"


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A real ``weed server -filer -s3`` on free loopback ports, shared by the session."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def offsite_seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A second SeaweedFS with keys of its own: the off-site S3 of a 3-2-1 backup scheme."""
    server = SeaweedFS(
        tmp_path_factory.mktemp("offsite"), access_key="offsite-key", secret_key="offsite-secret"
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_bucket(server: SeaweedFS) -> str:
    """A new, empty bucket in ``server``."""
    name = f"test-{os.getpid()}-{next(_bucket_numbers)}"
    client = boto3.client(
        "s3",
        endpoint_url=server.s3_endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_env(seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> SeaweedFS:
    """Point the standard AWS_* variables at the session SeaweedFS."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return seaweedfs


@pytest.fixture
def bucket(seaweedfs: SeaweedFS) -> str:
    """A new, empty bucket in the session SeaweedFS."""
    return make_bucket(seaweedfs)


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    return tmp_path


SEAWEEDFS_FIXTURES = {"seaweedfs", "offsite_seaweedfs", "tls"}  # tls: test_tls.py's own server
CLUSTER_FIXTURES = {"control_plane", "kubelet"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark by what a test uses, so that ``pytest -m "not slow"`` is the inner loop: a test on a
    real SeaweedFS gets ``seaweedfs`` and ``slow``, one on the real control plane ``cluster``
    and ``slow`` (fixtures reached through others count: ``bucket`` needs ``seaweedfs``)."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & SEAWEEDFS_FIXTURES:
            item.add_marker(pytest.mark.seaweedfs)
            item.add_marker(pytest.mark.slow)
        if used & CLUSTER_FIXTURES:
            item.add_marker(pytest.mark.cluster)
            item.add_marker(pytest.mark.slow)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the real control plane before any test runs when a collected test needs it: the
    first build takes minutes, which must not count against a test's own timeout."""
    if not any("control_plane" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    with contextlib.suppress(Exception), capture.global_and_fixture_disabled():
        ensure_binaries(say_to_terminal)  # a failure is reported by the fixture, per test


@pytest.fixture(scope="session")
def control_plane(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ControlPlane]:
    """A real etcd + kube-apiserver (built from source once, cached outside the repository).

    Without a Go toolchain the tests that need it skip with one line saying how to get it, except
    under CI=true, where a missing control plane is a failure.
    """
    capture = request.config.pluginmanager.getplugin("capturemanager")
    try:
        with capture.global_and_fixture_disabled():  # the first build's progress is seen live
            bin_dir = ensure_binaries(say_to_terminal)
    except ControlPlaneUnavailable as error:
        unavailable(f"real Kubernetes control plane unavailable: {error}")
    with ControlPlane(tmp_path_factory.mktemp("controlplane"), bin_dir) as plane:
        yield plane


@pytest.fixture(scope="session")
def kubelet(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessKubelet]:
    """The process kubelet (tests/kubelet/process.py) on the shared control plane: Nodes
    worker-1..3 (the tenant-media nodes), whose pods run as local processes."""
    with ProcessKubelet(
        control_plane.kubeconfig_path, workdir=tmp_path_factory.mktemp("kubelet")
    ) as running:
        yield running
    assert not running.errors, f"the process kubelet failed: {running.errors!r}"


@pytest.fixture
def make_cluster(
    control_plane: ControlPlane, kubelet: ProcessKubelet, tmp_path: Path
) -> Iterator[Callable[..., Cluster]]:
    """Make tenant namespaces on the shared real control plane, each seeded with tenant-media's
    objects (tests/tenant_media.py) as admin, with the ServiceAccount of docs/rbac.yaml
    (``cluster.kubeconfig_path`` is its kubeconfig), and its apps running on the process kubelet.

    ``claims`` backs claims by host directories; ``secret`` gives the credentials Secret's keys
    (``tenant_media.credentials_secret`` arguments); ``labels`` default to Pod Security
    ``baseline`` enforced, as Talos does. Every namespace is deleted at the end of the test.
    """
    from tests import tenant_media

    made: list[Cluster] = []

    def make(
        *,
        claims: Mapping[str, Path] | None = None,
        secret: Mapping[str, str] | None = None,
        labels: Mapping[str, str] = BASELINE,
    ) -> Cluster:
        namespace = unique_namespace()
        tenant = Cluster(control_plane, namespace, tmp_path / namespace, kubelet)
        made.append(tenant)
        for claim, directory in (claims or {}).items():
            kubelet.add_claim(namespace, claim, directory)
        tenant.create_namespace(dict(labels))
        objects = tenant_media.tenant_media(ns=namespace, with_nodes=False)[1:]
        if secret is not None:
            given = tenant_media.credentials_secret(namespace=namespace, **secret)
            objects = [given if o["kind"] == "Secret" else o for o in objects]
        tenant.seed(objects)
        tenant.settle()  # the apps run (as idle processes), as on a live cluster
        return tenant

    try:
        yield make
    finally:
        for tenant in made:
            tenant.delete()


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    """A fresh tenant namespace, as :func:`make_cluster` makes it with its defaults."""
    return make_cluster()
