"""What a verify Job runs (``migrator agent verify``): hash source and destination, merge-compare.

Both sides are hashed in the same place the copy ran (in-cluster for PVCs), so the CLI only needs
the Job's log: one JSON event per line for progress, every difference, and a final summary. The
hash caches of both sides live beside the destination (``<prefix>/.migrator/<volume>/``), so a
repeated verify of an unchanged copy reads neither side again.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrator.checksum import Entry, HashStats, compare, hash_s3_prefix, hash_tree
from migrator.checksum.compare import MODE, OWNER, CompareResult
from migrator.checksum.entry import SYMLINK, escape_path
from migrator.copystate import VERIFY_DIFFERENCES, encode_names
from migrator.errors import BadInputError, StorageError
from migrator.events import Emit
from migrator.filer import LINK_SUFFIX, Attributes
from migrator.objectstore import S3Location, S3Settings
from migrator.s3wire import Body, Client, Endpoint

CACHE_NAMES = {"source": "verify-source-cache.gz", "destination": "verify-destination-cache.gz"}
PROGRESS_SECONDS = 1.0
# Differences a copy can repair (``migrator run --recheck`` recopies these files).
REPAIRABLE = frozenset({"missing", "size", "checksum", "type"})


@dataclass
class VerifyRequest:
    source: Path
    destination: str  # s3://BUCKET/PREFIX/VOLUME or a directory
    cache: str | None = None  # s3://BUCKET/PREFIX/.migrator/VOLUME, or a local directory
    rehash: bool = False  # do not read the caches, but save fresh ones
    sample: float | None = None
    strict_metadata: bool = False
    workers: int | None = None
    state: str | None = None  # s3://BUCKET/PREFIX/.migrator/VOLUME: differences left for the copy
    # SeaweedFS filer gRPC HOST:PORT: the destination's owner, mode and mtime are then read from
    # the filer entries (what a weed mount shows), not from the objects' x-amz-meta-*.
    filer: str | None = None


class _Progress:
    """Counts (files, bytes) per side from the hashing threads and emits them at most once a second."""

    def __init__(self, emit: Emit) -> None:
        self.emit, self.lock = emit, threading.Lock()
        self.counts = {"source": [0, 0], "destination": [0, 0]}
        self.last = 0.0

    def side(self, name: str) -> Any:
        def add(files: int, size: int) -> None:
            with self.lock:
                self.counts[name][0] += files
                self.counts[name][1] += size
                now = time.monotonic()
                if now - self.last >= PROGRESS_SECONDS:
                    self.last = now
                    self._send()

        return add

    def _send(self) -> None:
        self.emit(
            {
                "event": "verify-progress",
                **{f"{k}Files": v[0] for k, v in self.counts.items()},
                **{f"{k}Bytes": v[1] for k, v in self.counts.items()},
            }
        )


def run_verify(request: VerifyRequest, emit: Emit) -> bool:
    """Compare source and destination; emit every difference; return True when they match."""
    if not request.source.is_dir():
        raise BadInputError(f"source {request.source} is not a directory")
    started = time.monotonic()
    progress = _Progress(emit)
    stats = {"source": HashStats(), "destination": HashStats()}
    with _Caches(request) as caches:
        source = hash_tree(
            request.source,
            workers=request.workers,
            sample=request.sample,
            cache=caches.path("source"),
            progress=progress.side("source"),
            stats=stats["source"],
        )
        mounted = _mounted_tree(request)
        destination = _destination_entries(
            request,
            caches.path("destination"),
            progress.side("destination"),
            stats["destination"],
            mounted,
        )
        damaged: list[str] = []

        def on_difference(difference: Any) -> None:
            emit(
                {
                    "event": "difference",
                    "kind": difference.kind,
                    "path": difference.name,
                    "detail": difference.describe(),
                }
            )
            if difference.kind in REPAIRABLE:
                damaged.append(difference.name)

        result = compare(
            source,
            destination,
            strict_metadata=request.strict_metadata,
            limit=0,
            on_difference=on_difference,
        )
        if mounted is not None and request.sample is None:
            _directory_differences(request.source, mounted, result, emit)
        caches.upload()
    if request.state:
        save_differences(request.state, damaged)
    progress._send()
    emit(
        {
            "event": "verify-done",
            **result.summary(),
            "sample": request.sample,
            "files": result.source_entries,
            "bytes": result.source_bytes,
            "hashedFiles": {side: s.hashed_files for side, s in stats.items()},
            "cachedFiles": {side: s.cached_files for side, s in stats.items()},
            "seconds": round(time.monotonic() - started, 3),
        }
    )
    return result.ok


def _mounted_tree(request: VerifyRequest) -> dict[str, Attributes] | None:
    """The destination's filer entries (what a weed mount shows), when a filer was given."""
    if not request.filer or not request.destination.startswith("s3://"):
        return None
    from migrator.filer import FilerClient, filer_directory, read_tree

    with FilerClient(request.filer) as client:
        return read_tree(client, filer_directory(request.destination))


def _destination_entries(
    request: VerifyRequest,
    cache: Path | None,
    progress: Any,
    stats: HashStats,
    mounted: dict[str, Attributes] | None = None,
) -> Iterator[Entry]:
    if request.destination.startswith("s3://"):
        location = S3Location.parse(request.destination)
        entries = hash_s3_prefix(
            S3Settings.from_environment(None),
            location.bucket,
            location.prefix + "/",
            workers=request.workers,
            sample=request.sample,
            cache=cache,
            progress=progress,
            stats=stats,
        )
        return entries if mounted is None else _as_mounted(entries, mounted)
    return hash_tree(
        request.destination,
        workers=request.workers,
        sample=request.sample,
        cache=cache,
        progress=progress,
        stats=stats,
    )


def save_differences(state: str, names: list[str]) -> None:
    """Leave the files found missing or different beside the copy state (``s3://...``), where
    ``migrator agent copy --recheck`` reads them and copies them again."""
    location = S3Location.parse(state)
    _put(
        _wire_client(),
        location.bucket,
        location.key(VERIFY_DIFFERENCES),
        Body(encode_names(names)),
        "saving the verify differences",
    )


# The caches and the differences go through migrator.s3wire, as the hashing does: importing boto3
# alone costs a verify Job more CPU than a cached repeat of a small volume needs in all.
def _wire_client() -> Client:
    return Client(Endpoint.from_settings(S3Settings.from_environment(None)), error=StorageError)


def _put(client: Client, bucket: str, key: str, body: Body, what: str) -> None:
    answer = client.put(bucket, key, body, {"content-type": "application/octet-stream"})
    if not 200 <= answer.status < 300:
        raise _status_error(what, answer.status, answer.code)


def _download(client: Client, bucket: str, key: str, path: Path, what: str) -> None:
    """``key`` into ``path``; an object that is not there leaves no file."""
    response = client.get(bucket, key)
    if response.status != 200:
        body = bytes(response.read())
        if response.status == 404:
            return
        code = body[:1024].decode(errors="replace").partition("<Code>")[2].partition("</Code>")[0]
        raise _status_error(what, response.status, code)
    buffer = memoryview(bytearray(1 << 20))
    with path.open("wb") as out:
        while count := response.readinto(buffer):
            out.write(buffer[:count])


def _status_error(what: str, status: int, code: str) -> StorageError:
    if status == 403:
        return StorageError(f"{what}: access denied (HTTP 403 {code}); check the S3 credentials")
    return StorageError(f"{what}: HTTP {status} {code}".strip())


def _as_mounted(entries: Iterator[Entry], mounted: dict[str, Attributes]) -> Iterator[Entry]:
    """``entries`` with owner, mode and mtime as the filer entries (and so a weed mount) have them."""
    for entry in entries:
        name = entry.path.decode("utf-8", "surrogateescape").rstrip("/")
        # a symlink is the real symlink entry a mount shows; else the object rclone stores
        attrs = mounted.get(name) if entry.type == SYMLINK else None
        attrs = attrs or mounted.get(name + LINK_SUFFIX if entry.type == SYMLINK else name)
        if attrs is None:
            yield entry
            continue
        yield entry._replace(mode=attrs.mode, uid=attrs.uid, gid=attrs.gid, mtime_ns=attrs.mtime_ns)


def _directory_differences(
    source: Path, mounted: dict[str, Attributes], result: CompareResult, emit: Emit
) -> None:
    """Owner and mode of every source directory against the mount's (apps need both to get in);
    their mtimes change as a copy fills them in and are not compared, as for files' parents."""
    for rel_dir in _source_dirs(source):
        st = os.lstat(source / rel_dir)
        there = mounted.get(rel_dir)
        if there is None or not there.is_dir:
            continue  # an empty directory is compared as an entry; others exist by their files
        kinds = []
        if stat.S_IMODE(st.st_mode) != there.mode:
            kinds.append((MODE, f"{stat.S_IMODE(st.st_mode):04o} != {there.mode:04o}"))
        if (st.st_uid, st.st_gid) != (there.uid, there.gid):
            kinds.append((OWNER, f"{st.st_uid}:{st.st_gid} != {there.uid}:{there.gid}"))
        for kind, detail in kinds:
            result.counts[kind] += 1
            emit(
                {
                    "event": "difference",
                    "kind": kind,
                    "path": escape_path(os.fsencode(rel_dir)) + "/",
                    "detail": f"{kind}\t{rel_dir}/: {detail}",
                }
            )


def _source_dirs(source: Path) -> Iterator[str]:
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(source / rel_dir if rel_dir else source) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                    yield rel
                    stack.append(rel)


class _Caches:
    """Hash caches of both sides: downloaded from beside the destination, uploaded when done.

    With ``rehash`` the old caches are not read; the fresh ones replace them only when the verify
    completes, so an interrupted rehash leaves the last good caches in place.
    """

    def __init__(self, request: VerifyRequest) -> None:
        self.request = request
        self.local_dir: Path | None = None
        self.tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> _Caches:
        cache = self.request.cache
        if cache is None:
            return self
        if not cache.startswith("s3://") and not self.request.rehash:
            self.local_dir = Path(cache)
            self.local_dir.mkdir(parents=True, exist_ok=True)
            return self
        self.tmp = tempfile.TemporaryDirectory(prefix="migrator-verify-")
        self.local_dir = Path(self.tmp.name)
        if self.request.rehash or not cache.startswith("s3://"):
            return self
        location, client = S3Location.parse(cache), _wire_client()
        for name in CACHE_NAMES.values():
            _download(
                client,
                location.bucket,
                location.key(name),
                self.local_dir / name,
                "reading the verify cache",
            )
        return self

    def path(self, side: str) -> Path | None:
        return self.local_dir / CACHE_NAMES[side] if self.local_dir is not None else None

    def upload(self) -> None:
        cache = self.request.cache
        if self.tmp is None or self.local_dir is None or cache is None:
            return
        if not cache.startswith("s3://"):  # a rehash into a local directory
            target = Path(cache)
            target.mkdir(parents=True, exist_ok=True)
            for name in CACHE_NAMES.values():
                if (self.local_dir / name).exists():
                    shutil.move(self.local_dir / name, target / name)
            return
        location, client = S3Location.parse(cache), _wire_client()
        for name in CACHE_NAMES.values():
            path = self.local_dir / name
            if path.exists():
                with path.open("rb") as file:
                    body = Body(fd=file.fileno(), length=os.fstat(file.fileno()).st_size)
                    _put(
                        client, location.bucket, location.key(name), body, "saving the verify cache"
                    )

    def __exit__(self, *exc: object) -> None:
        if self.tmp is not None:
            self.tmp.cleanup()
