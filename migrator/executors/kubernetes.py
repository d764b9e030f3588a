"""The kubernetes executor: server-side applies the rendered Jobs, watches their conditions, and
follows their pods' logs for progress. Also the cluster side of a run: the journal ConfigMap, the
Lease that stops two runs of one plan, and the cutover's quiesce (suspend Flux, scale to 0).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from migrator.copier import iter_events
from migrator.errors import BadInputError, ConflictError, LeaseLostError, OperationFailedError
from migrator.executors import EventSink, JobResult
from migrator.journal import Journal
from migrator.kube import FLUX_HELM_GROUP, FLUX_HELM_VERSION, KubeClient
from migrator.plan import Plan

FIELD_MANAGER = "migrator"
SPEC_HASH = "migrator.cozystack.io/spec-hash"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
LEASE_SECONDS = 60
RENEW_RETRY_SECONDS = 2  # after a failed renewal, try again this soon
LEASES_API = "/apis/coordination.k8s.io/v1"


def manifest_hash(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


def _condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return dict(condition)
    return None


def _finished(job: dict[str, Any]) -> str | None:
    if _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet"):
        return "Complete"
    if _condition(job, "Failed") or _condition(job, "FailureTarget"):
        return "Failed"
    return None


class KubernetesExecutor:
    """Runs Jobs on the cluster and reports the agent's JSON events from the pod logs."""

    def __init__(self, kube: KubeClient, timeout: float, parallelism: int | None = None) -> None:
        self.kube, self.timeout, self.parallelism = kube, timeout, parallelism

    def run_job(
        self,
        manifest: dict[str, Any],
        on_event: EventSink,
        skip_indexes: frozenset[int] = frozenset(),
    ) -> JobResult:
        """Apply (or re-attach to) a Job, wait for Complete/Failed, follow its logs.

        A running or complete Job with the same spec is re-attached, not restarted (resume after a
        killed ``migrator run``); a failed or different one is replaced. ``skip_indexes`` is not
        needed here: the Job itself tracks its completed indexes.
        """
        manifest = self._with_hash(manifest)
        name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
        existing = self._get_job(namespace, name)
        if existing is not None and not self._reusable(existing, manifest):
            self._delete_job(namespace, name)
            existing = None
        if existing is None:
            self._apply(manifest)
        follower = LogFollower(self.kube, namespace, name, on_event)
        follower.start()
        try:
            job, blocked = self._wait(namespace, name)
        finally:
            follower.stop()
        if blocked:
            # It would start by itself once the cause is fixed, maybe after the apps are back.
            self._delete_job(namespace, name)
            return JobResult(name=name, succeeded=False, completed_indexes=[], failed_pods=0,
                             message=blocked)  # fmt: skip
        return self._result(job, follower)

    def _with_hash(self, manifest: dict[str, Any]) -> dict[str, Any]:
        manifest = json.loads(json.dumps(manifest))
        if self.parallelism and manifest["spec"].get("completionMode") == "Indexed":
            manifest["spec"]["parallelism"] = self.parallelism
        annotations = manifest["metadata"].setdefault("annotations", {})
        annotations[SPEC_HASH] = manifest_hash(manifest)
        return manifest

    def _reusable(self, job: dict[str, Any], manifest: dict[str, Any]) -> bool:
        same = (job["metadata"].get("annotations") or {}).get(SPEC_HASH) == manifest["metadata"][
            "annotations"
        ][SPEC_HASH]
        return same and _finished(job) != "Failed"

    def _get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.kube.call(
            f"reading Job {name}",
            lambda: self.kube.batch.read_namespaced_job(name, namespace),
            missing_ok=True,
        )
        return None if found is None else self.kube._dict(found)

    def _delete_job(self, namespace: str, name: str) -> None:
        self.kube.call(
            f"deleting Job {name}",
            lambda: self.kube.batch.delete_namespaced_job(
                name, namespace, propagation_policy="Background"
            ),
            missing_ok=True,
        )
        deadline = time.monotonic() + 60
        while self._get_job(namespace, name) is not None:
            if time.monotonic() > deadline:
                raise OperationFailedError(f"Job {name} was not deleted within 60s")
            time.sleep(0.2)

    def _apply(self, manifest: dict[str, Any]) -> None:
        name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
        self.kube.call(
            f"applying Job {name}",
            lambda: self.kube.batch.patch_namespaced_job(
                name, namespace, manifest, field_manager=FIELD_MANAGER, force=True,
                _content_type="application/apply-patch+yaml",
            ),
        )  # fmt: skip

    def _wait(self, namespace: str, name: str) -> tuple[dict[str, Any], str | None]:
        """Watch the Job until a terminal condition, under the timeout (no sleeping loops).

        Returns (job, None) when it finished, or (job, why) as soon as its pods cannot start
        (see :class:`StartWatch`): it is checked between watch slices of ``WATCH_SLICE`` s, each
        bounded on this side, so a half-open connection cannot outlive ``--timeout``.
        """
        deadline = time.monotonic() + self.timeout
        blockers = StartWatch(self.kube, namespace, name)
        while True:
            job = self._get_job(namespace, name)
            if job is None:
                raise OperationFailedError(f"Job {name} disappeared while it ran")
            if _finished(job):
                return job, None
            blocked = blockers.check(job)
            if blocked:
                return job, blocked
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                waiting = f"; {blockers.waiting}" if blockers.waiting else ""
                raise OperationFailedError(
                    f"Job {name} did not finish within {self.timeout:.0f}s{waiting}; "
                    "re-run to keep waiting"
                )
            seconds = max(1, int(min(remaining, WATCH_SLICE)))
            self._watch_slice(namespace, name, job["metadata"]["resourceVersion"], seconds)

    def _watch_slice(self, namespace: str, name: str, resource_version: str, seconds: int) -> None:
        """Watch the Job for ``seconds`` (until it finishes, if sooner)."""
        bounded_watch(
            self.kube.batch.list_namespaced_job, seconds,
            lambda event: _finished(self.kube._dict(event["object"])) is not None,
            namespace, field_selector=f"metadata.name={name}", resource_version=resource_version,
        )  # fmt: skip

    def _result(self, job: dict[str, Any], follower: LogFollower) -> JobResult:
        status = job.get("status") or {}
        succeeded = _finished(job) == "Complete"
        failed = _condition(job, "Failed") or {}
        message = (
            ""
            if succeeded
            else follower.last_error or failed.get("message") or failed.get("reason", "")
        )
        return JobResult(
            name=job["metadata"]["name"],
            succeeded=succeeded,
            completed_indexes=_parse_indexes(status.get("completedIndexes"))
            or ([0] if succeeded else []),
            failed_pods=int(status.get("failed") or 0),
            message=message,
            done_events=list(follower.done.values()),
        )


def bounded_watch(
    list_function: Any, seconds: int, stop: Any, *args: Any, **kwargs: Any
) -> None:
    """Watch ``list_function(*args, **kwargs)`` for ``seconds``, or until ``stop(event)``.

    The waiting is bounded here, not by the connection: a silent half-open one (which urllib3
    would also retry on its read timeouts, 4 times over) is abandoned after ``seconds`` + 5 s.
    """
    from kubernetes import watch

    ended = threading.Event()

    def consume() -> None:
        try:
            stream = watch.Watch().stream(
                list_function, *args, timeout_seconds=seconds,
                _request_timeout=(10, seconds + 10), **kwargs,
            )  # fmt: skip
            for event in stream:
                if stop(event):
                    break
        except Exception:  # a dropped or stalled watch: the caller reads the state again
            pass
        finally:
            ended.set()

    threading.Thread(target=consume, daemon=True, name="bounded-watch").start()
    ended.wait(seconds + 5)


WATCH_SLICE = 5  # seconds between checks for pods that cannot start
UNSCHEDULABLE_GRACE = 10.0  # a pod unschedulable this long fails the Job (not a passing state)
# Container waiting reasons that do not go away without a fix (a wrong image, a missing Secret).
STUCK_REASONS = (
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
    "CreateContainerConfigError", "CreateContainerError",
)  # fmt: skip


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class StartWatch:
    """Why a Job's pods cannot start, if they cannot: the Job controller could not create them
    (a FailedCreate event: Pod Security admission, quota), a container is stuck waiting
    (``STUCK_REASONS``), or a pod has been unschedulable for ``UNSCHEDULABLE_GRACE`` s.

    Causes that may pass by themselves do not fail the Job, but :attr:`waiting` keeps the newest
    warning of a pod still Pending (a Multi-Attach error while the claim's other user runs on
    another node, a FailedMount), so a timeout can say what the pod waited for."""

    def __init__(self, kube: KubeClient, namespace: str, job: str) -> None:
        self.kube, self.namespace, self.job = kube, namespace, job
        self.unschedulable_since: dict[str, float] = {}
        self.waiting = ""

    def check(self, job: dict[str, Any]) -> str | None:
        return self._failed_create(job) or self._stuck_pod()

    def _failed_create(self, job: dict[str, Any]) -> str | None:
        selector = f"involvedObject.uid={job['metadata']['uid']},reason=FailedCreate"
        events = self.kube.call(
            f"reading the events of Job {self.job}",
            lambda: self.kube.core.list_namespaced_event(self.namespace, field_selector=selector),
        )
        found = [e for e in (events.items if events else []) if e.type == "Warning"]
        if not found:
            return None
        return f"Job {self.job} cannot create its pods: {_one_line(found[-1].message or '')}"

    def _stuck_pod(self) -> str | None:
        pods = self.kube.call(
            f"reading the pods of Job {self.job}",
            lambda: self.kube.core.list_namespaced_pod(
                self.namespace, label_selector=f"job-name={self.job}"
            ),
        )
        for pod in pods.items if pods else []:
            name, status = pod.metadata.name, pod.status
            for container in (status.init_container_statuses or []) + (
                status.container_statuses or []
            ):
                waiting = container.state.waiting if container.state else None
                if waiting and waiting.reason in STUCK_REASONS:
                    detail = f": {_one_line(waiting.message)}" if waiting.message else ""
                    return f"pod {name} of Job {self.job} cannot start: {waiting.reason}{detail}"
            why = self._unschedulable(name, status.conditions or [])
            if why:
                return why
            if status.phase == "Pending":
                self._note_warning(name)
        return None

    def _note_warning(self, pod: str) -> None:
        """Remember the newest Warning event of ``pod`` in :attr:`waiting` (best effort: only
        ever part of a message)."""
        try:
            events = self.kube.call(
                f"reading the events of pod {pod}",
                lambda: self.kube.core.list_namespaced_event(
                    self.namespace, field_selector=f"involvedObject.name={pod}"
                ),
            )
        except OperationFailedError:
            return
        warnings = [e for e in (events.items if events else []) if e.type == "Warning"]
        if warnings:
            newest = max(warnings, key=_event_time)
            self.waiting = (
                f"its pod {pod} is still waiting: {newest.reason}: {_one_line(newest.message or '')}"
            )

    def _unschedulable(self, pod: str, conditions: list[Any]) -> str | None:
        for condition in conditions:
            if condition.type == "PodScheduled" and condition.status == "False" and (
                condition.reason == "Unschedulable"
            ):
                since = self.unschedulable_since.setdefault(pod, time.monotonic())
                if time.monotonic() - since >= UNSCHEDULABLE_GRACE:
                    return (
                        f"pod {pod} of Job {self.job} cannot be scheduled: "
                        f"{_one_line(condition.message or 'Unschedulable')}"
                    )
        return None


def _event_time(event: Any) -> str:
    """When an event last happened, as a sortable string (events.k8s.io or core fields)."""
    for stamp in (event.last_timestamp, event.event_time, event.first_timestamp):
        if stamp:
            return str(stamp.isoformat() if hasattr(stamp, "isoformat") else stamp)
    return ""


def _parse_indexes(text: str | None) -> list[int]:
    """``"0-2,5"`` -> [0, 1, 2, 5] (the Job status format)."""
    indexes: list[int] = []
    for part in (text or "").split(","):
        if "-" in part:
            low, high = part.split("-")
            indexes.extend(range(int(low), int(high) + 1))
        elif part.strip():
            indexes.append(int(part))
    return indexes


class LogFollower:
    """Follows the logs of every pod of a Job and turns agent events into progress."""

    def __init__(self, kube: KubeClient, namespace: str, job: str, on_event: EventSink) -> None:
        self.kube, self.namespace, self.job, self.on_event = kube, namespace, job, on_event
        self.stopping = threading.Event()
        self.followed: set[str] = set()
        self.threads: list[threading.Thread] = []
        self.done: dict[int, dict[str, Any]] = {}
        self.last_error = ""
        self.lock = threading.Lock()

    def start(self) -> None:
        thread = threading.Thread(target=self._discover, daemon=True, name=f"pods-{self.job}")
        thread.start()
        self.threads.append(thread)

    def stop(self) -> None:
        # Let the last log lines arrive: the pods are finished when the Job is.
        self._scan()
        self.stopping.set()
        for thread in list(self.threads):
            thread.join(timeout=10)

    def _discover(self) -> None:
        while not self.stopping.wait(0.3):
            try:
                self._scan()
            except Exception:  # a transient API error must not kill progress reporting
                continue

    def _scan(self) -> None:
        pods = self.kube.core.list_namespaced_pod(
            self.namespace, label_selector=f"job-name={self.job}"
        ).items
        for pod in pods:
            name, phase = pod.metadata.name, pod.status.phase
            if name in self.followed or phase not in ("Running", "Succeeded", "Failed"):
                continue
            self.followed.add(name)
            index = int((pod.metadata.annotations or {}).get(INDEX_ANNOTATION, "0"))
            thread = threading.Thread(target=self._follow, args=(name, index), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _follow(self, pod: str, index: int) -> None:
        try:
            response = self.kube.core.read_namespaced_pod_log(
                pod, self.namespace, follow=True, _preload_content=False
            )
        except Exception:
            return
        lines = (raw.decode("utf-8", errors="replace") for raw in response.stream() if raw)
        buffer = ""
        for chunk in lines:
            buffer += chunk
            *complete, buffer = buffer.split("\n")
            self._handle(complete, index)
        self._handle([buffer], index)

    def _handle(self, lines: list[str], index: int) -> None:
        for line in lines:
            if line.startswith("Error: "):
                self.last_error = line[len("Error: ") :].strip()
        for event in iter_events(iter(lines)):
            with self.lock:
                if event.get("event") == "done":
                    self.done[index] = event
                self.on_event(index, event)


# --- journal, lock, quiesce -------------------------------------------------------------------


class ConfigMapStore:
    """The journal as a ConfigMap ``migrator-<plan>`` (key ``journal.json``).

    ``guard`` runs before every write (a run passes :meth:`LeaseLock.ensure_held`): a run that
    lost its Lease raises instead of overwriting the journal of the run that holds it now.
    """

    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        plan: str,
        guard: Callable[[], None] | None = None,
    ) -> None:
        self.kube, self.namespace, self.name = kube, namespace, f"migrator-{plan}"
        self.guard = guard

    def load(self) -> dict[str, Any]:
        found = self.kube.call(
            "reading the journal ConfigMap",
            lambda: self.kube.core.read_namespaced_config_map(self.name, self.namespace),
            missing_ok=True,
        )
        if found is None:
            return {}
        loaded: dict[str, Any] = json.loads((found.data or {}).get("journal.json") or "{}")
        return loaded

    def save(self, document: dict[str, Any]) -> None:
        if self.guard is not None:
            self.guard()
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "migrator"},
            },
            "data": {"journal.json": json.dumps(document, indent=2, sort_keys=True)},
        }
        self.kube.call(
            "writing the journal ConfigMap",
            lambda: self.kube.core.patch_namespaced_config_map(
                self.name, self.namespace, body, field_manager=FIELD_MANAGER, force=True,
                _content_type="application/apply-patch+yaml",
            ),
        )  # fmt: skip


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
                    "taking the run Lease", "POST",
                    f"{LEASES_API}/namespaces/{self.namespace}/leases", self._body(),
                )  # fmt: skip
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
        return self.kube.send("renewing the run Lease", "PUT", self.path,
                              self._body(resource_version))  # fmt: skip

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
            precondition = {"apiVersion": "v1", "kind": "DeleteOptions",
                            "preconditions": {"resourceVersion": version}}  # fmt: skip
            try:
                self.kube.send("releasing the run Lease", "DELETE", self.path, precondition,
                               missing_ok=True)  # fmt: skip
            except ConflictError:
                return  # taken over since the read: it is the other run's now


class Quiescer:
    """Cutover: suspend the Flux releases, scale the workloads to 0, wait for their pods to go."""

    def __init__(
        self, kube: KubeClient, namespace: str, plan: Plan, journal: Journal, timeout: float
    ) -> None:
        self.kube, self.namespace, self.plan, self.journal, self.timeout = (
            kube,
            namespace,
            plan,
            journal,
            timeout,
        )

    def __call__(self, volumes: list[dict[str, Any]], dry_run: bool) -> list[str]:
        workloads = sorted(
            {
                (w["kind"], w["name"])
                for v in volumes
                for w in v.get("workloads", [])
                if w["kind"] != "Pod"
            }
        )
        releases = self._releases_of(workloads)
        prefix = "(dry run) " if dry_run else ""
        notes = [f"{prefix}suspended HelmRelease {r}" for r in releases]
        notes += [f"{prefix}scaled {kind}/{name} to 0" for kind, name in workloads]
        if dry_run:
            return notes
        for release in releases:
            self._suspend(release)
        for kind, name in workloads:
            self._scale_to_zero(kind, name)
        for kind, name in workloads:
            self._wait_for_no_pods(kind, name)
        return notes

    def _releases_of(self, workloads: list[tuple[str, str]]) -> list[str]:
        wanted = {f"{kind}/{name}" for kind, name in workloads}
        return sorted(
            r["name"]
            for r in self.plan.spec.get("releases", [])
            if wanted & set(r.get("workloads", []))
        )

    def _suspend(self, release: str) -> None:
        current = self.kube.call(
            f"reading HelmRelease {release}",
            lambda: self.kube.custom.get_namespaced_custom_object(
                FLUX_HELM_GROUP, FLUX_HELM_VERSION, self.namespace, "helmreleases", release
            ),
        )
        was = bool(((current or {}).get("spec") or {}).get("suspend", False))

        def remember(document: dict[str, Any]) -> None:
            document["releases"].setdefault(release, {"previousSuspend": was})
            document["releases"][release]["suspendedByMigrator"] = True

        self.journal.update(remember)
        self.kube.call(
            f"suspending HelmRelease {release}",
            lambda: self.kube.custom.patch_namespaced_custom_object(
                FLUX_HELM_GROUP,
                FLUX_HELM_VERSION,
                self.namespace,
                "helmreleases",
                release,
                {"spec": {"suspend": True}},
            ),
        )

    def _scale_to_zero(self, kind: str, name: str) -> None:
        read, patch = self._scale_api(kind)
        scale = self.kube.call(
            f"reading the scale of {kind}/{name}", lambda: read(name, self.namespace)
        )
        replicas = int(getattr(getattr(scale, "spec", None), "replicas", 0) or 0)

        def remember(document: dict[str, Any]) -> None:
            document.setdefault("workloads", {}).setdefault(
                f"{kind}/{name}", {"previousReplicas": replicas}
            )

        self.journal.update(remember)
        self.kube.call(
            f"scaling {kind}/{name} to 0",
            lambda: patch(name, self.namespace, {"spec": {"replicas": 0}}),
        )

    def _scale_api(self, kind: str) -> tuple[Any, Any]:
        if kind == "Deployment":
            return (
                self.kube.apps.read_namespaced_deployment_scale,
                self.kube.apps.patch_namespaced_deployment_scale,
            )
        if kind == "StatefulSet":
            return (
                self.kube.apps.read_namespaced_stateful_set_scale,
                self.kube.apps.patch_namespaced_stateful_set_scale,
            )
        raise BadInputError(f"cannot scale a {kind}")

    def _wait_for_no_pods(self, kind: str, name: str) -> None:
        read = (
            self.kube.apps.read_namespaced_deployment
            if kind == "Deployment"
            else self.kube.apps.read_namespaced_stateful_set
        )
        workload = self.kube.call(f"reading {kind}/{name}", lambda: read(name, self.namespace))
        labels = (workload.spec.selector.match_labels or {}) if workload is not None else {}
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        deadline = time.monotonic() + self.timeout
        while True:
            pods = self.kube.call(
                "listing pods",
                lambda: self.kube.core.list_namespaced_pod(self.namespace, label_selector=selector),
            )
            if pods is None or not pods.items:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OperationFailedError(
                    f"the pods of {kind}/{name} did not stop within {self.timeout:.0f}s"
                )
            bounded_watch(
                self.kube.core.list_namespaced_pod, max(1, int(min(remaining, 60))),
                lambda event: event["type"] == "DELETED", self.namespace,
                label_selector=selector, resource_version=pods.metadata.resource_version,
            )  # fmt: skip


def kubernetes_context(plan: Plan, options: dict[str, Any]) -> Any:
    """RunContext for the cluster: executor, ConfigMap journal, Lease lock, quiesce hook."""
    from migrator.workflows.run import RunContext

    namespace = plan.namespace
    if not namespace:
        raise BadInputError(
            "this plan has no namespace: it was made from --source-dir; use --executor local"
        )
    kube = KubeClient.from_kubeconfig(
        options.get("kubeconfig"), options.get("context") or plan.spec["source"].get("context")
    )
    kube.require_namespace(namespace)
    timeout = float(options.get("timeout") or 24 * 3600)
    lock = LeaseLock(kube, namespace, plan.name)
    journal = Journal(ConfigMapStore(kube, namespace, plan.name, lock.ensure_held), plan.name)

    def bring_back(volumes: list[dict[str, Any]], observer: Any) -> list[str]:
        from migrator.workflows.swap import bring_back_after_cutover
        from migrator.workflows.swap_cluster import Cluster

        cluster = Cluster(kube, namespace)
        return bring_back_after_cutover(plan, volumes, journal, cluster, min(timeout, 600), observer)

    return RunContext(
        executor=KubernetesExecutor(kube, timeout, options.get("parallel")),
        executor_name="kubernetes",
        journal=journal,
        lock=lock,
        quiesce=Quiescer(kube, namespace, plan, journal, min(timeout, 600)),
        bring_back=bring_back,
    )
