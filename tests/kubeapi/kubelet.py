"""The API double's side of the process kubelet (tests/kubelet/pods.py): its object store seen
through :class:`tests.kubelet.pods.PodApi`, so the double's Job controller runs pods with the
same code as the process kubelet that serves the real control plane."""

from __future__ import annotations

import contextlib
from typing import Any

from tests.kubelet import pods
from tests.kubelet.pods import INDEX_KEY, KubeletConfig, PodRun, expand, isolation_mode

from .errors import ApiError
from .store import ObjectStore

__all__ = ["INDEX_KEY", "KubeletConfig", "PodRun", "StoreApi", "expand", "isolation_mode",
           "record_event"]  # fmt: skip

Obj = dict[str, Any]


class StoreApi:
    """:class:`tests.kubelet.pods.PodApi` over the double's :class:`ObjectStore`."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def read(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self.store.get(self.store.registry.by_kind("v1", kind), namespace, name)

    def pods(self, namespace: str) -> list[Obj]:
        return self.store.list_objects(self.store.registry.by_kind("v1", "Pod"), namespace)[0]

    def write_status(self, namespace: str, name: str, uid: str, status: Obj) -> bool:
        try:
            self.store.update(
                self.store.registry.by_kind("v1", "Pod"), namespace, name,
                lambda current: {**(current or {}), "status": status}, subresource="status",
            )  # fmt: skip
        except ApiError as error:
            if error.code != 404:
                raise
            return False
        return True

    def record_event(self, event: Obj) -> None:
        with contextlib.suppress(ApiError):  # the namespace may be gone meanwhile
            self.store.create(self.store.registry.by_kind("v1", "Event"), event)

    def append_log(self, namespace: str, name: str, container: str, text: str) -> None:
        self.store.append_log(namespace, name, text, container)


    def service_account_token(self, pod: Obj, audience: str | None, seconds: int) -> str:
        raise pods.VolumeError("the API double issues no ServiceAccount tokens")


def record_event(store: ObjectStore, obj: Obj, reason: str, message: str, **how: Any) -> None:
    """:func:`tests.kubelet.pods.record_event` into the double's store."""
    pods.record_event(StoreApi(store), obj, reason, message, **how)
