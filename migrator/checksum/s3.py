"""Hash every object under an S3 prefix, streaming GET bodies into the hasher (no temp files).

The listing (ListObjectsV2) gives keys, sizes, ETags and LastModified; it is sorted here
by relative path bytes, because SeaweedFS lists a directory's children before its siblings
(``a/b`` before ``a-c``). Objects are then fetched by worker processes, each running threads
with keep-alive connections (:mod:`migrator.s3wire`): small objects in batches, a few
GETs pipelined per connection; big ones streamed whole, a few side by side; very large ones
(over 1 GiB) as parallel ranged GETs hashed in order. The listing is held in memory to be sorted
(about 200 bytes per object). mtime, mode, uid and gid come from the rclone metadata headers of
the GET responses (``x-amz-meta-mtime`` seconds, ``-mode`` octal, ``-uid``, ``-gid``).

Objects named ``*.rclonelink`` (what ``rclone --links`` stores for a symlink: the target as the
body) become symlink entries, so they compare with the local tree; a key ending in ``/`` with no
body is a directory marker, kept as an empty-directory entry when nothing lies below it.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import os
import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import xxhash

from migrator.checksum.cache import CacheReader, CacheWriter
from migrator.checksum.entry import (
    DIRECTORY,
    FILE,
    SYMLINK,
    Entry,
    escape_path,
    in_sample,
    sample_threshold,
)
from migrator.checksum.errors import ChecksumError
from migrator.checksum.local import pool_context
from migrator.checksum.pipeline import HashStats, Progress, ProgressBatcher, Ready, run_in_order
from migrator.objectstore import S3Settings
from migrator.rclone_names import local_path_of_key
from migrator.s3wire import Client, Endpoint, ProtocolError, Response, list_objects

LINK_SUFFIX = ".rclonelink"
PART_SIZE = 8 << 20  # one ranged GET of a big object
RANGES_IN_FLIGHT = 8  # per worker process; measured: 4 in flight left SeaweedFS idle at times
# Objects above this are fetched as parallel ranges; smaller ones with one streamed GET each,
# several objects at a time. Measured on 2 cores against SeaweedFS (2 GiB of 32-256 MiB files):
# whole-object GETs, 4 at a time, took 1.42 s (median) where 8 MiB ranges took 1.78 s, for the
# same server CPU: the server streams one object more cheaply than it serves its ranges. Ranges
# remain for very large objects, so one huge file is still read in parallel.
RANGED_ABOVE = 1 << 30
BATCH_OBJECTS = 64
PIPELINE_DEPTH = 4  # GETs in flight on one connection
BATCH_BYTES = 32 << 20
STREAM_BUFFER = 1 << 20
STREAMS_PER_BATCH = 4  # big objects streamed side by side by one worker's threads


@dataclass(frozen=True)
class Transport:
    """How the engine reaches S3: :mod:`migrator.s3wire`, always, in the product.

    A seam for measurement only: ``bench/fetchers.py`` subclasses it to run the same engine over
    obstore or boto3 end to end. Frozen and field-less, so copies pickled into the worker
    processes compare equal (one client per worker process, not one per batch).
    """

    def client(self, endpoint: Endpoint) -> Client:
        """A client raising ChecksumError, shared by a worker's threads."""
        return Client(endpoint, error=ChecksumError)

    def list_objects(
        self, client: Client, bucket: str, prefix: str
    ) -> Iterator[tuple[str, int, str, str]]:
        """(key, size, ETag, LastModified) of every object under ``prefix``."""
        return list_objects(client, bucket, prefix)


S3WIRE = Transport()

# One listed object: relative path, key, size, ETag, LastModified, entry type.
Listed = tuple[bytes, str, int, str, str, str]
# What a worker sends back: bytes read, mtime_ns, mode, uid, gid, digest.
_Fetched = tuple[int, int | None, int | None, int | None, int | None, str]


def list_prefix(
    settings: S3Settings, bucket: str, prefix: str, transport: Transport = S3WIRE
) -> Iterator[Listed]:
    """Every object under ``prefix`` (a key prefix without trailing ``/``), unsorted.

    Raises ChecksumError when the listing fails.
    """
    base = prefix.strip("/")
    start = f"{base}/" if base else ""
    client = transport.client(Endpoint.from_settings(settings))
    try:
        for key, size, etag, modified in transport.list_objects(client, bucket, start):
            relative = key[len(start) :]
            if not relative:
                continue
            kind = FILE
            if relative.endswith("/"):
                if size:
                    continue  # not a directory marker: no file can be named like that
                kind = DIRECTORY
            elif relative.endswith(LINK_SUFFIX):
                relative = relative[: -len(LINK_SUFFIX)]
                kind = SYMLINK
            yield (local_path_of_key(relative), key, size, etag, modified, kind)
    finally:
        client.reset()


def sorted_listing(listed: Iterator[Listed]) -> list[Listed]:
    """The listing sorted by relative path bytes, with directory markers that have anything
    below them dropped (only empty directories are entries). Raises ChecksumError when two
    keys map to one path (``x`` and ``x.rclonelink``)."""
    items = sorted(listed, key=lambda item: item[0])
    kept: list[Listed] = []
    for index, item in enumerate(items):
        if kept and kept[-1][0] == item[0]:
            pair = {kept[-1][5], item[5]}
            if pair == {FILE, SYMLINK} and (kept[-1] if kept[-1][5] == FILE else item)[2] == 0:
                # NAME.rclonelink and the empty object that a symlink entry NAME beside it
                # lists as (migrator.filer: what a weed mount shows): one symlink
                kept[-1] = kept[-1] if kept[-1][5] == SYMLINK else item
                continue
            raise ChecksumError(
                f"keys {kept[-1][1]!r} and {item[1]!r} both stand for {escape_path(item[0])!r}"
            )
        if item[5] == DIRECTORY:
            following = items[index + 1][0] if index + 1 < len(items) else b""
            if following.startswith(item[0]):
                continue
        kept.append(item)
    return kept


# --- worker side ------------------------------------------------------------------------------


def _parse_mtime(value: str | None) -> int | None:
    """rclone's ``x-amz-meta-mtime`` (decimal seconds) as nanoseconds; RFC 3339 also accepted."""
    if not value:
        return None
    try:
        seconds, _, fraction = value.strip().partition(".")
        if seconds.lstrip("-").isdigit() and (not fraction or fraction.isdigit()):
            sign = -1 if seconds.startswith("-") else 1
            nanos = int((fraction + "000000000")[:9])
            return int(seconds) * 1_000_000_000 + sign * nanos
        moment = datetime.datetime.fromisoformat(value.strip())
        return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000
    except ValueError:
        return None


def _parse_int(value: str | None, base: int = 10) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip(), base)
    except ValueError:
        return None


def metadata_of(response: Response) -> tuple[int | None, int | None, int | None, int | None]:
    """(mtime_ns, permission bits, uid, gid) from rclone's metadata headers; None if absent."""
    mode = _parse_int(response.header("x-amz-meta-mode"), 8)
    return (
        _parse_mtime(response.header("x-amz-meta-mtime")),
        None if mode is None else mode & 0o7777,
        _parse_int(response.header("x-amz-meta-uid")),
        _parse_int(response.header("x-amz-meta-gid")),
    )


class _Worker:
    """Per-process state: one GET client and one thread pool, made on first use."""

    def __init__(self, endpoint: Endpoint, threads: int, transport: Transport) -> None:
        self.client = transport.client(endpoint)
        self.pool = ThreadPoolExecutor(max(threads, RANGES_IN_FLIGHT), thread_name_prefix="s3-get")
        self.threads = threads
        self.local = threading.local()
        # One part buffer per thread plus the one being hashed, allocated on first use.
        self.buffers: queue.LifoQueue[bytearray] = queue.LifoQueue()
        for _ in range(RANGES_IN_FLIGHT + 1):
            self.buffers.put(bytearray(PART_SIZE))


_workers: dict[tuple[Endpoint, int, Transport], _Worker] = {}


def _forget_workers() -> None:
    _workers.clear()  # threads and sockets do not survive a fork


os.register_at_fork(after_in_child=_forget_workers)


def _error(bucket: str, key: str, response: Response) -> ChecksumError:
    body = response.read()[:512].decode(errors="replace")
    code = body.split("<Code>", 1)[1].split("</Code>", 1)[0] if "<Code>" in body else ""
    return ChecksumError(f"GET s3://{bucket}/{key}: HTTP {response.status} {code}".strip())


class _Fetcher:
    """A picklable callable that hashes a batch of objects in a worker process."""

    def __init__(
        self, endpoint: Endpoint, bucket: str, threads: int, transport: Transport = S3WIRE
    ) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self.threads = threads
        self.transport = transport

    def _worker(self) -> _Worker:
        key = (self.endpoint, self.threads, self.transport)
        worker = _workers.get(key)
        if worker is None:
            worker = _workers[key] = _Worker(self.endpoint, self.threads, self.transport)
        return worker

    def __call__(self, batch: list[Listed]) -> list[_Fetched | None]:
        worker = self._worker()
        small = [item for item in batch if item[2] <= RANGED_ABOVE]
        # Each thread pipelines a few GETs on its connection: one send for all of them, and
        # the server finds the next request already buffered (fewer syscalls and wake-ups).
        depth = max(1, min(PIPELINE_DEPTH, -(-len(small) // worker.threads)))
        groups = [small[start : start + depth] for start in range(0, len(small), depth)]
        fetched = worker.pool.map(lambda group: self._pipelined(worker, group), groups)
        results = iter([result for group in fetched for result in group])
        return [
            next(results) if item[2] <= RANGED_ABOVE else self._ranged(worker, item)
            for item in batch
        ]

    def _pipelined(self, worker: _Worker, items: list[Listed]) -> list[_Fetched | None]:
        """GET ``items`` pipelined on one connection; after any trouble (a dropped connection,
        a 5xx or SlowDown answer) the rest go one by one, with the client's retries and
        backoff."""
        results: list[_Fetched | None] = []
        if len(items) > 1:
            try:
                for response in worker.client.pipeline(self.bucket, [item[1] for item in items]):
                    if response.status >= 500 or response.status == 429:
                        response.read()
                        worker.client.reset()  # the answers still queued are dropped with it
                        break
                    results.append(self._consume(worker, items[len(results)], response))
            except (OSError, ValueError, ProtocolError):
                worker.client.reset()
        for item in items[len(results) :]:
            results.append(self._whole(worker, item))
        return results

    def _whole(self, worker: _Worker, item: Listed) -> _Fetched | None:
        return self._consume(worker, item, worker.client.get(self.bucket, item[1]))

    def _consume(self, worker: _Worker, item: Listed, response: Response) -> _Fetched | None:
        """Hash the body of a whole-object GET response."""
        key = item[1]
        if response.status == 404:
            response.read()
            return None  # deleted since the listing: it is not there
        if response.status != 200:
            error = _error(self.bucket, key, response)
            worker.client.reset()
            raise error
        try:
            length = response.length or 0
            if length <= STREAM_BUFFER:
                body = response.read()
                size, digest = len(body), xxhash.xxh3_128_hexdigest(body)
            else:
                size, digest = self._stream(worker, response)
        except (OSError, ValueError) as exc:
            worker.client.reset()
            raise ChecksumError(f"GET s3://{self.bucket}/{key}: {exc}") from None
        return (size, *metadata_of(response), digest)

    def _stream(self, worker: _Worker, response: Response) -> tuple[int, str]:
        buffer: bytearray | None = getattr(worker.local, "buffer", None)
        if buffer is None:
            buffer = worker.local.buffer = bytearray(STREAM_BUFFER)
        hasher = xxhash.xxh3_128()
        total = 0
        with memoryview(buffer) as view:
            while count := response.readinto(view):
                hasher.update(view[:count])
                total += count
        return total, hasher.hexdigest()

    def _part(
        self, worker: _Worker, key: str, first: int, last: int
    ) -> tuple[Response, bytearray, int]:
        """GET one range into a buffer from the worker's pool (no allocation per part)."""
        response = worker.client.get(self.bucket, key, (first, last))
        if response.status != 206:
            error = _error(self.bucket, key, response)
            worker.client.reset()
            raise error
        buffer = worker.buffers.get()
        try:
            wanted = last - first + 1
            filled = 0
            with memoryview(buffer) as view:
                while filled < wanted and (count := response.readinto(view[filled:wanted])):
                    filled += count
        except BaseException:
            worker.buffers.put(buffer)
            worker.client.reset()
            raise
        if filled != wanted:
            worker.buffers.put(buffer)
            raise ChecksumError(f"s3://{self.bucket}/{key} changed while it was being read")
        return response, buffer, filled

    def _ranged(self, worker: _Worker, item: Listed) -> _Fetched | None:
        """Fetch a big object as parallel ranged GETs, hashed in order as they arrive."""
        key, size = item[1], item[2]
        ranges = iter(
            [(start, min(start + PART_SIZE, size) - 1) for start in range(0, size, PART_SIZE)]
        )
        hasher = xxhash.xxh3_128()
        pending: deque[Future[tuple[Response, bytearray, int]]] = deque()
        metadata: tuple[int | None, int | None, int | None, int | None] | None = None
        try:
            for first, last in itertools.islice(ranges, RANGES_IN_FLIGHT):
                pending.append(worker.pool.submit(self._part, worker, key, first, last))
            while pending:
                response, buffer, count = pending.popleft().result()
                try:
                    if metadata is None:
                        metadata = metadata_of(response)
                        if not (response.header("content-range") or "").endswith(f"/{size}"):
                            raise ChecksumError(
                                f"s3://{self.bucket}/{key} changed since it was listed"
                            )
                    with memoryview(buffer) as view:
                        hasher.update(view[:count])
                finally:
                    worker.buffers.put(buffer)
                following = next(ranges, None)
                if following is not None:
                    pending.append(worker.pool.submit(self._part, worker, key, *following))
        except ChecksumError as exc:
            if "HTTP 404" in str(exc):
                return None  # deleted since the listing
            raise
        finally:
            for future in pending:
                if not future.cancel():
                    with contextlib.suppress(Exception):
                        worker.buffers.put(future.result()[1])
        assert metadata is not None
        return (size, *metadata, hasher.hexdigest())


# --- the public function ----------------------------------------------------------------------


def s3_cache_identity(endpoint: Endpoint, bucket: str, prefix: str) -> str:
    """What an S3 cache must have been made for: this endpoint, bucket and prefix."""
    return f"s3 {endpoint.scheme}://{endpoint.host} bucket={bucket} prefix={prefix.strip('/')}"


def _cached_entry(item: Listed, stored: list[str] | None) -> Entry | None:
    if stored is None or stored[:3] != [str(item[2]), item[3], item[4]] or len(stored) != 8:
        return None
    digest, mtime, mode, uid, gid = stored[3:]

    def number(text: str, base: int = 10) -> int | None:
        return None if text == "-" else int(text, base)

    return Entry(
        item[0], item[5], item[2], number(mtime), number(mode, 8), number(uid), number(gid), digest
    )


def _cache_fields(item: Listed, entry: Entry) -> list[str]:
    def text(value: int | None, form: str = "d") -> str:
        return "-" if value is None else format(value, form)

    return [
        str(item[2]),
        item[3],
        item[4],
        entry.xxh3 or "-",
        text(entry.mtime_ns),
        text(entry.mode, "o"),
        text(entry.uid),
        text(entry.gid),
    ]


def hash_s3_prefix(
    settings: S3Settings,
    bucket: str,
    prefix: str = "",
    *,
    workers: int | None = None,
    threads: int = 4,
    sample: float | None = None,
    cache: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    stats: HashStats | None = None,
    transport: Transport = S3WIRE,
) -> Iterator[Entry]:
    """Hash every object under ``s3://bucket/prefix``; yield entries sorted by relative path.

    ``workers`` processes (default: CPU count) each run ``threads`` keep-alive connections.
    ``sample`` and ``progress`` work as in :func:`~migrator.checksum.local.hash_tree`.
    ``cache`` names a cache file: an object whose (key, size, ETag, LastModified) match is not
    downloaded again. ``transport`` is for benchmarks (see :class:`Transport`). Raises ChecksumError (or StorageError for the listing) on S3 failures.
    """
    endpoint = Endpoint.from_settings(settings)
    stats = stats if stats is not None else HashStats()
    threshold = sample_threshold(sample) if sample is not None and sample < 1.0 else None
    identity = s3_cache_identity(endpoint, bucket, prefix)
    cache_path = Path(cache) if cache is not None else None
    reader = CacheReader(cache_path, identity) if cache_path is not None else None
    writer = CacheWriter(cache_path if threshold is None else None, identity)
    workers = workers or os.cpu_count() or 1
    listing = sorted_listing(list_prefix(settings, bucket, prefix, transport))

    def stream() -> Iterator[Ready[tuple[Entry, Listed, bool]] | Listed]:
        for item in listing:
            if threshold is not None and not in_sample(item[0], threshold):
                continue
            if item[5] == DIRECTORY:
                yield Ready(
                    (Entry(item[0], DIRECTORY, 0, None, None, None, None, None), item, True)
                )
                continue
            hit = _cached_entry(item, reader.lookup(item[0])) if reader is not None else None
            yield Ready((hit, item, True)) if hit is not None else item

    def finish(item: Listed, fetched: _Fetched | None) -> tuple[Entry, Listed, bool] | None:
        if fetched is None:
            return None
        return Entry(item[0], item[5], *fetched), item, False

    def make_pool() -> Executor:
        return ProcessPoolExecutor(max_workers=workers, mp_context=pool_context())

    results = run_in_order(
        stream(),
        _Fetcher(endpoint, bucket, threads, transport),
        finish,
        make_executor=make_pool if workers > 1 else None,
        batch_size=BATCH_OBJECTS,
        batch_weight=_batch_weight,
        max_weight=BATCH_BYTES,
        window=4 * workers,
    )
    reporter = ProgressBatcher(progress)
    try:
        for entry, item, cached in results:
            _count(stats, entry, cached)
            if entry.type != DIRECTORY:
                writer.add(entry.path, _cache_fields(item, entry))
            reporter.add(entry.size)
            yield entry
    except BaseException:
        writer.discard()
        raise
    finally:
        if reader is not None:
            reader.close()
    reporter.flush()
    writer.commit()


def _batch_weight(item: Listed) -> int:
    # A ranged object fills a batch on its own (its ranges run in parallel); streamed ones go a
    # few to a batch, one per thread.
    if item[2] > RANGED_ABOVE:
        return BATCH_BYTES
    return min(item[2], BATCH_BYTES // STREAMS_PER_BATCH)


def _count(stats: HashStats, entry: Entry, cached: bool) -> None:
    stats.files += 1
    stats.bytes += entry.size
    if entry.type == DIRECTORY:
        return
    if cached:
        stats.cached_files += 1
        stats.cached_bytes += entry.size
    else:
        stats.hashed_files += 1
        stats.hashed_bytes += entry.size
