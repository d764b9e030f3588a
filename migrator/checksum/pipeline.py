"""Ordered, bounded batching: work goes out in batches, results come back in input order.

Plain classes, not dataclasses: this module is on the import path of a one-shot hashing job,
where importing ``dataclasses`` (and ``inspect`` with it) costs about 10 ms of a 0.15 s run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Generic, TypeVar

W = TypeVar("W")  # a unit of work (a path, an object)
R = TypeVar("R")  # its result
T = TypeVar("T")  # what the stream yields (entries)

Progress = Callable[[int, int], None]  # (files, bytes) increments


class HashStats:
    """Counters of one run: everything listed, and what was read versus taken from the cache."""

    __slots__ = ("bytes", "cached_bytes", "cached_files", "files", "hashed_bytes", "hashed_files")

    def __init__(self) -> None:
        self.files = self.bytes = 0
        self.hashed_files = self.hashed_bytes = 0
        self.cached_files = self.cached_bytes = 0

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)}" for name in self.__slots__)
        return f"HashStats({fields})"


class ProgressBatcher:
    """Calls ``progress(files, bytes)`` every few hundred entries, not once per entry."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.files = 0
        self.bytes = 0

    def add(self, size: int) -> None:
        if self.progress is None:
            return
        self.files += 1
        self.bytes += size
        if self.files >= 256 or self.bytes >= 64 << 20:
            self.flush()

    def flush(self) -> None:
        if self.progress is not None and (self.files or self.bytes):
            self.progress(self.files, self.bytes)
        self.files = self.bytes = 0


class Ready(Generic[T]):
    """A stream item that needs no work (a symlink, a cache hit): passed through in place."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value


class _Segment(Generic[T, W, R]):
    __slots__ = ("items", "result", "weight", "work")

    def __init__(self) -> None:
        self.items: list[Ready[T] | W] = []
        self.work: list[W] = []
        self.weight = 0
        self.result: Future[list[R]] | list[R] | None = None


def run_in_order(
    stream: Iterable[Ready[T] | W],
    run_batch: Callable[[list[W]], list[R]],
    finish: Callable[[W, R], T | None],
    *,
    make_executor: Callable[[], Executor] | None,
    batch_size: int,
    batch_weight: Callable[[W], int] | None = None,
    max_weight: int = 0,
    window: int,
) -> Iterator[T]:
    """Yield the stream's values in order, running its work items in batches.

    Work items are grouped into batches of at most ``batch_size`` items (or ``max_weight`` by
    ``batch_weight``, e.g. bytes). A batch runs inline until a second one is needed, so tiny
    inputs never start workers; after that ``make_executor`` (None: always inline) runs them
    with at most ``window`` batches in flight. ``finish(work, result)`` turns a result into the
    yielded value, or None to drop it.
    """
    executor: Executor | None = None
    parallel = False  # becomes True once a second batch of work exists
    closed_batches = 0
    pending: deque[_Segment[T, W, R]] = deque()
    segment: _Segment[T, W, R] = _Segment()

    def launch(seg: _Segment[T, W, R]) -> None:
        nonlocal executor
        if seg.result is not None:
            return
        if not seg.work:
            seg.result = []
            return
        if executor is None and parallel and make_executor is not None:
            executor = make_executor()
        seg.result = executor.submit(run_batch, seg.work) if executor else run_batch(seg.work)

    def close(seg: _Segment[T, W, R]) -> None:
        nonlocal parallel, closed_batches
        pending.append(seg)
        if seg.work:
            closed_batches += 1
        if closed_batches >= 2:
            parallel = True
            for queued in pending:
                launch(queued)

    def drain(seg: _Segment[T, W, R]) -> Iterator[T]:
        launch(seg)
        outcome = seg.result
        results = outcome.result() if isinstance(outcome, Future) else outcome
        assert results is not None
        position = 0
        for item in seg.items:
            if isinstance(item, Ready):
                yield item.value
                continue
            value = finish(item, results[position])
            position += 1
            if value is not None:
                yield value

    try:
        for item in stream:
            segment.items.append(item)
            if isinstance(item, Ready):
                if len(segment.items) >= batch_size * 4 and not segment.work:
                    close(segment)
                    segment = _Segment()
            else:
                segment.work.append(item)
                if batch_weight is not None:
                    segment.weight += batch_weight(item)
                if len(segment.work) >= batch_size or (max_weight and segment.weight >= max_weight):
                    close(segment)
                    segment = _Segment()
            while len(pending) > window:
                yield from drain(pending.popleft())
        close(segment)
        while pending:
            yield from drain(pending.popleft())
    except BaseException:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        raise
    if executor is not None:
        executor.shutdown(wait=False)  # nothing is left to run; do not wait for the exits
