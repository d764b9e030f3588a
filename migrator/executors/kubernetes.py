"""The kubernetes executor: server-side applies the rendered Jobs, watches their conditions, and
follows their pods' logs for progress events. It only runs Jobs and reports what they did: the
cluster side of a run (journal ConfigMap, Lease, quiesce) is in :mod:`migrator.workflows.runtime`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Any

from migrator.errors import OperationFailedError
from migrator.events import iter_events
from migrator.executors import EventSink, JobResult
from migrator.kube import FIELD_MANAGER, KubeClient

SPEC_HASH = "migrator.cozystack.io/spec-hash"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


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
            return JobResult(
                name=name, succeeded=False, completed_indexes=[], failed_pods=0, message=blocked
            )
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
                name,
                namespace,
                manifest,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type="application/apply-patch+yaml",
            ),
        )

    def _wait(self, namespace: str, name: str) -> tuple[dict[str, Any], str | None]:
        """Watch the Job until a terminal condition, under the timeout (no sleeping loops).

        Returns (job, None) when it finished, or (job, why) as soon as its pods cannot start
        (see :class:`StartWatch`): it is checked between watch slices of ``WATCH_SLICE`` s, each
        bounded on this side, so a half-open connection cannot outlive ``--timeout``.
        """
        blockers = StartWatch(self.kube, namespace, name)
        blocked: list[str] = []

        def done(job: dict[str, Any]) -> bool:
            if _finished(job):
                return True
            why = blockers.check(job)
            if why:
                blocked.append(why)
            return bool(why)

        job = self.kube.wait_for(
            f"watching Job {name}",
            lambda: self._get_job(namespace, name),
            done,
            time.monotonic() + self.timeout,
            self.kube.batch.list_namespaced_job,
            namespace,
            field_selector=f"metadata.name={name}",
            wake=lambda _kind, changed: _finished(changed) is not None,
            slice_seconds=WATCH_SLICE,
        )
        if job is None:
            raise OperationFailedError(f"Job {name} disappeared while it ran")
        if _finished(job):
            return job, None
        if blocked:
            return job, blocked[-1]
        waiting = f"; {blockers.waiting}" if blockers.waiting else ""
        raise OperationFailedError(
            f"Job {name} did not finish within {self.timeout:.0f}s{waiting}; re-run to keep waiting"
        )

    def _result(self, job: dict[str, Any], follower: LogFollower) -> JobResult:
        status = job.get("status") or {}
        succeeded = _finished(job) == "Complete" and not follower.unreadable
        failed = _condition(job, "Failed") or {}
        message = (
            ""
            if succeeded
            else follower.unreadable
            or follower.last_error
            or failed.get("message")
            or failed.get("reason", "")
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


WATCH_SLICE = 5  # seconds between checks for pods that cannot start
UNSCHEDULABLE_GRACE = 10.0  # a pod unschedulable this long fails the Job (not a passing state)
# Container waiting reasons that do not go away without a fix (a wrong image, a missing Secret).
STUCK_REASONS = (
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
)


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
            self.waiting = f"its pod {pod} is still waiting: {newest.reason}: {_one_line(newest.message or '')}"

    def _unschedulable(self, pod: str, conditions: list[Any]) -> str | None:
        for condition in conditions:
            if (
                condition.type == "PodScheduled"
                and condition.status == "False"
                and (condition.reason == "Unschedulable")
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
        self.unreadable = ""  # events of a newer protocol: the Job's outcome cannot be trusted
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
        try:
            events = list(iter_events(iter(lines)))
        except OperationFailedError as error:
            self.unreadable = str(error)
            return
        for event in events:
            with self.lock:
                if event.get("event") == "done":
                    self.done[index] = event
                self.on_event(index, event)
