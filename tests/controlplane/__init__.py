"""A real Kubernetes control plane for the tests: etcd and kube-apiserver built from source.

The binaries come from the Go module in ``gomod/`` (``k8s.io/kubernetes`` and etcd at the versions
its ``go.mod`` pins), built once with the machine's Go toolchain through the Go module proxy and
cached outside the repository under ``~/.cache/migrator/controlplane/<key>/``, where the key is a
hash of ``go.mod`` and ``go.sum``: a version bump builds anew, nothing built is committed.

:class:`ControlPlane` starts etcd and the API server on free loopback ports, with RBAC, service
account tokens and Pod Security admission on (as every real cluster has them), serving TLS with a
throwaway CA, and writes an admin kubeconfig. Processes are ours alone: stopped by pid (SIGTERM,
then SIGKILL), never by name.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import yaml

GOMOD = Path(__file__).parent / "gomod"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
PACKAGES = {
    "etcd": "./cmd/etcd",
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
}
ADMIN_TOKEN_USER = "migrator-test-admin"
# The Flux controllers whose own CRD files the tests install: the releases of Flux 2.7.x, which
# Cozystack ships (packages/system/fluxcd: distribution version 2.7.x). They come from the Go
# module proxy like the rest of the control plane (the module zips carry config/crd/bases/).
FLUX_CRDS = {
    "github.com/fluxcd/helm-controller@v1.4.3": "helm.toolkit.fluxcd.io_helmreleases.yaml",
    "github.com/fluxcd/kustomize-controller@v1.7.3": "kustomize.toolkit.fluxcd.io_kustomizations.yaml",
}
# Controllers a real cluster runs that these tests need. Left out: node-lifecycle (the process
# kubelet does not heartbeat), attach/detach (no CSI attacher), node-ipam, and cloud/certificate
# machinery; see ControlPlane._start_controller_manager.
CONTROLLERS_OFF = (
    "node-lifecycle-controller",
    "persistentvolume-attach-detach-controller",
    "node-ipam-controller",
    "taint-eviction-controller",
    "device-taint-eviction-controller",
    "horizontal-pod-autoscaler-controller",
    "service-cidr-controller",
    "certificatesigningrequest-signing-controller",
    "certificatesigningrequest-approving-controller",
    "kube-apiserver-serving-clustertrustbundle-publisher-controller",
)


class ControlPlaneUnavailable(Exception):
    """The binaries are not built and cannot be (no Go toolchain): the message says how."""


def kubernetes_version() -> str:
    """The ``k8s.io/kubernetes`` version ``gomod/go.mod`` pins, e.g. ``v1.37.2``."""
    for line in (GOMOD / "go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "k8s.io/kubernetes" and parts[1].startswith("v"):
            return parts[1]
    raise ValueError("gomod/go.mod does not require k8s.io/kubernetes")


def cache_dir() -> Path:
    """Where the binaries for this go.mod/go.sum live (outside the repository)."""
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "tools.go", "cmd/etcd/main.go"):
        digest.update((GOMOD / name).read_bytes())
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "migrator" / "controlplane" / f"{kubernetes_version()}-{digest.hexdigest()[:12]}"


def binaries_ready() -> bool:
    return all((cache_dir() / "bin" / name).is_file() for name in BINARIES)


def ensure_binaries(say: Callable[[str], None] = print) -> Path:
    """Build the control plane once (printing progress through ``say``) and return its bin dir.

    Raises ControlPlaneUnavailable when there is no Go toolchain to build with.
    """
    bin_dir = cache_dir() / "bin"
    if binaries_ready() and all(path.is_file() for path in crd_paths()):
        return bin_dir
    go = _go()
    if go is None:
        raise ControlPlaneUnavailable(
            "no Go toolchain: install Go 1.26+ so the tests can build kube-apiserver and etcd "
            f"{kubernetes_version()} once (cached in {cache_dir().parent})"
        )
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be building the same binaries
        if not binaries_ready():
            _build(go, bin_dir, say)
        ensure_crds(say)
    return bin_dir


def _go() -> str | None:
    return shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )


def crd_paths() -> list[Path]:
    """Where the Flux CRD files are cached (see :func:`ensure_crds`)."""
    return [
        cache_dir() / "crds" / module.replace("/", "_") / name for module, name in FLUX_CRDS.items()
    ]


def ensure_crds(say: Callable[[str], None] = print) -> list[Path]:
    """Fetch the Flux controllers' module zips through the Go module proxy (once) and return
    their CRD files, cached beside the binaries."""
    paths = crd_paths()
    if all(path.is_file() for path in paths):
        return paths
    go = _go()
    if go is None:
        raise ControlPlaneUnavailable("no Go toolchain to fetch the Flux CRDs with")
    say(f"fetching the Flux CRDs ({', '.join(FLUX_CRDS)}) through the Go module proxy")
    for (module, name), path in zip(FLUX_CRDS.items(), paths, strict=True):
        answer = subprocess.run(
            [go, "mod", "download", "-json", module],
            cwd=cache_dir(),
            env={**os.environ, "GOFLAGS": "-mod=mod"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        if answer.returncode != 0:
            raise RuntimeError(f"go mod download {module} failed: {answer.stdout}{answer.stderr}")
        source = Path(json.loads(answer.stdout)["Dir"]) / "config" / "crd" / "bases" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
    return paths


def _build(go: str, bin_dir: Path, say: Callable[[str], None]) -> None:
    started = time.monotonic()
    staging = Path(tempfile.mkdtemp(prefix="bin-", dir=cache_dir()))
    env = {**os.environ, "GOFLAGS": "-mod=readonly -buildvcs=false", "CGO_ENABLED": "0"}
    say(
        f"building the test control plane {kubernetes_version()} from source (once; cached in {cache_dir()})"
    )
    for name in BINARIES:
        say(f"  go build {PACKAGES[name]} ...")
        process = subprocess.Popen(
            [go, "build", "-v", "-trimpath", "-o", str(staging / name), PACKAGES[name]],
            cwd=GOMOD,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stderr is not None
        tail: list[str] = []
        for compiled, line in enumerate(process.stderr, start=1):
            tail = [*tail[-20:], line.rstrip()]
            if compiled % 200 == 0:
                say(f"    {compiled} packages, {time.monotonic() - started:.0f} s")
        if process.wait() != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise RuntimeError(f"go build {PACKAGES[name]} failed:\n" + "\n".join(tail))
    shutil.rmtree(bin_dir, ignore_errors=True)
    staging.rename(bin_dir)
    say(f"  built in {time.monotonic() - started:.0f} s")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ControlPlane:
    """etcd + kube-apiserver on loopback; ``kubeconfig_path`` is an admin kubeconfig.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, workdir: Path, bin_dir: Path) -> None:
        self.workdir, self.bin_dir = workdir, bin_dir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[IO[bytes]] = []
        self.port = 0
        self.kubeconfig_path = workdir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            etcd = self._start_etcd()
            self._start_apiserver(etcd)
            self._wait_ready()
            self._start_controller_manager()
            self._start_scheduler()
            self._install_crds()
        except BaseException:
            self.stop()
            raise

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` with the admin token."""
        from kubernetes import config

        return config.new_client_from_config(str(self.kubeconfig_path))

    def audit_events(self) -> list[dict[str, Any]]:
        """Every request the API server has answered so far (its audit log, stage
        ResponseComplete): ``verb``, ``user.username``, ``objectRef`` and ``responseStatus``."""
        events = []
        with contextlib.suppress(FileNotFoundError), open(self.workdir / "audit.log") as log:
            for line in log:
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return events

    def _start_controller_manager(self) -> None:
        pki = self.workdir / "pki"
        controllers = ",".join(["*", *(f"-{name}" for name in CONTROLLERS_OFF)])
        self._spawn(
            "kube-controller-manager",
            [
                "--kubeconfig",
                str(self.kubeconfig_path),
                "--leader-elect=false",
                "--secure-port=0",
                "--controllers",
                controllers,
                "--use-service-account-credentials",  # each controller as its own SA, under RBAC
                "--service-account-private-key-file",
                str(pki / "sa.key"),
                "--root-ca-file",
                str(pki / "ca.crt"),
                "--concurrent-job-syncs",
                "5",
                "--node-monitor-period",
                "1s",
            ],
        )

    def _start_scheduler(self) -> None:
        self._spawn(
            "kube-scheduler",
            [
                "--kubeconfig",
                str(self.kubeconfig_path),
                "--leader-elect=false",
                "--secure-port=0",
            ],
        )

    def _install_crds(self, timeout: float = 60.0) -> None:
        """Create the Flux CRDs from the controllers' own files and wait until they serve."""
        from kubernetes import client

        api = client.ApiextensionsV1Api(self.api_client())
        names = []
        for path in crd_paths():
            for document in yaml.safe_load_all(path.read_text()):
                if document:
                    api.create_custom_resource_definition(document)
                    names.append(document["metadata"]["name"])
        deadline = time.monotonic() + timeout
        for name in names:
            while True:
                crd = api.read_custom_resource_definition(name)
                conditions = {c.type: c.status for c in (crd.status.conditions or [])}
                if conditions.get("Established") == "True":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"CRD {name} not established after {timeout:.0f} s")
                time.sleep(0.1)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        process = subprocess.Popen(
            [str(self.bin_dir / name), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def _start_etcd(self) -> str:
        client, peer = _free_port(), _free_port()
        url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            [
                "--data-dir",
                str(self.workdir / "etcd"),
                "--name",
                "test",
                "--listen-client-urls",
                url,
                "--advertise-client-urls",
                url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-cluster",
                f"test=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",  # a throwaway store: tests need no durability, only speed
            ],
        )
        return url

    def _start_apiserver(self, etcd: str) -> None:
        import trustme
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        ca.cert_pem.write_to_path(str(pki / "ca.crt"))
        cert.private_key_and_cert_chain_pem.write_to_path(str(pki / "server.pem"))
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (pki / "sa.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        token = base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
        (pki / "tokens.csv").write_text(f"{token},{ADMIN_TOKEN_USER},1,system:masters\n")
        self.port = _free_port()
        self._spawn(
            "kube-apiserver",
            [
                "--etcd-servers",
                etcd,
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
                "--endpoint-reconciler-type",
                "none",  # a loopback advertise address is refused otherwise
                "--secure-port",
                str(self.port),
                "--tls-cert-file",
                str(pki / "server.pem"),
                "--tls-private-key-file",
                str(pki / "server.pem"),
                "--token-auth-file",
                str(pki / "tokens.csv"),
                "--authorization-mode",
                "Node,RBAC",
                "--service-account-issuer",
                "https://kubernetes.default.svc",
                "--service-account-key-file",
                str(pki / "sa.key"),
                "--service-account-signing-key-file",
                str(pki / "sa.key"),
                "--service-cluster-ip-range",
                "10.96.0.0/16",
                "--audit-policy-file",
                str(self._audit_policy()),
                "--audit-log-path",
                str(self.workdir / "audit.log"),
                "--audit-log-format",
                "json",
                "--audit-log-mode",
                "blocking",
            ],
        )
        self._write_kubeconfig(pki / "ca.crt", token)

    def _audit_policy(self) -> Path:
        """Record every request once, with its metadata (who, verb, what), never a body."""
        path = self.workdir / "audit-policy.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "audit.k8s.io/v1",
                    "kind": "Policy",
                    "omitStages": ["RequestReceived", "ResponseStarted", "Panic"],
                    "rules": [{"level": "Metadata"}],
                }
            )
        )
        return path

    def _write_kubeconfig(self, ca: Path, token: str) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "test",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode(),
                    },
                }
            ],
            "users": [{"name": "admin", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
        }
        self.kubeconfig_path.write_text(yaml.safe_dump(config))
        self.token = token
        self.ca_path = ca

    def _wait_ready(self, timeout: float = 120.0) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_path))
        request = urllib.request.Request(
            f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.token}"}
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in zip(("etcd", "kube-apiserver"), self.processes, strict=False):
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited: see {self.workdir}/{name}.log")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(request, context=context, timeout=5) as answer,
            ):
                if answer.read().strip() == b"ok":
                    return
            time.sleep(0.2)
        raise RuntimeError(f"kube-apiserver not ready after {timeout:.0f} s: see {self.workdir}")

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()
        for log in self.logs:
            log.close()
        self.logs.clear()


def say_to_terminal(text: str) -> None:
    """Progress for a build that runs inside pytest's output capture: straight to the terminal."""
    stream = sys.__stderr__
    if stream is not None:
        stream.write(text + "\n")
        stream.flush()
