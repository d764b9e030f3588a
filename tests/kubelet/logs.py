"""Container logs as the API server's ``pods/log`` proxy asks a kubelet for them:
``GET https://<node>:<port>/containerLogs/<namespace>/<pod>/<container>`` with ``follow``,
``tailLines``, ``limitBytes`` and ``timestamps``.

Not served: ``previous`` (a restarted container's earlier log; answered with 400, as a kubelet
does when there is none) and ``sinceSeconds``/``sinceTime`` (the whole log is sent).
"""

from __future__ import annotations

import threading
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FOLLOW_POLL_SECONDS = 0.5  # followers also wake on every append


@dataclass
class _Log:
    lines: list[tuple[str, str]] = field(default_factory=list)  # (RFC 3339 stamp, text)
    done: bool = False


class LogStore:
    """Per-container log text, appended by running pods, read by the log server."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self._logs: dict[tuple[str, str, str], _Log] = {}

    def append(self, namespace: str, pod: str, container: str, text: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        with self.condition:
            log = self._logs.setdefault((namespace, pod, container), _Log())
            log.lines.append((stamp, text))
            self.condition.notify_all()

    def reset(self, namespace: str, pod: str) -> None:
        """A new pod of that name starts: forget the old one's logs."""
        with self.condition:
            for key in [k for k in self._logs if k[:2] == (namespace, pod)]:
                del self._logs[key]
            self.condition.notify_all()

    def finish(self, namespace: str, pod: str) -> None:
        """The pod's containers are gone: followers get the rest and the end of the stream."""
        with self.condition:
            for key, log in self._logs.items():
                if key[:2] == (namespace, pod):
                    log.done = True
            self.condition.notify_all()

    def read(self, key: tuple[str, str, str], start: int) -> tuple[list[tuple[str, str]], bool]:
        """Lines from index ``start`` on, and whether the log is complete."""
        with self.condition:
            log = self._logs.get(key)
            if log is None:
                return [], False
            return log.lines[start:], log.done

    def wait(self, timeout: float) -> None:
        with self.condition:
            self.condition.wait(timeout)


class LogServer:
    """HTTPS on 127.0.0.1 (a throwaway certificate: the API server does not verify kubelets it
    has no ``--kubelet-certificate-authority`` for) serving a :class:`LogStore`."""

    def __init__(self, logs: LogStore) -> None:
        self.logs = logs
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.stopping = threading.Event()

    def start(self) -> None:
        import ssl
        import tempfile

        import trustme

        store, stopping = self.logs, self.stopping

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the stream ends when the connection closes

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                parts = url.path.strip("/").split("/")
                query = dict(urllib.parse.parse_qsl(url.query))
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self.send_error(404)
                    return
                if query.get("previous") in ("true", "1"):
                    self.send_error(400, "previous terminated container not found")
                    return
                key = (parts[1], parts[2], parts[3])
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                follow = query.get("follow") in ("true", "1")
                stamps = query.get("timestamps") in ("true", "1")
                limit = int(query["limitBytes"]) if "limitBytes" in query else None
                lines, done = store.read(key, 0)
                start = len(lines)
                if "tailLines" in query:
                    tail = int(query["tailLines"])
                    lines = lines[len(lines) - tail :] if tail > 0 else []
                sent = 0
                try:
                    while True:
                        for stamp, text in lines:
                            data = ((stamp + " " if stamps else "") + text).encode()
                            if limit is not None:
                                data = data[: max(0, limit - sent)]
                            self.wfile.write(data)
                            sent += len(data)
                        self.wfile.flush()
                        if (
                            not follow
                            or done
                            or stopping.is_set()
                            or (limit is not None and sent >= limit)
                        ):
                            return
                        store.wait(FOLLOW_POLL_SECONDS)
                        lines, done = store.read(key, start)
                        start += len(lines)
                except (BrokenPipeError, ConnectionResetError):
                    return

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        with tempfile.TemporaryDirectory() as scratch:
            pem = Path(scratch) / "kubelet.pem"
            cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(pem))
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server, self.port = server, server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, name="kubelet-logs", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
