"""The copy agent's own S3 uploads: one PUT per file over keep-alive sockets, bodies by sendfile.

On 2 cores SeaweedFS's CPU is the ceiling of a copy, so the client's CPU per object is lost
throughput. rclone spends about 0.8 ms of CPU per small object and about 4.5 CPU s per GiB of
large ones; this uploader signs once per request with a cached key, reads a small file with one
``read`` and sends head and body in one ``send``, and hands large bodies to the kernel with
``sendfile`` (no copy through Python, no MD5 or SHA-256 of the body: ``migrator verify`` proves
the bytes afterwards).

What it writes is what ``rclone copy --metadata --links`` writes, so either tool can continue
the other's copy and ``rclone check`` compares them: the object key is the relative path under
the destination prefix, a symlink is ``NAME.rclonelink`` holding its target, and the metadata is
``x-amz-meta-mtime`` (seconds with nanoseconds), ``-mode`` (octal), ``-uid`` and ``-gid``.

It is used only where it is exactly equivalent: a destination remote configured by
``RCLONE_CONFIG_<REMOTE>_*`` variables as a plain S3 endpoint with keys, rclone flags it knows, and
file names that are valid UTF-8. Everything else (and files above :data:`migrator.uploadtarget.NATIVE_MAX_BYTES`, which
rclone uploads in parallel multipart) goes through rclone as before.
"""

from __future__ import annotations

import errno
import os
import queue
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from migrator.objectstore import REFUSED_HINT
from migrator.s3wire import Answer, Body, Client, SourceChanged, WireError
from migrator.uploadtarget import Destination

Signature = tuple[int, int]  # (size, mtime_ns), as in migrator.copier
OCTET_STREAM = "application/octet-stream"
LINK_SUFFIX = ".rclonelink"
# Bodies up to this size are read into memory and sent with their head in one send.
INLINE_MAX_BYTES = 2**20
# Attempts per file; the waits between them (0.25 s doubling to 8 s, about 30 s in all) ride
# out a restart of the S3 gateway, as rclone's low-level retries do.
ATTEMPTS = 8
# A file whose request timed out this many times while no other file was stored stops the copy:
# the endpoint hangs, and every file would wait out all its attempts the same way.
TIMEOUTS_TO_GIVE_UP = 2
# S3 answers that no retry can fix and that would fail every other file the same way.
FATAL_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "NoSuchBucket",
        "QuotaExceeded",
        "AllAccessDisabled",
        "AccountProblem",
    }
)


@dataclass
class Failure:
    path: str
    message: str
    fatal: bool = False
    problem: str = ""  # the last answer of a file that failed every attempt
    started: float = 0.0  # time.monotonic() of its first attempt


@dataclass
class UploadReport:
    uploaded: int = 0
    vanished: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    last_stored: float = 0.0  # time.monotonic() of the latest stored file
    gave_up: str = ""  # why the copy stopped early: every write failed


class Stop(Exception):
    """Raised inside a worker to abandon a body mid-send once a stop was asked for."""


def extension(relpath: str) -> str:
    """The extension as Go's ``path.Ext`` sees it ("" when the name has no dot)."""
    name = relpath.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return name[dot:] if dot >= 0 else ""


def metadata_headers(st: os.stat_result) -> dict[str, str]:
    """What ``rclone --metadata`` stores for a local file (atime/btime left out: not kept)."""
    seconds, nanos = divmod(st.st_mtime_ns, 1_000_000_000)
    fraction = f"{nanos:09d}".rstrip("0")  # as rclone writes it: 1600000000.5, 1600000000
    return {
        "x-amz-meta-gid": str(st.st_gid),
        "x-amz-meta-mode": f"{st.st_mode:o}",
        "x-amz-meta-mtime": f"{seconds}.{fraction}" if fraction else str(seconds),
        "x-amz-meta-uid": str(st.st_uid),
    }


class Uploader:
    """Uploads files of ``root`` to ``destination`` with ``threads`` connections."""

    def __init__(
        self,
        destination: Destination,
        root: str,
        threads: int = 8,
        content_types: Mapping[str, str] | None = None,
        client: Client | None = None,
    ) -> None:
        """``content_types`` maps an :func:`extension` to the Content-Type rclone would send
        (see ``migrator.rclone.rclone_content_types``); others are application/octet-stream.
        ``client`` is for benchmarks (bench/fetchers.py puts other S3 clients behind the same
        ``put``/``reset``); the default is migrator.s3wire's."""
        self.destination = destination
        self.content_types = content_types or {}
        self.root = root
        self.threads = max(1, threads)
        # A timed-out request is not retried at once: _upload retries the file after a wait, and
        # gives up early when the endpoint hangs.
        self.client = client or Client(
            destination.endpoint, destination.timeout, retry_timeouts=False
        )
        self.stop = threading.Event()
        self._sent = [0] * self.threads  # body bytes sent per worker (progress)
        self._last_stored = 0.0  # time.monotonic() when a worker last stored a file

    @property
    def bytes_sent(self) -> int:
        return sum(self._sent)

    def run(
        self,
        todo: list[str],
        on_copied: Callable[[str, Signature], None],
        on_tick: Callable[[UploadReport], None],
        sizes: Mapping[str, Signature],
    ) -> UploadReport:
        """Upload ``todo`` (largest first, so no big file is left for the end alone).

        ``on_copied`` runs in this thread for every stored file with the signature its content
        had; ``on_tick`` about once a second. A signal raised in this thread (Ctrl-C, SIGTERM)
        stops the workers after their current request and propagates once they are joined.
        """
        work = deque(sorted(todo, key=lambda path: sizes[path][0], reverse=True))
        results: queue.SimpleQueue[tuple[str, str, Any]] = queue.SimpleQueue()
        workers = [
            threading.Thread(target=self._work, args=(index, work, results), daemon=True)
            for index in range(min(self.threads, len(work)))
        ]
        report = UploadReport()
        for worker in workers:
            worker.start()
        try:
            last_tick = time.monotonic()
            running = len(workers)
            while running:
                try:
                    kind, path, value = results.get(timeout=0.5)
                except queue.Empty:
                    kind, path, value = "", "", None
                if kind == "done":
                    running -= 1
                elif kind:
                    self._record(report, kind, path, value, on_copied)
                if time.monotonic() - last_tick >= 1.0:
                    last_tick = time.monotonic()
                    on_tick(report)
        except BaseException:
            self.stop.set()
            for worker in workers:
                worker.join(timeout=30)
            while not results.empty():  # files stored before the stop still count
                kind, path, value = results.get_nowait()
                if kind != "done":
                    self._record(report, kind, path, value, on_copied)
            raise
        on_tick(report)
        return report

    def _record(
        self,
        report: UploadReport,
        kind: str,
        path: str,
        value: Any,
        on_copied: Callable[[str, Signature], None],
    ) -> None:
        if kind == "ok":
            report.uploaded += 1
            report.last_stored = time.monotonic()
            on_copied(path, value)
        elif kind == "gone":
            report.vanished.append(path)
        elif kind == "error":
            report.failures.append(value)
            if value.fatal:
                self.stop.set()
            elif value.problem and report.last_stored < value.started:
                # This file took all its retries (about 30 s) and no other file was stored
                # meanwhile: the endpoint is down, full or read-only, and the rest would fail
                # the same way.
                report.gave_up = self._refusal(value)
                self.stop.set()

    def _work(
        self, index: int, work: deque[str], results: queue.SimpleQueue[tuple[str, str, Any]]
    ) -> None:
        try:
            while not self.stop.is_set():
                try:
                    path = work.popleft()
                except IndexError:
                    break
                try:
                    signature = self._upload(index, path)
                except Stop:
                    break
                except _Failed as failed:
                    results.put(("error", path, failed.failure))
                    continue
                except Exception as exc:  # reported per file, never lost
                    results.put(("error", path, Failure(path, f"{type(exc).__name__}: {exc}")))
                    continue
                results.put(("gone", path, None) if signature is None else ("ok", path, signature))
        finally:
            self.client.reset()
            results.put(("done", "", None))

    def _upload(self, index: int, path: str) -> Signature | None:
        """Store one file; its signature, or None when it vanished from the source."""
        key = self.destination.key(path)
        problem = ""
        started = time.monotonic()
        timeouts = 0
        for attempt in range(ATTEMPTS):
            if attempt:
                self.stop.wait(min(8.0, 0.125 * 2**attempt))
            if self.stop.is_set():
                raise Stop
            try:
                opened = self._open(index, path)
            except FileNotFoundError:
                return None
            if opened is None:
                problem = "the source file kept changing while it was read"
                continue
            body, st, fd = opened
            try:
                answer = self.client.put(
                    self.destination.bucket,
                    key,
                    body,
                    {
                        "Content-Type": self.content_types.get(extension(path), OCTET_STREAM),
                        **metadata_headers(st),
                    },
                )
                if fd is not None and _signature(os.fstat(fd)) != _signature(st):
                    problem = "the source file kept changing while it was sent"
                    continue  # the stored copy is suspect: send it again
            except SourceChanged:
                problem = "the source file kept changing while it was sent"
                continue
            except WireError as exc:
                if getattr(exc, "fatal", False):  # an untrusted certificate
                    raise _Failed(Failure(path, str(exc), fatal=True)) from None
                problem = str(exc)  # the endpoint is unreachable: wait and try again
                timeouts += "timed out" in problem
                if timeouts >= TIMEOUTS_TO_GIVE_UP and self._last_stored < started:
                    break  # it hangs: the run stops (see _handle) instead of waiting it out
                continue
            finally:
                if fd is not None:
                    os.close(fd)
            if 200 <= answer.status < 300:
                self._sent[index] += 0 if fd is not None else body.length
                self._last_stored = time.monotonic()
                return _signature(st)
            if answer.status >= 500 or answer.code in ("SlowDown", "RequestTimeout"):
                problem = f"HTTP {answer.status} {answer.code}".rstrip()
                continue
            raise _Failed(self._failure(path, key, answer))
        where = f"s3://{self.destination.bucket}/{key}"
        message = f"storing {where} failed {attempt + 1} times: {problem}"
        raise _Failed(Failure(path, message, problem=problem, started=started))

    def _refusal(self, failure: Failure) -> str:
        """One line saying that every write failed, and what that usually means."""
        where = f"{self.destination.endpoint.host} (bucket {self.destination.bucket!r})"
        waited = time.monotonic() - failure.started
        line = f"every write to S3 at {where} failed for {waited:.0f} s: {failure.problem}"
        if failure.problem.startswith("HTTP 500"):
            line += f" ({REFUSED_HINT})"
        return line

    def _open(self, index: int, path: str) -> tuple[Body, os.stat_result, int | None] | None:
        """The body to send and the stat it was read under; None if it changed meanwhile.

        Small files are read whole (and checked unchanged after the read); larger ones are
        sent from the open file and checked after the send. The file descriptor returned, if
        any, is the caller's to close.
        """
        if path.endswith(LINK_SUFFIX):
            link = os.path.join(self.root, path[: -len(LINK_SUFFIX)])
            try:
                st = os.lstat(link)
                if stat.S_ISLNK(st.st_mode):
                    target = os.fsencode(os.readlink(link))
                    return (Body(target), st, None) if len(target) == st.st_size else None
            except FileNotFoundError:
                pass  # perhaps a regular file really named *.rclonelink
        try:
            fd = os.open(os.path.join(self.root, path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return None  # became a symlink since the walk; the next walk sees it as one
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _Failed(Failure(path, f"{path}: no longer a regular file"))
            if st.st_size <= INLINE_MAX_BYTES:
                data = _read_all(fd, st.st_size)
                if len(data) != st.st_size or _signature(os.fstat(fd)) != _signature(st):
                    return None
                return Body(data), st, None
        except BaseException:
            os.close(fd)
            raise
        sent = self._sent

        def on_sent(count: int) -> None:
            if self.stop.is_set():
                raise Stop
            sent[index] += count

        return Body(fd=fd, length=st.st_size, on_sent=on_sent), st, fd

    def _failure(self, path: str, key: str, answer: Answer) -> Failure:
        code = answer.code or f"HTTP {answer.status}"
        where = f"s3://{self.destination.bucket}/{key}"
        if code == "NoSuchBucket":
            message = f"bucket {self.destination.bucket!r} does not exist on {self.destination.endpoint.host}"
        elif code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):  # the same for every file
            message = (
                f"S3 at {self.destination.endpoint.host} rejected the credentials ({code}): "
                "check the access key and secret key"
            )
        elif answer.status == 403:
            message = (
                f"S3 refused to store {where} ({code}): check the credentials and their permissions"
            )
        else:
            message = f"storing {where} failed: HTTP {answer.status} {code}".rstrip()
        return Failure(path, message, fatal=code in FATAL_CODES or answer.status == 403)


class _Failed(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def _signature(st: os.stat_result) -> Signature:
    return (st.st_size, st.st_mtime_ns)


def _read_all(fd: int, size: int) -> bytes:
    """Up to ``size + 1`` bytes (one more tells that the file grew)."""
    data = os.read(fd, size + 1)
    if len(data) == size + 1 or len(data) == size:
        return data
    chunks = [data]
    total = len(data)
    while total <= size:
        chunk = os.read(fd, size + 1 - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)
