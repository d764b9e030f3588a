"""The run Lease: one run (or swap, or rollback) of a plan at a time."""

from __future__ import annotations

import datetime
import os
import socket
import threading
import time
from typing import Any

from migrator.errors import ConflictError, LeaseLostError, OperationFailedError
from migrator.kube import KubeClient

LEASE_SECONDS = 60
RENEW_RETRY_SECONDS = 2  # after a failed renewal, try again this soon
LEASES_API = "/apis/coordination.k8s.io/v1"


class LeaseLock:
    """A coordination.k8s.io Lease ``migrator-<plan>``: one run of a plan at a time.

    A thread renews it every ``renew_every`` seconds (a third of the lease by default) with a
    read and a replace conditional on the read's resourceVersion, so a renewal never overwrites
    another run's hold. The Lease is lost when another identity holds it, when it is gone, or when
    no renewal succeeded for two thirds of the lease (another run may take it once it expires);
    then :attr:`lost` is set and :meth:`ensure_held` raises LeaseLostError. On exit the Lease is
    deleted only while it is still ours, with a resourceVersion precondition.
    """

    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        plan: str,
        duration: int = LEASE_SECONDS,
        renew_every: float | None = None,
    ) -> None:
        self.kube, self.namespace, self.name = kube, namespace, f"migrator-{plan}"
        self.identity = f"{socket.gethostname()}/{os.getpid()}"
        self.duration = duration
        self.renew_every = renew_every or duration / 3
        self.stopping = threading.Event()
        self.lost = threading.Event()
        self.lost_reason = ""
        self.thread: threading.Thread | None = None
        self.resource_version = ""
        # Wall-clock time (it goes on while a laptop sleeps, as the other runs' clocks do).
        self.renewed_at = 0.0
        self._mutex = threading.Lock()

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def path(self) -> str:
        """The Lease's API path (written with raw JSON: see :meth:`KubeClient.send`)."""
        return f"{LEASES_API}/namespaces/{self.namespace}/leases/{self.name}"

    def _now(self) -> str:
        # A MicroTime, in the one form the API server parses: microseconds and a Z.
        return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _body(self, resource_version: str | None = None) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "name": self.name,
            "namespace": self.namespace,
            "labels": {"app.kubernetes.io/managed-by": "migrator"},
        }
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.duration,
                "renewTime": self._now(),
            },
        }

    def _read(self) -> dict[str, Any] | None:
        return self.kube.send("reading the run Lease", "GET", self.path, missing_ok=True)

    def _held(self, written: dict[str, Any] | None) -> None:
        self.resource_version = str((written or {})["metadata"]["resourceVersion"])
        self.renewed_at = time.time()

    def __enter__(self) -> LeaseLock:
        current = self._read()
        try:
            if current is None:
                created = self.kube.send(
                    "taking the run Lease",
                    "POST",
                    f"{LEASES_API}/namespaces/{self.namespace}/leases",
                    self._body(),
                )
            else:
                created = self._take_over(current)
        except ConflictError:
            # Another run wrote it between our read and our write: it won the race.
            self._refuse(self._read() or {})
            raise
        self._held(created)
        self.thread = threading.Thread(target=self._renew, daemon=True, name="lease-renewer")
        self.thread.start()
        return self

    def _refuse(self, lease: dict[str, Any]) -> None:
        """Raise when another run holds ``lease`` and it has not expired."""
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        if holder and holder != self.identity and not self._expired(spec):
            raise OperationFailedError(
                f"another migrator run of this plan is in progress ({holder}, Lease {self.where}); "
                "wait for it, or stop it, then re-run"
            )

    def _take_over(self, lease: dict[str, Any]) -> dict[str, Any] | None:
        self._refuse(lease)
        body = self._body(lease["metadata"]["resourceVersion"])
        return self.kube.send("taking the run Lease", "PUT", self.path, body)

    @staticmethod
    def _expired(spec: dict[str, Any]) -> bool:
        import calendar

        renew = spec.get("renewTime")
        if not renew:
            return True
        seconds = calendar.timegm(time.strptime(str(renew)[:19], "%Y-%m-%dT%H:%M:%S"))
        return time.time() - seconds > int(spec.get("leaseDurationSeconds") or LEASE_SECONDS)

    def ensure_held(self) -> None:
        """Renew the Lease now, so it is ours for a full lease from here; call before a write
        that only the holder may make. Raises LeaseLostError when it is no longer ours (or was
        never taken), OperationFailedError when the API server cannot tell."""
        with self._mutex:
            self._renew_once()

    def _lose(self, reason: str) -> LeaseLostError:
        self.lost_reason = reason
        self.lost.set()
        return LeaseLostError(reason)

    def _renew_once(self) -> None:
        if self.lost.is_set():
            raise LeaseLostError(self.lost_reason)
        if not self.resource_version:
            raise LeaseLostError(f"this run does not hold the run Lease {self.where}")
        for _ in range(3):
            current = self._read()
            holder = ((current or {}).get("spec") or {}).get("holderIdentity")
            if current is None or holder != self.identity:
                raise self._lose(
                    f"lost the run Lease {self.where} to {holder or 'nobody (it was deleted)'}; "
                    "this run stopped and left the journal to the run that holds it: "
                    "see 'migrator status', and re-run once that run is over"
                )
            try:
                self._held(self._replace(current["metadata"]["resourceVersion"]))
                return
            except ConflictError:
                continue  # written in between: read again to see by whom
        raise OperationFailedError(f"renewing the run Lease {self.where}: it keeps changing")

    def _replace(self, resource_version: str) -> dict[str, Any] | None:
        """Write ourselves in as the holder, renewed now, if the Lease is still that version."""
        return self.kube.send(
            "renewing the run Lease", "PUT", self.path, self._body(resource_version)
        )

    def _renew(self) -> None:
        delay = self.renew_every
        while not self.stopping.wait(delay):
            try:
                self.ensure_held()
                delay = self.renew_every
            except LeaseLostError:
                return
            except OperationFailedError as exc:
                silent = time.time() - self.renewed_at
                if silent >= self.duration * 2 / 3:
                    self._lose(
                        f"could not renew the run Lease {self.where} for {silent:.0f}s "
                        f"({exc.message}); another run may hold it now, so this run stopped: "
                        "see 'migrator status', and re-run"
                    )
                    return
                delay = min(self.renew_every, RENEW_RETRY_SECONDS)

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=self.duration)
        try:
            self._release()
        except OperationFailedError:
            if kind is None:
                raise
            # The run already failed: its own error says more; the Lease will expire.

    def _release(self) -> None:
        """Delete the Lease if it is still ours, and only the version we hold."""
        with self._mutex:
            if self.lost.is_set() or not self.resource_version:
                return
            current = self._read()
            spec = (current or {}).get("spec") or {}
            if current is None or spec.get("holderIdentity") != self.identity:
                return
            version = current["metadata"]["resourceVersion"]
            precondition = {
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "preconditions": {"resourceVersion": version},
            }
            try:
                self.kube.send(
                    "releasing the run Lease", "DELETE", self.path, precondition, missing_ok=True
                )
            except ConflictError:
                return  # taken over since the read: it is the other run's now
