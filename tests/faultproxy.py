"""A loopback TCP proxy for fault tests: it sits between a client and a real server and can
cut, stall, throttle or answer in the server's place, switched by the test while traffic flows.

    with FaultProxy("127.0.0.1", seaweedfs.s3_port) as proxy:
        endpoint = proxy.url              # point the plan / agent / client here
        proxy.slow_down(3)                # the next 3 requests get "503 SlowDown"
        proxy.cut_after(100_000)          # the first connection to pass 100 kB of response dies
        proxy.stall()                     # accept, read, never answer; proxy.resume() undoes
        proxy.trickle(1, 0.2)             # responses go out 1 byte every 0.2 s

Only what a fault needs is parsed: a request is recognised by its head (``METHOD path HTTP/1.1``
and its ``Content-Length``) so that ``slow_down`` can answer it and swallow its body.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><Resource>/</Resource>"
    b"<RequestId>faultproxy</RequestId></Error>"
)


class FaultProxy:
    """A threaded proxy from a free loopback port to ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # the accept loop sees close() within this
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._slow_downs = 0
        self._slow_down_method = b""
        self._slow_down_path = b""
        self._cut_after: int | None = None  # response bytes, on the next connection
        self._cut_request_after: int | None = None  # request bytes, on the next connection
        self._stalled = threading.Event()
        self._trickle: tuple[int, float] | None = None
        self._throttle: float | None = None  # bytes per second, both directions
        self._closing = threading.Event()
        self._sockets: set[socket.socket] = set()
        self.connections = 0  # accepted; final after close(), which takes the queued ones too
        self.requests = 0  # request heads seen (pipelined ones included)
        self.answered_slow_down = 0
        self.cuts = 0
        self.bytes_up = 0  # request bytes forwarded to the server, all connections
        self._thread = threading.Thread(target=self._accept, daemon=True)

    # --- switches -------------------------------------------------------------------------
    def slow_down(self, count: int, method: str | None = None, path: str = "") -> None:
        """Answer the next ``count`` requests (of ``method`` only, if given, and only those
        whose target starts with ``path``, if given) with ``503 SlowDown`` (an S3 XML error).
        Not for pipelined requests after the first: the answer could overtake the server's
        answer to an earlier request on the same connection."""
        with self._lock:
            self._slow_downs = count
            self._slow_down_method = method.encode() + b" " if method else b""
            self._slow_down_path = path.encode()

    def cut_after(self, count: int) -> None:
        """Close the connection whose response bytes first pass ``count`` (once)."""
        with self._lock:
            self._cut_after = count

    def cut_request_after(self, count: int) -> None:
        """Close the connection whose request bytes first pass ``count`` (once)."""
        with self._lock:
            self._cut_request_after = count

    def stall(self) -> None:
        """Stop forwarding in both directions (connections stay open, nothing moves)."""
        self._stalled.set()

    def trickle(self, size: int, every: float) -> None:
        """Send responses on ``size`` bytes at a time, one chunk every ``every`` seconds."""
        self._trickle = (size, every)

    def throttle(self, rate: float) -> None:
        """Forward at most ``rate`` bytes per second per direction and connection."""
        self._throttle = rate

    def resume(self) -> None:
        """Back to plain forwarding (pending cuts and SlowDowns are cancelled too)."""
        with self._lock:
            self._slow_downs = 0
            self._cut_after = self._cut_request_after = None
        self._trickle = self._throttle = None
        self._stalled.clear()

    def drop_all(self) -> None:
        """Reset every open connection now."""
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                sock.close()

    # --- machinery ------------------------------------------------------------------------
    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop: every connection a client made by now is counted in :attr:`connections` (the
        ones the kernel still queues are taken and closed), whatever the machine's load."""
        self._closing.set()
        self._stalled.clear()
        if self._thread.is_alive():
            self._thread.join()
        with contextlib.suppress(OSError):
            self._listener.setblocking(False)
            while True:
                self._listener.accept()[0].close()
                self.connections += 1
        with contextlib.suppress(OSError):
            self._listener.close()
        self.drop_all()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _track(self, *sockets: socket.socket) -> None:
        with self._lock:
            self._sockets.update(sockets)

    def _cut_now(self, request: bool, sent: int, count: int) -> int | None:
        """Bytes still to pass before the armed cut, if ``count`` more bytes after ``sent``
        reach it on this connection (the cut is then used up); else None."""
        with self._lock:
            armed = self._cut_request_after if request else self._cut_after
            if armed is None or sent + count < armed:
                return None
            if request:
                self._cut_request_after = None
            else:
                self._cut_after = None
        self.cuts += 1
        return max(armed - sent, 0)

    def _serve(self, client: socket.socket) -> None:
        self._track(client)
        upstream: socket.socket | None = None
        try:
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        self._track(upstream)
        done = threading.Event()
        threading.Thread(
            target=self._pump_requests, args=(client, upstream, done), daemon=True
        ).start()
        self._pump(upstream, client, done)

    def _finish(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
            with self._lock:
                self._sockets.discard(sock)

    def _wait_unstalled(self, done: threading.Event) -> bool:
        while self._stalled.is_set():
            if self._closing.is_set() or done.is_set():
                return False
            time.sleep(0.05)
        return not done.is_set()

    def _pump_requests(
        self,
        client: socket.socket,
        upstream: socket.socket,
        done: threading.Event,
    ) -> None:
        """Forward requests, answering SlowDown in the server's place when switched on."""
        buffer = bytearray()
        swallow = 0  # bytes of a SlowDown-answered request body still to come (dropped)
        forward = 0  # bytes of a forwarded request body still to come
        sent = 0
        try:
            while not done.is_set():
                chunk = client.recv(65536)
                if not chunk:
                    break
                if not self._wait_unstalled(done):
                    break
                buffer += chunk
                out = bytearray()
                while buffer:
                    if swallow or forward:
                        take = min(swallow or forward, len(buffer))
                        if forward:
                            out += buffer[:take]
                            forward -= take
                        else:
                            swallow -= take
                        del buffer[:take]
                        continue
                    end = buffer.find(b"\r\n\r\n")
                    if end < 0:
                        break  # wait for the rest of the head
                    head = bytes(buffer[: end + 4])
                    del buffer[: end + 4]
                    self.requests += 1
                    with self._lock:
                        answer = (
                            self._slow_downs > 0
                            and head.startswith(self._slow_down_method)
                            and head.partition(b" ")[2].startswith(self._slow_down_path)
                        )
                        if answer:
                            self._slow_downs -= 1
                    if answer:
                        self.answered_slow_down += 1
                        swallow = _content_length(head)
                        client.sendall(
                            b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                            + f"Content-Length: {len(SLOW_DOWN)}\r\n\r\n".encode()
                            + SLOW_DOWN
                        )
                    else:
                        out += head
                        forward = _content_length(head)
                if out:
                    left = self._cut_now(True, sent, len(out))
                    if left is not None:
                        upstream.sendall(out[:left])
                        break
                    self._send(upstream, bytes(out))
                    sent += len(out)
                    self.bytes_up += len(out)
        except OSError:
            pass
        finally:
            done.set()
            self._finish(client, upstream)

    def _send(self, sock: socket.socket, data: bytes) -> None:
        rate = self._throttle
        if rate is None:
            sock.sendall(data)
            return
        step = max(int(rate / 20), 1)
        for start in range(0, len(data), step):
            sock.sendall(data[start : start + step])
            time.sleep(step / rate)
            rate = self._throttle or rate * 1000

    def _pump(
        self,
        source: socket.socket,
        sink: socket.socket,
        done: threading.Event,
    ) -> None:
        sent = 0
        try:
            while not done.is_set():
                chunk = source.recv(65536)
                if not chunk:
                    break
                if not self._wait_unstalled(done):
                    break
                left = self._cut_now(False, sent, len(chunk))
                if left is not None:
                    sink.sendall(chunk[:left])
                    break
                trickle = self._trickle
                if trickle is not None:
                    size, every = trickle
                    for start in range(0, len(chunk), size):
                        if done.is_set():
                            return
                        sink.sendall(chunk[start : start + size])
                        time.sleep(every)
                else:
                    self._send(sink, chunk)
                sent += len(chunk)
        except OSError:
            pass
        finally:
            done.set()
            self._finish(source, sink)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip() or 0)
    return 0
