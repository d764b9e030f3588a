"""A list+watch cache of one kind of object, as a real kubelet keeps with client-go's informers:
the sync loop reads the cache and wakes on a change, instead of listing the cluster every round.

The cache is listed, then watched from the list's resourceVersion for ``WATCH_SECONDS``; when
the watch ends (its time is up, the resourceVersion is too old: 410 Gone, the connection dropped)
it is listed afresh, which is also the periodic resync that would repair a missed event.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from typing import Any

from migrator.kube import KubeClient

Obj = dict[str, Any]
WATCH_SECONDS = 30
RETRY_SECONDS = 1.0  # between failed lists


class WatchEnded(Exception):
    """The API server ended a watch with an ERROR event (410 Gone: list afresh)."""


class Informer:
    """The objects ``list_function`` (a list method of the official client, such as
    ``CoreV1Api.list_pod_for_all_namespaces``) returns with ``selectors`` (``field_selector``),
    kept current; ``on_change`` is called after every change. A failed list is appended to
    ``errors`` (the kubelet's, which the test fixture reports) and tried again."""

    def __init__(
        self,
        kube: KubeClient,
        what: str,
        list_function: Callable[..., Any],
        on_change: Callable[[], None],
        errors: list[BaseException],
        **selectors: str,
    ) -> None:
        self.kube, self.what, self.list_function = kube, what, list_function
        self.on_change, self.errors, self.selectors = on_change, errors, selectors
        self._objects: dict[str, Obj] = {}  # by uid
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._response: Any = None

    def start(self) -> None:
        """List (the cache is full when this returns), then keep the cache current from a
        background thread."""
        version = self._list()
        threading.Thread(
            target=self._run, args=(version,), name=f"informer-{self.what}", daemon=True
        ).start()

    def stop(self) -> None:
        """End the watch now (closing its connection) and the thread with it."""
        self._stopping.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()

    def items(self) -> list[Obj]:
        with self._lock:
            return list(self._objects.values())

    def _run(self, version: str) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(Exception):  # a dropped or expired watch: list afresh
                self._watch(version)
            while not self._stopping.is_set():
                try:
                    version = self._list()
                    break
                except Exception as error:
                    if not self._stopping.is_set():
                        self.errors.append(error)
                    self._stopping.wait(RETRY_SECONDS)

    def _list(self) -> str:
        """Replace the cache by a fresh list; its resourceVersion."""
        answer = self.kube.call(
            f"listing {self.what}",
            lambda: self.list_function(_preload_content=False, **self.selectors),
        )
        assert answer is not None  # a list is never missing_ok
        found = json.loads(answer.data)
        with self._lock:
            self._objects = {o["metadata"]["uid"]: o for o in found["items"]}
        self.on_change()
        return str(found["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> None:
        """Apply the changes after ``version`` until the watch ends."""
        response = self.list_function(
            watch=True,
            resource_version=version,
            timeout_seconds=WATCH_SECONDS,
            _preload_content=False,
            **self.selectors,
        )
        self._response = response
        try:
            if self._stopping.is_set():  # stop() came before the watch it would have ended
                return
            for line in response:
                if self._stopping.is_set():
                    return
                if line.strip():
                    self._apply(json.loads(line))
        finally:
            self._response = None
            response.release_conn()

    def _apply(self, event: Obj) -> None:
        kind, obj = event["type"], event["object"]
        if kind == "ERROR":
            raise WatchEnded(obj.get("message", "watch ended"))
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return  # BOOKMARK: not asked for
        with self._lock:
            if kind == "DELETED":
                self._objects.pop(obj["metadata"]["uid"], None)
            else:
                self._objects[obj["metadata"]["uid"]] = obj
        self.on_change()
