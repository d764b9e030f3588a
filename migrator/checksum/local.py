"""Hash a local directory tree in parallel, in sorted path order, with an optional cache.

Measured on 2 cores (bench/verify.py): python-xxhash releases the GIL only inside the hash call,
so big files scale with threads, but small files are bound by per-file interpreter work (open,
fstat, read, close) under the GIL. So batches of big files are hashed by threads (no process to
start: a warm 2 GiB tree hashes in 0.1 s, where starting workers is noticeable) and batches of
small files by worker *processes*; each worker reads into its own reused page-aligned buffer.
Files are read with ``os.readv`` rather than mmap: a file truncated while mapped raises SIGBUS
and kills the process, a file truncated while read just hashes short.
"""

from __future__ import annotations

import mmap
import os
import stat
import threading
from collections.abc import Callable, Collection, Generator, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

from migrator.checksum.cache import CacheReader, CacheWriter
from migrator.checksum.entry import (
    DIRECTORY,
    FILE,
    OTHER,
    SYMLINK,
    Entry,
    escape_path,
    in_sample,
    sample_threshold,
)
from migrator.checksum.errors import ChecksumError
from migrator.checksum.pipeline import HashStats, Progress, ProgressBatcher, Ready, run_in_order

if TYPE_CHECKING:
    import multiprocessing.context

CHUNK_SIZE = 4 << 20  # one read; measured: 1-4 MiB reads beat 16 MiB ones, mmap'd buffer
BATCH_FILES = 256  # paths per task: amortises inter-process overhead for small files
BATCH_BYTES = 32 << 20  # ... or fewer: big files go one per task, spread over the workers
DEFAULT_SKIP_TOP = frozenset({b"lost+found"})  # made by mkfs on every ext4 PVC, never copied

_OPEN_FLAGS = (
    os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOATIME", 0)
)


def _permissions(mode: int) -> int:
    return stat.S_IMODE(mode)


def _entry_from_stat(path: bytes, kind: str, st: os.stat_result, xxh3: str | None) -> Entry:
    return Entry(
        path, kind, st.st_size, st.st_mtime_ns, _permissions(st.st_mode), st.st_uid, st.st_gid, xxh3
    )


# A regular file to hash: its path and its size from the walk's lstat.
_FileWork = tuple[bytes, int]
_Item = tuple[Entry, int]  # an entry and its inode (0 for anything but a regular file)

# --- worker side ------------------------------------------------------------------------------

_local = threading.local()  # each worker thread's read buffer


def _forget_buffers() -> None:
    global _local
    _local = threading.local()


os.register_at_fork(after_in_child=_forget_buffers)


def _open(path: bytes) -> int:
    try:
        return os.open(path, _OPEN_FLAGS)
    except PermissionError:
        if not _OPEN_FLAGS & getattr(os, "O_NOATIME", 0):
            raise
        # O_NOATIME is refused on files we do not own unless we are root.
        return os.open(path, _OPEN_FLAGS & ~getattr(os, "O_NOATIME", 0))


def hash_file(path: bytes) -> tuple[os.stat_result, int, str] | None:
    """Hash one regular file: its fstat, the number of bytes read and their hex xxh3-128.

    Returns None if the file vanished; raises ChecksumError if it cannot be read or is no
    longer a regular file.
    """
    buffer: mmap.mmap | None = getattr(_local, "buffer", None)
    if buffer is None:
        # Page-aligned and private: a MAP_SHARED buffer would be shared with forked workers.
        buffer = _local.buffer = mmap.mmap(
            -1, CHUNK_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        )
    try:
        fd = _open(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ChecksumError(f"cannot read {escape_path(path)}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ChecksumError(f"{escape_path(path)} changed while it was being hashed")
        with memoryview(buffer) as view:
            count = os.readv(fd, [buffer])
            extra = b""
            if count < CHUNK_SIZE and count == st.st_size:
                # The common small file: one read and one call, once we know it ended there.
                extra = os.read(fd, 1)
                if not extra:
                    return st, count, xxhash.xxh3_128_hexdigest(view[:count])
            hasher = xxhash.xxh3_128()
            total = 0
            while count or extra:
                hasher.update(view[:count])
                hasher.update(extra)
                total += count + len(extra)
                extra = b""
                count = os.readv(fd, [buffer])
            return st, total, hasher.hexdigest()
    except OSError as exc:
        raise ChecksumError(f"cannot read {escape_path(path)}: {exc.strerror}") from None
    finally:
        os.close(fd)


# What a worker sends back per file: size read, mtime_ns, st_mode, uid, gid, inode, digest.
_Hashed = tuple[int, int, int, int, int, int, str]


def _hash_batch(root: bytes, paths: list[bytes]) -> list[_Hashed | None]:
    results: list[_Hashed | None] = []
    append = results.append
    for relative in paths:
        hashed = hash_file(root + b"/" + relative)
        if hashed is None:
            append(None)
            continue
        st, size, digest = hashed
        append((size, st.st_mtime_ns, st.st_mode, st.st_uid, st.st_gid, st.st_ino, digest))
    return results


class _BatchHasher:
    """A picklable callable: the worker processes get the root once per batch, not per path."""

    def __init__(self, root: bytes) -> None:
        self.root = root

    def __call__(self, work: list[_FileWork]) -> list[_Hashed | None]:
        return _hash_batch(self.root, [path for path, _ in work])


# --- the walk ---------------------------------------------------------------------------------


def _scan(directory: bytes) -> list[tuple[bytes, os.DirEntry[bytes]]]:
    """Children sorted so that full paths come out in byte order: a directory sorts as ``name/``."""
    try:
        with os.scandir(directory) as children:
            keyed = [
                (child.name + b"/" if child.is_dir(follow_symlinks=False) else child.name, child)
                for child in children
            ]
    except OSError as exc:
        raise ChecksumError(f"cannot list {os.fsdecode(directory)}: {exc.strerror}") from None
    keyed.sort(key=lambda pair: pair[0])
    return keyed


def _walk(
    root: bytes,
    relative: bytes,
    threshold: int | None,
    cache: CacheReader | None,
    skip: Collection[bytes],
) -> Generator[Ready[_Item] | _FileWork, None, bool]:
    """Yield the tree below ``relative`` in byte order; return whether it has any children."""
    base = root + b"/" + relative if relative else root
    children = [pair for pair in _scan(base) if relative or pair[1].name not in skip]
    for key, child in children:
        path = relative + b"/" + child.name if relative else child.name
        if key.endswith(b"/"):
            has_children = yield from _walk(root, path, threshold, cache, ())
            if not has_children and (threshold is None or in_sample(key, threshold)):
                yield Ready((_lstat_entry(child, path + b"/", DIRECTORY, None), 0))
        elif threshold is not None and not in_sample(path, threshold):
            continue
        elif child.is_symlink():
            target = os.readlink(child.path)
            entry = _lstat_entry(child, path, SYMLINK, xxhash.xxh3_128_hexdigest(target))
            yield Ready((entry, 0))
        elif child.is_file(follow_symlinks=False):
            yield _file_work(child, path, cache)
        else:
            yield Ready((_lstat_entry(child, path, OTHER, None), 0))
    return bool(children)


def _lstat_entry(child: os.DirEntry[bytes], path: bytes, kind: str, xxh3: str | None) -> Entry:
    try:
        st = child.stat(follow_symlinks=False)
    except OSError as exc:
        raise ChecksumError(f"cannot stat {escape_path(path)}: {exc.strerror}") from None
    size = st.st_size if kind == SYMLINK else 0
    return Entry(
        path, kind, size, st.st_mtime_ns, _permissions(st.st_mode), st.st_uid, st.st_gid, xxh3
    )


def _file_work(
    child: os.DirEntry[bytes], path: bytes, cache: CacheReader | None
) -> Ready[_Item] | _FileWork:
    # The walk stats every file (about 1 us): batches are then cut by bytes as well as by count,
    # so a handful of big files is spread over the workers, and the cache can be consulted.
    try:
        st = child.stat(follow_symlinks=False)
    except FileNotFoundError:
        return (path, 0)  # the worker will see it vanished
    if cache is not None:
        stored = cache.lookup(path)
        if (
            stored is not None
            and stored[0] == str(st.st_size)
            and stored[1] == str(st.st_mtime_ns)
            and stored[2] == str(st.st_ino)
        ):
            # A negative inode marks a cache hit for the counters.
            return Ready((_entry_from_stat(path, FILE, st, stored[3]), -st.st_ino - 1))
    return (path, st.st_size)


# --- the public function ----------------------------------------------------------------------


# A batch whose files average this much is hashed by a thread: hashing, which releases the GIL,
# dominates its per-file interpreter work.
THREAD_BATCH_AVERAGE = 1 << 20
HASH_THREAD_PREFIX = "migrator-hash"


class _HybridPool(Executor):
    """Threads for batches of big files, processes (started on first need) for small ones."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._threads: ThreadPoolExecutor | None = None
        self._processes: Executor | None = None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        work: list[_FileWork] = args[0]
        if sum(size for _, size in work) >= THREAD_BATCH_AVERAGE * len(work):
            if self._threads is None:
                self._threads = ThreadPoolExecutor(
                    self.workers, thread_name_prefix=HASH_THREAD_PREFIX
                )
            return self._threads.submit(fn, *args, **kwargs)
        if self._processes is None:
            from concurrent.futures import ProcessPoolExecutor

            self._processes = ProcessPoolExecutor(self.workers, mp_context=pool_context())
        return self._processes.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        for pool in (self._threads, self._processes):
            if pool is not None:
                pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def _make_pool(workers: int) -> Callable[[], Executor]:
    def make() -> Executor:
        return _HybridPool(workers)

    return make


def pool_context() -> multiprocessing.context.BaseContext:
    """``fork`` when this process runs no other thread than ours, else ``forkserver``.

    fork starts workers in ~10 ms against ~150 ms for the first forkserver, which matters for a
    20,000-file tree hashed in 0.2 s; but forking a process that runs other threads (a progress
    bar) can copy a held lock into the child, so then the forkserver is worth its cost. Our own
    hashing threads do not count: they only read files and hash buffers (no Python lock held
    across either), and a forked worker never touches their pool.
    """
    import multiprocessing

    others = [
        thread
        for thread in threading.enumerate()
        if thread is not threading.main_thread() and not thread.name.startswith(HASH_THREAD_PREFIX)
    ]
    return multiprocessing.get_context("forkserver" if others else "fork")


def cache_identity(root: Path) -> str:
    """What a local cache must have been made for: this real root on this device."""
    real = os.path.realpath(root)
    return f"local dev={os.stat(real).st_dev} root={escape_path(os.fsencode(real))}"


def hash_tree(
    root: str | os.PathLike[str],
    *,
    workers: int | None = None,
    sample: float | None = None,
    cache: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    stats: HashStats | None = None,
    skip_top: Collection[bytes] = DEFAULT_SKIP_TOP,
) -> Iterator[Entry]:
    """Hash every file under ``root``; yield entries sorted by raw relative path bytes.

    Regular files get the xxh3-128 of their content; symlinks the xxh3-128 of their target
    string (never followed); empty directories an entry whose path ends in ``/``; fifos,
    sockets and devices an entry without a digest. ``workers`` processes (default: CPU count)
    hash batches of files; a tree of fewer than two batches is hashed inline. ``sample`` keeps
    only paths selected by :func:`~migrator.checksum.entry.in_sample`. ``cache`` names a cache
    file: a regular file whose (path, size, mtime_ns, inode) match the cache is not read again,
    and the cache is rewritten when the iteration completes (left as it was when sampling).
    ``progress(files, bytes)`` receives increments as entries are yielded. ``skip_top`` names
    top-level entries to leave out (``lost+found`` by default).

    Raises ChecksumError when a directory cannot be listed or a file cannot be read.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise ChecksumError(f"{root} is not a directory")
    root_bytes = os.fsencode(os.path.realpath(root_path))
    stats = stats if stats is not None else HashStats()
    threshold = sample_threshold(sample) if sample is not None and sample < 1.0 else None
    identity = cache_identity(root_path)
    cache_path = Path(cache) if cache is not None else None
    reader = CacheReader(cache_path, identity) if cache_path is not None else None
    writer = CacheWriter(cache_path if threshold is None else None, identity)
    writing = cache_path is not None and threshold is None
    workers = workers or os.cpu_count() or 1

    def finish(work: _FileWork, result: _Hashed | None) -> _Item | None:
        if result is None:
            return None
        size, mtime_ns, mode, uid, gid, inode, digest = result
        return Entry(work[0], FILE, size, mtime_ns, mode & 0o7777, uid, gid, digest), inode

    stream = _walk(root_bytes, b"", threshold, reader, skip_top)
    items = run_in_order(
        stream,
        _BatchHasher(root_bytes),
        finish,
        make_executor=_make_pool(workers) if workers > 1 else None,
        batch_size=BATCH_FILES,
        batch_weight=lambda work: work[1],
        max_weight=BATCH_BYTES,
        window=4 * workers,
    )
    reporter = ProgressBatcher(progress)
    try:
        for entry, inode in items:
            _count(stats, entry, inode)
            if writing and entry.type == FILE:
                real_inode = inode if inode >= 0 else -inode - 1
                writer.add(
                    entry.path,
                    [str(entry.size), str(entry.mtime_ns), str(real_inode), entry.xxh3 or "-"],
                )
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


def _count(stats: HashStats, entry: Entry, inode: int) -> None:
    stats.files += 1
    stats.bytes += entry.size
    if entry.type != FILE:
        return
    if inode < 0:  # a negative inode marks a cache hit
        stats.cached_files += 1
        stats.cached_bytes += entry.size
    else:
        stats.hashed_files += 1
        stats.hashed_bytes += entry.size
