"""The local executor: runs a Job's container command on this host, exactly as rendered.

Each volume mount is mapped to a directory (the plan's source directories, temporary directories
for emptyDirs), ``$(VAR)`` references and Secret keys are resolved like the kubelet would, and the
pods of an Indexed Job run with the Job's parallelism. A failed pod is retried within backoffLimit.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from migrator.errors import BadInputError, Outcome
from migrator.events import iter_events
from migrator.executors import EventSink, JobResult, completions, is_indexed
from migrator.manifests.pod import BACKUP_CREDENTIALS_SECRET
from migrator.objectstore import BACKUP_ENV_PREFIX
from migrator.podspec import COMPLETION_INDEX_FIELD, container_command, container_env

INTERRUPTED = "interrupted: progress saved, re-run to resume"
# Local mode credentials: the Jobs reference Secret keys; on this host they come from AWS_*.
SECRET_KEY_ENV = {
    "accessKey": "AWS_ACCESS_KEY_ID",
    "secretKey": "AWS_SECRET_ACCESS_KEY",
    "endpoint": "AWS_ENDPOINT_URL",
}


def environment_secret(name: str, key: str) -> str:
    """Resolve a secretKeyRef from this host's AWS_* environment (local mode); the off-site
    backups' Secret from MIGRATOR_BACKUP_AWS_*."""
    variable = SECRET_KEY_ENV.get(key)
    if variable and name == BACKUP_CREDENTIALS_SECRET:
        variable = BACKUP_ENV_PREFIX + variable
    value = os.environ.get(variable) if variable else None
    if not value:
        raise BadInputError(
            f"the Job needs key {key!r} of Secret {name!r}: set {variable or key.upper()} in the environment"
        )
    return value


def local_claims(volumes: Iterable[Mapping[str, Any]]) -> dict[str, Path]:
    """Claim name -> directory for the volumes of a ``--source-dir`` plan (what the Jobs mount).

    ``volumes``: :class:`migrator.planmodel.PlanVolume`s, or plain dicts from the modules not
    converted to the plan model yet (backup/workflow.py, #14)."""
    return {
        # no source.pvc: the claim is named after the volume (what manifests.py renders)
        v["source"].get("pvc", v["name"]): Path(v["source"]["path"])
        for v in volumes
        if v["source"].get("path")
    }


class LocalExecutor:
    """Runs Jobs as local processes. ``claims`` maps PVC names to host directories."""

    def __init__(self, claims: Mapping[str, Path], parallelism: int | None = None) -> None:
        self.claims = dict(claims)
        self.parallelism = parallelism
        self.processes: set[subprocess.Popen[str]] = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def run_job(
        self,
        manifest: dict[str, Any],
        on_event: EventSink,
        skip_indexes: frozenset[int] = frozenset(),
    ) -> JobResult:
        spec = manifest["spec"]
        indexes = [i for i in range(completions(manifest)) if i not in skip_indexes]
        workers = max(
            1, min(self.parallelism or int(spec.get("parallelism") or 1), len(indexes) or 1)
        )
        budget = _RetryBudget(int(spec.get("backoffLimit", 6)))
        result = JobResult(name=manifest["metadata"]["name"], succeeded=True)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(self._run_index, manifest, i, on_event, budget) for i in indexes]
            try:
                # Wake up often: Python runs signal handlers in the main thread only.
                while not all(f.done() for f in futures):
                    wait(futures, timeout=0.25)
            except KeyboardInterrupt:
                self.terminate()  # no retries after Ctrl-C; the pods save their progress and stop
                raise
            outcomes = [f.result() for f in futures]
        for index, (ok, message, done) in zip(indexes, outcomes, strict=True):
            if ok:
                result.completed_indexes.append(index)
                result.done_events.extend(done)
            else:
                result.succeeded = False
                result.message = message
        result.failed_pods = budget.failures
        return result

    def _run_index(
        self, manifest: dict[str, Any], index: int, on_event: EventSink, budget: _RetryBudget
    ) -> tuple[bool, str, list[dict[str, Any]]]:
        while True:
            ok, message, done = self._run_pod(manifest, index, on_event)
            if message == INTERRUPTED:
                self.stopping.set()  # a pod stopped by a signal is not a failure to retry
            if ok or self.stopping.is_set() or not budget.take():
                return ok, message, done

    def _run_pod(
        self, manifest: dict[str, Any], index: int, on_event: EventSink
    ) -> tuple[bool, str, list[dict[str, Any]]]:
        pod = manifest["spec"]["template"]["spec"]
        [container] = pod["containers"]
        with tempfile.TemporaryDirectory(prefix="migrator-pod-") as scratch:
            mounts = self._mounts(pod, container, Path(scratch))
            fields = {COMPLETION_INDEX_FIELD: str(index)} if is_indexed(manifest) else {}
            env = container_env(container, environment_secret, fields)
            if is_indexed(manifest):
                env.setdefault("JOB_COMPLETION_INDEX", str(index))
            command = [_map_path(part, mounts) for part in container_command(container, env)]
            env = {name: _map_path(value, mounts) for name, value in env.items()}
            return self._execute(command, env, index, on_event)

    def _mounts(
        self, pod: dict[str, Any], container: dict[str, Any], scratch: Path
    ) -> dict[str, str]:
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        mounts: dict[str, str] = {}
        for mount in container.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                if claim not in self.claims:
                    raise BadInputError(f"no local directory for claim {claim!r}")
                mounts[mount["mountPath"]] = str(self.claims[claim])
            elif "hostPath" in volume:  # this host is the node
                mounts[mount["mountPath"]] = volume["hostPath"]["path"]
            else:
                host = scratch / mount["name"]
                host.mkdir(parents=True, exist_ok=True)
                mounts[mount["mountPath"]] = str(host)
        return mounts

    def _execute(
        self, command: list[str], env: dict[str, str], index: int, on_event: EventSink
    ) -> tuple[bool, str, list[dict[str, Any]]]:
        child_env = {**_base_environment(), **env}
        executable = shutil.which(command[0], path=child_env["PATH"]) or command[0]
        tail: collections.deque[str] = collections.deque(maxlen=20)
        done: list[dict[str, Any]] = []
        process = subprocess.Popen(
            [executable, *command[1:]],
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        with self.lock:
            self.processes.add(process)
        stderr_reader = threading.Thread(
            target=lambda: tail.extend(process.stderr or []), daemon=True
        )
        stderr_reader.start()
        try:
            for event in iter_events(iter(process.stdout or [])):
                if event.get("event") == "done":
                    done.append(event)
                on_event(index, event)
            code = process.wait()
            stderr_reader.join()
        finally:
            with self.lock:
                self.processes.discard(process)
        if code in (int(Outcome.INTERRUPTED), -signal.SIGINT, -signal.SIGTERM):
            return False, INTERRUPTED, done
        message = _last_error(list(tail)) if code else ""
        return code == 0, message, done

    def terminate(self) -> None:
        """Stop every running pod process (on Ctrl-C); nothing is retried after this."""
        self.stopping.set()
        with self.lock:
            for process in self.processes:
                process.terminate()


class _RetryBudget:
    """backoffLimit: the number of pod failures a Job tolerates, shared by its indexes."""

    def __init__(self, limit: int) -> None:
        self.limit, self.failures = limit, 0
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            self.failures += 1
            return self.failures <= self.limit


def _map_path(value: str, mounts: Mapping[str, str]) -> str:
    """Replace a container path under a mount with the host directory mounted there."""
    for mount_path in sorted(mounts, key=len, reverse=True):
        if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
            return mounts[mount_path] + value[len(mount_path.rstrip("/")) :]
    return value


def _base_environment() -> dict[str, str]:
    """This host's PATH with our own bin directory first, so ``migrator`` and ``rclone`` resolve."""
    # S3 settings come only from the Job's env, as in a pod (the off-site keys too)
    prefixes = ("AWS_", "RCLONE_", BACKUP_ENV_PREFIX + "AWS_")
    base = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    bin_dir = str(Path(sys.executable).parent)
    base["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    return base


def _last_error(lines: list[str]) -> str:
    for line in reversed(lines):
        if line.startswith("Error:"):
            return line.strip()[len("Error: ") :]
    return lines[-1].strip() if lines else "the pod failed"
