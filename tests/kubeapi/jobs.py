"""A Job controller that runs each Job's pods on this host, executing their real commands.

Wiring: map each PVC a Job mounts to a host directory; the mapping is read at every mount, so
claims can be added later (or pass a callable ``(namespace, claim) -> Path | None``)::

    claims = {("tenant-media", "sonarr-config"): tmp_path / "config"}
    api.add_controller(JobController(claims))
    claims[("tenant-media", "radarr-config")] = tmp_path / "radarr"

What it does, as the real controller (Kubernetes 1.31+) and kubelet would: pods named
``<job>-<random5>`` (``<job>-<index>-<random5>`` for Indexed Jobs) with the Job's labels,
completion index and controller ownerReference, bound to a Node that fits their nodeSelector /
required node affinity / required pod affinity on ``kubernetes.io/hostname`` (of the Ready ones,
the one with the most preferred pod affinity weight, then the first by name); ``completions``, ``parallelism``,
``completionMode: Indexed``, ``backoffLimit`` (failed pods, or restarts under OnFailure),
``activeDeadlineSeconds`` and ``suspend``; Job status with ``active``, ``ready``,
``terminating``, ``succeeded``, ``failed``, ``completedIndexes``, ``startTime``,
``completionTime`` and the conditions SuccessCriteriaMet then Complete, or FailureTarget then
Failed (the final condition once no process of the Job is left). Deleting a pod kills its
process (SIGTERM, SIGKILL after min(terminationGracePeriodSeconds, 5 s)) and counts as a
failure; deleting the Job kills its pods; stopping the server kills every process. How a pod
runs (env, volumes, mounts, logs, pod status) is in ``kubelet.py``.

Deliberate differences:

- No delay before replacing a failed pod (the real one backs off 10 s, 20 s, ...).
- ``ttlSecondsAfterFinished``, ``podFailurePolicy``, ``successPolicy``,
  ``backoffLimitPerIndex`` and ``managedBy`` are ignored.
- Pods carry no job-tracking finalizer (deletion is immediate in this server); the controller
  remembers each pod's outcome instead, so a pod deleted after it finished still counts right.
- Binding happens once, at creation: a pod that no Node fits stays Pending (Unschedulable) even
  if a Node appears later; with no Nodes at all, pods run without ``nodeName``. Nodes without
  status count as Ready.
- Only pods this controller created are run and counted.
- A pod the apiserver refuses (Pod Security admission) gets one FailedCreate Warning event per
  distinct refusal and is retried at every pass, without the real one's backoff.
"""

from __future__ import annotations

import copy
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .admission import now
from .controllers import Controller, controlled_by, is_ready, owner_reference
from .errors import ApiError
from .kubelet import INDEX_KEY, KubeletConfig, PodRun, StoreApi, isolation_mode, record_event
from .resources import ResourceType
from .selectors import label_selector_from_spec
from .store import ObjectStore

Obj = dict[str, Any]
ClaimDirs = Mapping[tuple[str, str], Path] | Callable[[str, str], Path | None]
COMPONENT = "job-controller"
MAX_GENERATE_NAME = 58  # the apiserver's generateName prefix limit (63 minus 5 random)
TERMINAL = ("Succeeded", "Failed")
BACKOFF = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
DEADLINE = ("DeadlineExceeded", "Job was active longer than specified deadline")
COMPLETIONS = ("CompletionsReached", "Reached expected number of succeeded pods")


@dataclass
class JobState:
    """What the controller remembers of one Job (the real one keeps it in finalizers/status)."""

    succeeded: int = 0
    failed: int = 0
    completed: set[int] = field(default_factory=set)
    pods: dict[str, int | None] = field(default_factory=dict)  # uncounted pods -> index
    removed: set[str] = field(default_factory=set)  # pods deleted without it being a failure
    start_time: str | None = None
    started: float | None = None  # time.monotonic() at start_time
    deadline_armed: float | None = None
    create_error: str | None = None  # the last pod creation the apiserver refused


@dataclass(frozen=True)
class Target:
    """A decided outcome: the interim condition, then the final one."""

    interim: str
    final: str
    reason: str
    message: str


# --- pods, nodes and index helpers --------------------------------------------------------------


def completion_index(pod: Obj) -> int | None:
    """The pod's completion index annotation as an int, or None."""
    value = (pod["metadata"].get("annotations") or {}).get(INDEX_KEY, "")
    return int(value) if value.isdigit() else None


def format_indexes(indexes: Iterable[int]) -> str:
    """``{0, 1, 2, 5}`` -> ``"0-2,5"`` (the ``completedIndexes`` format)."""
    ranges: list[list[int]] = []
    for index in sorted(indexes):
        if ranges and ranges[-1][1] == index - 1:
            ranges[-1][1] = index
        else:
            ranges.append([index, index])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def _expression_matches(expression: Obj, values: Mapping[str, str]) -> bool:
    key, operator = expression["key"], expression["operator"]
    wanted, value = expression.get("values") or [], values.get(key)
    if operator in ("Gt", "Lt"):
        try:
            number, limit = int(value or ""), int(wanted[0])
        except (ValueError, IndexError):
            return False
        return number > limit if operator == "Gt" else number < limit
    return {
        "In": value is not None and value in wanted,
        "NotIn": value is None or value not in wanted,
        "Exists": value is not None,
        "DoesNotExist": value is None,
    }.get(operator, False)


def node_fits(node: Obj, spec: Obj) -> bool:
    """Whether ``node`` satisfies the pod's nodeSelector and required node affinity."""
    name = node["metadata"]["name"]
    labels = {"kubernetes.io/hostname": name, **(node["metadata"].get("labels") or {})}
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms")
    if not terms:
        return True
    return any(
        (term.get("matchExpressions") or term.get("matchFields"))
        and all(_expression_matches(e, labels) for e in term.get("matchExpressions") or [])
        and all(
            _expression_matches(f, {"metadata.name": name}) for f in term.get("matchFields") or []
        )
        for term in terms
    )


def _node_ready(node: Obj) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    return not (node.get("spec") or {}).get("unschedulable") and (
        ready is None or ready.get("status") == "True"
    )


HOSTNAME = "kubernetes.io/hostname"


def _pods_by_node(store: ObjectStore) -> dict[str, list[Obj]]:
    """The pods that count for pod affinity: bound and not finished, by node."""
    found: dict[str, list[Obj]] = {}
    for pod in store.list_objects(store.registry.by_kind("v1", "Pod"))[0]:
        node = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if node and phase not in ("Succeeded", "Failed"):
            found.setdefault(node, []).append(pod)
    return found


def _term_matches(term: Obj, pod: Obj, namespace: str) -> bool:
    """Whether ``pod`` is selected by a podAffinityTerm of a pod in ``namespace``."""
    if pod["metadata"].get("namespace") not in (term.get("namespaces") or [namespace]):
        return False
    selector = label_selector_from_spec(term.get("labelSelector"))
    return term.get("labelSelector") is not None and selector.matches(
        pod["metadata"].get("labels") or {}
    )


def _on_node(term: Obj, node: str, by_node: Mapping[str, list[Obj]], namespace: str) -> bool:
    if term.get("topologyKey") != HOSTNAME:  # only per-node topology is modelled
        return False
    return any(_term_matches(term, pod, namespace) for pod in by_node.get(node, []))


def _affinity_fits(
    node: str, required: list[Obj], by_node: Mapping[str, list[Obj]], namespace: str, labels: Obj
) -> bool:
    """Required pod affinity; a term no pod matches anywhere is met by a pod matching itself
    (the scheduler's rule that lets the first pod of a group schedule)."""
    for term in required:
        if _on_node(term, node, by_node, namespace):
            continue
        anywhere = any(_on_node(term, n, by_node, namespace) for n in by_node)
        selector = label_selector_from_spec(term.get("labelSelector"))
        if anywhere or not selector.matches(labels):
            return False
    return True


def schedule(
    store: ObjectStore, spec: Obj, namespace: str = "default", labels: Obj | None = None
) -> tuple[str | None, str | None]:
    """(node, None); (None, None) when there are no Nodes; (None, why) when none fits.

    Filters by nodeSelector, required node affinity and required pod affinity on
    ``kubernetes.io/hostname``; among the nodes left, the highest sum of preferred pod affinity
    weights wins, ties go to the first by name."""
    if spec.get("nodeName"):
        return spec["nodeName"], None
    nodes = store.list_objects(store.registry.by_kind("v1", "Node"))[0]
    if not nodes:
        return None, None
    pod_affinity = (spec.get("affinity") or {}).get("podAffinity") or {}
    required = pod_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or []
    preferred = pod_affinity.get("preferredDuringSchedulingIgnoredDuringExecution") or []
    by_node = _pods_by_node(store) if required or preferred else {}
    fitting = sorted(
        n["metadata"]["name"]
        for n in nodes
        if _node_ready(n)
        and node_fits(n, spec)
        and _affinity_fits(n["metadata"]["name"], required, by_node, namespace, labels or {})
    )
    if fitting:

        def score(node: str) -> int:
            return sum(
                int(p.get("weight", 0))
                for p in preferred
                if _on_node(p.get("podAffinityTerm") or {}, node, by_node, namespace)
            )

        return min(fitting, key=lambda n: -score(n)), None  # min keeps the first by name on ties
    return None, (
        f"0/{len(nodes)} nodes are available: {len(nodes)} node(s) didn't match "
        "Pod's node affinity/selector, or were not ready."
    )


def _index_env() -> Obj:
    path = f"metadata.labels['{INDEX_KEY}']"
    return {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {"fieldPath": path}}}


def build_pod(job: Obj, jobs: ResourceType, index: int | None, node: str | None) -> Obj:
    """The pod the Job controller creates from the Job's template (named by generateName)."""
    template = copy.deepcopy(job["spec"]["template"])
    template_meta, spec = template.get("metadata") or {}, template.get("spec") or {}
    name, uid = job["metadata"]["name"], job["metadata"]["uid"]
    labels = {
        **(template_meta.get("labels") or {}),
        "controller-uid": uid,
        "batch.kubernetes.io/controller-uid": uid,
        "job-name": name,
        "batch.kubernetes.io/job-name": name,
    }
    annotations = dict(template_meta.get("annotations") or {})
    prefix = f"{name}-"
    if index is not None:
        prefix = f"{name}-{index}-"
        labels[INDEX_KEY] = annotations[INDEX_KEY] = str(index)
        if not spec.get("hostname") and len(f"{name}-{index}") <= 63:
            spec["hostname"] = f"{name}-{index}"
        for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
            env = container.setdefault("env", [])
            if all(e.get("name") != "JOB_COMPLETION_INDEX" for e in env):
                env.append(_index_env())
    if node:
        spec["nodeName"] = node
    metadata = {
        "generateName": prefix[:MAX_GENERATE_NAME],
        "namespace": job["metadata"]["namespace"],
        "labels": labels,
        "ownerReferences": [owner_reference(job, jobs)],
    }
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def _created(pod: Obj) -> tuple[str, str]:
    return pod["metadata"]["creationTimestamp"], pod["metadata"]["name"]


def _age(stamp: str) -> float:
    started = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - started).total_seconds())


def with_condition(
    conditions: list[Obj], kind: str, status: str, reason: str, message: str
) -> list[Obj]:
    """``conditions`` with ``kind`` set (appended when new); unchanged if already so."""
    existing = next((c for c in conditions if c.get("type") == kind), None)
    if existing and (existing.get("status"), existing.get("reason")) == (status, reason):
        return conditions
    stamp = now()
    condition = {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastProbeTime": stamp,
        "lastTransitionTime": stamp,
    }
    if existing is None:
        return [*conditions, condition]
    return [condition if c is existing else c for c in conditions]


def has_condition(job: Obj, *kinds: str) -> str | None:
    """The first of ``kinds`` that is a True condition of ``job``, or None."""
    conditions = (job.get("status") or {}).get("conditions") or []
    true = {c.get("type") for c in conditions if c.get("status") == "True"}
    return next((k for k in kinds if k in true), None)


# --- the controller -----------------------------------------------------------------------------


class JobController(Controller):
    """Runs batch/v1 Jobs: creates their pods and executes each pod's command on this host.

    ``claim_dirs`` maps (namespace, claimName) to a host directory, as a mapping (kept by
    reference when mutable, so tests may add claims later; see also ``add_claim``) or a
    callable. ``path_prepend`` goes first in the containers' PATH (default: the directory of
    ``sys.executable``, so the venv's ``migrator`` and ``rclone`` resolve). ``isolation``
    forces ``"namespace"`` or ``"rewrite"`` (default: what ``kubelet.isolation_mode`` finds).
    ``images``: the images the registry has (a collection or a predicate); pods of any other
    image sit in ErrImagePull/ImagePullBackOff (default: every image pulls).
    """

    name = COMPONENT

    def __init__(
        self,
        claim_dirs: ClaimDirs,
        *,
        path_prepend: list[str] | None = None,
        isolation: str | None = None,
        max_grace_seconds: float = 5.0,
        images: Collection[str] | Callable[[str], bool] | None = None,
    ) -> None:
        super().__init__()
        self._resolver: Callable[[str, str], Path | None] | None = None
        self.claims: MutableMapping[tuple[str, str], Path] | None = None
        if isinstance(claim_dirs, MutableMapping):
            self.claims = claim_dirs
        elif isinstance(claim_dirs, Mapping):
            self.claims = dict(claim_dirs)
        else:
            self._resolver = claim_dirs
        self.path_prepend = (
            [str(p) for p in path_prepend]
            if path_prepend is not None
            else [str(Path(sys.executable).parent)]
        )
        self.isolation = isolation or isolation_mode()
        self.max_grace_seconds = max_grace_seconds
        if images is None or callable(images):
            self.image_pullable: Callable[[str], bool] = images or (lambda image: True)
        else:
            known = frozenset(images)
            self.image_pullable = known.__contains__
        self.workdir = Path(tempfile.mkdtemp(prefix="kubeapi-jobs-"))
        self._jobs: dict[str, JobState] = {}
        self._runs: dict[str, PodRun] = {}
        self._runs_lock = threading.Lock()
        self._kubelet: KubeletConfig | None = None

    def add_claim(self, namespace: str, claim: str, directory: Path) -> None:
        """Map another claim to a host directory (pods waiting for it mount it at once)."""
        if self.claims is None:
            raise TypeError("claims come from a callable; change what it returns instead")
        self.claims[(namespace, claim)] = Path(directory)

    def claim_dir(self, namespace: str, claim: str) -> Path | None:
        """The host directory of a claim, or None if it is not mapped."""
        if self._resolver is not None:
            return self._resolver(namespace, claim)
        found = (self.claims or {}).get((namespace, claim))
        return Path(found) if found is not None else None

    def processes(self) -> list[int]:
        """PIDs of the container processes still running (for tests)."""
        with self._runs_lock:
            return [pid for run in self._runs.values() if (pid := run.pid()) is not None]

    # --- reconcile -------------------------------------------------------------------------------

    def reconcile(self, store: ObjectStore) -> None:
        """Kill processes of deleted pods, then sync every Job."""
        if self._kubelet is None:
            self._kubelet = self._kubelet_config(store)
        self._reap(store)
        jobs = store.list_objects(store.registry.by_kind("batch/v1", "Job"))[0]
        for job in jobs:
            self._sync(store, job)
        self._forget({j["metadata"]["uid"] for j in jobs})

    def _kubelet_config(self, store: ObjectStore) -> KubeletConfig:
        return KubeletConfig(
            api=StoreApi(store),
            claim_dir=self.claim_dir,
            path_prepend=self.path_prepend,
            isolation=self.isolation,
            workdir=self.workdir,
            max_grace=self.max_grace_seconds,
            spawn=self.spawn,
            stopping=self.stopping,
            on_exit=self._kick,
            image_pullable=self.image_pullable,
        )

    def _kick(self) -> None:
        if self.manager is not None and not self.stopping.is_set():
            self.manager.kick()

    def _reap(self, store: ObjectStore) -> None:
        pods = store.registry.by_kind("v1", "Pod")
        with self._runs_lock:
            runs = list(self._runs.values())
        for run in runs:
            current = store.get(pods, run.namespace, run.name)
            if not run.deleted and (current is None or current["metadata"]["uid"] != run.uid):
                run.kill()

    def _forget(self, job_uids: set[str]) -> None:
        for uid in set(self._jobs) - job_uids:
            del self._jobs[uid]
        uncounted = {pod for state in self._jobs.values() for pod in state.pods}
        with self._runs_lock:
            self._runs = {
                uid: run
                for uid, run in self._runs.items()
                if not run.exited.is_set() or uid in uncounted
            }

    def _state(self, job: Obj) -> JobState:
        uid = job["metadata"]["uid"]
        if uid not in self._jobs:
            status = job.get("status") or {}
            completed = {
                int(i)
                for part in (status.get("completedIndexes") or "").split(",")
                if part
                for i in self._expand_range(part)
            }
            self._jobs[uid] = JobState(
                succeeded=status.get("succeeded", 0),
                failed=status.get("failed", 0),
                completed=completed,
            )
        return self._jobs[uid]

    @staticmethod
    def _expand_range(part: str) -> range:
        first, _, last = part.partition("-")
        return range(int(first), int(last or first) + 1)

    def _sync(self, store: ObjectStore, job: Obj) -> None:
        if has_condition(job, "Complete", "Failed"):
            return
        state = self._state(job)
        jobs = store.registry.by_kind("batch/v1", "Job")
        pods = controlled_by(store, job, store.registry.by_kind("v1", "Pod"))
        self._count(job, state, pods)
        active = [p for p in pods if self._phase(p) not in TERMINAL]
        if job["spec"].get("suspend"):
            self._suspend(store, jobs, job, state, active)
            return
        self._start(job, state)
        target = self._target(job, state, active)
        if target is not None:
            self._finish(store, jobs, job, state, active, target)
            return
        active = self._scale(store, jobs, job, state, active)
        conditions = self._conditions(job)
        if has_condition(job, "Suspended"):
            conditions = with_condition(
                conditions, "Suspended", "False", "JobResumed", "Job resumed"
            )
        self._write(store, jobs, job, self._status(job, state, active, conditions))
        self._arm_deadline(job, state)

    # --- counting --------------------------------------------------------------------------------

    def _run(self, uid: str) -> PodRun | None:
        with self._runs_lock:
            return self._runs.get(uid)

    def _phase(self, pod: Obj) -> str:
        """The pod's phase, or its run's outcome when the status write is still on its way."""
        phase: str = (pod.get("status") or {}).get("phase", "Pending")
        run = self._run(pod["metadata"]["uid"])
        return run.outcome if phase not in TERMINAL and run and run.outcome else phase

    def _count(self, job: Obj, state: JobState, pods: list[Obj]) -> None:
        """Count pods that finished or vanished since the last pass, each exactly once."""
        present = {p["metadata"]["uid"]: p for p in pods}
        for uid, index in list(state.pods.items()):
            pod, run = present.get(uid), self._run(uid)
            if pod is not None:
                phase = self._phase(pod)
            elif uid in state.removed:
                phase = "Removed"
            else:  # deleted before it finished: a failure, unless it had just succeeded
                phase = run.outcome if run and run.outcome else "Failed"
            if phase not in (*TERMINAL, "Removed"):
                continue
            del state.pods[uid]
            if phase == "Succeeded" and index is not None:
                state.completed.add(index)
            elif phase == "Succeeded":
                state.succeeded += 1
            elif phase == "Failed":
                state.failed += 1
        if job["spec"].get("completionMode") == "Indexed":
            state.succeeded = len(state.completed)

    def _start(self, job: Obj, state: JobState) -> None:
        """Remember when the Job started (kept from its status if it has one)."""
        if state.started is not None:
            return
        state.started = time.monotonic()
        state.start_time = (job.get("status") or {}).get("startTime")
        if state.start_time:  # seconds precision: the deadline may come up to 1 s early
            state.started -= _age(state.start_time)
        else:
            state.start_time = now()

    def _target(self, job: Obj, state: JobState, active: list[Obj]) -> Target | None:
        """The outcome decided earlier (interim condition stored) or now, or None."""
        conditions = (job.get("status") or {}).get("conditions") or []
        for condition in conditions:
            if condition.get("status") == "True" and condition.get("type") in (
                "FailureTarget",
                "SuccessCriteriaMet",
            ):
                final = "Failed" if condition["type"] == "FailureTarget" else "Complete"
                return Target(
                    condition["type"],
                    final,
                    condition.get("reason", ""),
                    condition.get("message", ""),
                )
        spec = job["spec"]
        if self._past_backoff_limit(spec, state, active):
            return Target("FailureTarget", "Failed", *BACKOFF)
        deadline = spec.get("activeDeadlineSeconds")
        if (
            deadline is not None
            and state.started is not None
            and (time.monotonic() - state.started >= deadline)
        ):
            return Target("FailureTarget", "Failed", *DEADLINE)
        if self._complete(spec, state, active):
            return Target("SuccessCriteriaMet", "Complete", *COMPLETIONS)
        return None

    @staticmethod
    def _past_backoff_limit(spec: Obj, state: JobState, active: list[Obj]) -> bool:
        limit = spec.get("backoffLimit", 6)
        if spec["template"]["spec"].get("restartPolicy") == "OnFailure":
            restarts = sum(
                c.get("restartCount", 0)
                for p in active
                for c in (p.get("status") or {}).get("containerStatuses") or []
            )
            if restarts > 0 if limit == 0 else restarts >= limit:
                return True
        return bool(state.failed > limit)

    @staticmethod
    def _complete(spec: Obj, state: JobState, active: list[Obj]) -> bool:
        completions = spec.get("completions")
        if spec.get("completionMode") == "Indexed":
            return set(range(completions or 0)) <= state.completed
        if completions is None:
            return state.succeeded > 0 and not active
        return bool(state.succeeded >= completions)

    # --- acting ----------------------------------------------------------------------------------

    def _scale(
        self, store: ObjectStore, jobs: ResourceType, job: Obj, state: JobState, active: list[Obj]
    ) -> list[Obj]:
        """Create or delete pods so the right ones are active; returns the active pods."""
        spec = job["spec"]
        if spec.get("completionMode") == "Indexed":
            return self._scale_indexed(store, jobs, job, state, active)
        completions, parallelism = spec.get("completions"), spec.get("parallelism", 1)
        if completions is None:
            wanted = len(active) if state.succeeded else parallelism
        else:
            wanted = max(0, min(parallelism, completions - state.succeeded))
        active = sorted(active, key=_created)
        for pod in active[wanted:]:
            self._delete_pod(store, job, state, pod, failure=False)
        active = active[:wanted]
        for _ in range(wanted - len(active)):
            created = self._create_pod(store, jobs, job, state, None)
            if created is None:
                break
            active.append(created)
        return active

    def _scale_indexed(
        self, store: ObjectStore, jobs: ResourceType, job: Obj, state: JobState, active: list[Obj]
    ) -> list[Obj]:
        completions, parallelism = (
            job["spec"].get("completions") or 0,
            job["spec"].get("parallelism", 1),
        )
        by_index: dict[int, Obj] = {}
        for pod in sorted(active, key=_created):
            index = completion_index(pod)
            if (
                index is None
                or index >= completions
                or index in state.completed
                or (index in by_index)
                or len(by_index) >= parallelism
            ):
                self._delete_pod(store, job, state, pod, failure=False)
            else:
                by_index[index] = pod
        pending = [i for i in range(completions) if i not in state.completed and i not in by_index]
        for index in pending[: max(0, parallelism - len(by_index))]:
            created = self._create_pod(store, jobs, job, state, index)
            if created is None:
                break
            by_index[index] = created
        return list(by_index.values())

    def _create_pod(
        self, store: ObjectStore, jobs: ResourceType, job: Obj, state: JobState, index: int | None
    ) -> Obj | None:
        """Create one pod and start it; None when the apiserver refuses it (admission, quota):
        then, like the real controller, a FailedCreate Warning event on the Job says why (once
        per distinct refusal: the real one's event correlator counts repeats) and it retries."""
        pods = store.registry.by_kind("v1", "Pod")
        template = job["spec"]["template"]
        node, unschedulable = schedule(
            store,
            template.get("spec") or {},
            job["metadata"]["namespace"],
            (template.get("metadata") or {}).get("labels") or {},
        )
        try:
            pod = store.create(pods, build_pod(job, jobs, index, node))
        except ApiError as error:
            if error.code not in (403, 422):
                raise
            message = f"Error creating: {error.message}"
            if state.create_error != message:
                state.create_error = message
                record_event(store, job, "FailedCreate", message, component=COMPONENT, warning=True)
            return None
        state.create_error = None
        state.pods[pod["metadata"]["uid"]] = index
        record_event(
            store,
            job,
            "SuccessfulCreate",
            f"Created pod: {pod['metadata']['name']}",
            component=COMPONENT,
        )
        if unschedulable:
            self._mark_unschedulable(store, pods, pod, unschedulable)
            return pod
        assert self._kubelet is not None
        run = PodRun(self._kubelet, pod, job["metadata"]["uid"])
        with self._runs_lock:
            self._runs[run.uid] = run
        run.start()
        return pod

    @staticmethod
    def _mark_unschedulable(store: ObjectStore, pods: ResourceType, pod: Obj, message: str) -> None:
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastTransitionTime": now(),
        }
        metadata = pod["metadata"]
        store.update(
            pods,
            metadata["namespace"],
            metadata["name"],
            lambda current: {
                **(current or pod),
                "status": {**(current or pod).get("status", {}), "conditions": [condition]},
            },
            subresource="status",
        )
        record_event(
            store, pod, "FailedScheduling", message, component="default-scheduler", warning=True
        )

    def _delete_pod(
        self, store: ObjectStore, job: Obj, state: JobState, pod: Obj, *, failure: bool
    ) -> None:
        uid, metadata = pod["metadata"]["uid"], pod["metadata"]
        if not failure:
            state.removed.add(uid)
        try:
            store.delete(
                store.registry.by_kind("v1", "Pod"), metadata["namespace"], metadata["name"]
            )
        except ApiError as error:
            if error.code != 404:
                raise
        if run := self._run(uid):
            run.kill()
        record_event(
            store, job, "SuccessfulDelete", f"Deleted pod: {metadata['name']}", component=COMPONENT
        )

    def _finish(
        self,
        store: ObjectStore,
        jobs: ResourceType,
        job: Obj,
        state: JobState,
        active: list[Obj],
        target: Target,
    ) -> None:
        """Stop active pods, store the interim condition; the final one once none runs."""
        success = target.final == "Complete"
        for pod in active:
            self._delete_pod(store, job, state, pod, failure=not success)
        stored = has_condition(job, target.interim) is not None
        conditions = with_condition(
            self._conditions(job), target.interim, "True", target.reason, target.message
        )
        finishing = stored and not self._live_runs(job) and not state.pods
        if finishing:
            conditions = with_condition(
                conditions, target.final, "True", target.reason, target.message
            )
        status = self._status(job, state, [], conditions)
        if finishing and success:
            status["completionTime"] = now()
        self._write(store, jobs, job, status)
        if finishing:
            record_event(
                store,
                job,
                "Completed" if success else target.reason,
                "Job completed" if success else target.message,
                component=COMPONENT,
                warning=not success,
            )

    def _suspend(
        self, store: ObjectStore, jobs: ResourceType, job: Obj, state: JobState, active: list[Obj]
    ) -> None:
        for pod in active:
            self._delete_pod(store, job, state, pod, failure=False)
        state.start_time = state.started = None
        conditions = with_condition(
            self._conditions(job), "Suspended", "True", "JobSuspended", "Job suspended"
        )
        self._write(store, jobs, job, self._status(job, state, [], conditions))

    def _arm_deadline(self, job: Obj, state: JobState) -> None:
        """Wake the controller when activeDeadlineSeconds passes (nothing else would)."""
        deadline = job["spec"].get("activeDeadlineSeconds")
        if deadline is None or state.started is None or state.deadline_armed == state.started:
            return
        state.deadline_armed = state.started
        remaining = max(0.0, state.started + deadline - time.monotonic())

        def wake_at_deadline() -> None:
            if not self.stopping.wait(remaining):
                self._kick()

        self.spawn(wake_at_deadline, f"deadline-{job['metadata']['name']}")

    # --- status ----------------------------------------------------------------------------------

    def _live_runs(self, job: Obj) -> list[PodRun]:
        uid = job["metadata"]["uid"]
        with self._runs_lock:
            return [r for r in self._runs.values() if r.owner_uid == uid and not r.exited.is_set()]

    @staticmethod
    def _conditions(job: Obj) -> list[Obj]:
        return list((job.get("status") or {}).get("conditions") or [])

    def _status(self, job: Obj, state: JobState, active: list[Obj], conditions: list[Obj]) -> Obj:
        """The Job's status from what is remembered and what runs (zero counts omitted)."""
        terminating = sum(r.deleted for r in self._live_runs(job))
        status: Obj = {
            "ready": sum(is_ready(p) for p in active),
            "terminating": terminating,
            "uncountedTerminatedPods": {},
        }
        if state.start_time:
            status["startTime"] = state.start_time
        for key, value in (
            ("active", len(active)),
            ("succeeded", state.succeeded),
            ("failed", state.failed),
        ):
            if value:
                status[key] = value
        if job["spec"].get("completionMode") == "Indexed" and state.completed:
            status["completedIndexes"] = format_indexes(state.completed)
        if conditions:
            status["conditions"] = conditions
        return status

    @staticmethod
    def _write(store: ObjectStore, jobs: ResourceType, job: Obj, status: Obj) -> None:
        if job.get("status") == status:
            return
        metadata = job["metadata"]
        store.update(
            jobs,
            metadata["namespace"],
            metadata["name"],
            lambda current: {**(current or job), "status": status},
            subresource="status",
        )

    # --- stopping --------------------------------------------------------------------------------

    def stop(self, timeout: float = 5.0) -> None:
        """Kill every process (SIGTERM, SIGKILL after the grace period), then stop threads."""
        self.stopping.set()
        with self._runs_lock:
            runs = list(self._runs.values())
        for run in runs:
            run.terminate()
        signalled = time.monotonic()
        for run in runs:
            run.finish_killing(signalled + run.grace)
        for run in runs:
            run.exited.wait(timeout)
        super().stop(timeout)
        shutil.rmtree(self.workdir, ignore_errors=True)
