"""The process kubelet's pod runner: runs one pod's container as a local process group.

What the container gets, as from a real kubelet: the env of its spec (``value`` with ``$(VAR)``
expansion, ``valueFrom`` Secret/ConfigMap keys and downward-API fields, ``envFrom``), its
command and args expanded from that env, and its volumes (PVCs mapped to host directories by
the caller, ``emptyDir``, ``secret``, ``configMap``, ``hostPath``) at their mount paths. Nothing
else of the test process leaks in: the environment is that plus PATH, HOME, HOSTNAME and LANG.

Two ways to put volumes at their mount paths, chosen once per process (``isolation_mode``):

- ``namespace`` (root with CAP_SYS_ADMIN, the normal case here and in CI): the command runs under
  ``unshare --mount --uts --propagation private`` and ``container_init.py`` builds a root where
  each volume is bind-mounted at its path (read-only mounts refuse writes), ``/tmp`` is fresh
  per pod, ``readOnlyRootFilesystem`` is honoured, and the hostname is the pod's. No mountpoint
  is created on the host. The rest of the host's tree stands in for the image: HOME=/root is
  the host's (kept visible: interpreters such as pyenv's live there), and ``path_prepend``
  directories that a mount would hide (a ``/tmp`` emptyDir over ``tmp_path``) are bound back
  read-only.
- ``rewrite`` (fallback): the command runs on the host; arguments, env values and workingDir
  that start with a mount path are rewritten to the host directory, HOME and TMPDIR point at
  per-pod directories. Read-only mounts and readOnlyRootFilesystem are not enforced.

Images: every image pulls unless the kubelet was given the images its registry has
(``ProcessKubelet(images=...)``) or the image is in its ``unpublished`` set; another one leaves the pod Pending in ErrImagePull, then
ImagePullBackOff, with the kubelet's events, until it appears or the pod is deleted.

Deliberate differences: securityContext users and capabilities are ignored (commands run as
root); ``restartPolicy: OnFailure`` restarts at once (no CrashLoopBackOff delay); a volume that
cannot be set up (unmapped claim, missing Secret) keeps the pod Pending with a FailedMount event
and is retried every 0.1 s; a claim whose access modes are only ReadWriteOnce(Pod) and that an
unfinished pod on another node uses keeps the pod Pending with the attach/detach controller's
FailedAttachVolume "Multi-Attach error" event until that pod is gone (the real controller also
waits for the detach); a missing env Secret/ConfigMap key keeps it Pending with its
container waiting in CreateContainerConfigError (a Failed event says why), retried every 0.5 s.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

Obj = dict[str, Any]


class PodApi(Protocol):
    """What a pod run reads from and writes to the API (tests/kubelet/process.py answers it
    over the real API server)."""

    def read(self, kind: str, namespace: str, name: str) -> Obj | None:
        """A core/v1 object (Secret, ConfigMap, PersistentVolumeClaim), or None if missing."""

    def pods(self, namespace: str) -> list[Obj]:
        """Every pod of ``namespace``."""

    def write_status(self, namespace: str, name: str, uid: str, status: Obj) -> bool:
        """Replace a pod's status; False when the pod is gone (or replaced by one with another
        uid, as a StatefulSet's pod is)."""

    def record_event(self, event: Obj) -> None:
        """Create a core/v1 Event (best effort: its namespace may be gone)."""

    def append_log(self, namespace: str, name: str, container: str, text: str) -> None:
        """Append ``text`` to the container's log."""

    def service_account_token(self, pod: Obj, audience: str | None, seconds: int) -> str:
        """A TokenRequest for the pod's ServiceAccount, bound to the pod."""


def now() -> str:
    """The current time in the API's RFC 3339 format (second precision, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ip(prefix: str, seed: str) -> str:
    number = zlib.crc32(seed.encode())
    return f"{prefix}.{number % 250}.{number // 250 % 250 + 2}"


def running_pod_status(pod: Obj) -> Obj:
    """The status of a pod whose containers all started and are ready."""
    stamp, spec = now(), pod["spec"]
    host_ip = _ip("10.0", spec.get("nodeName") or "node")
    pod_ip = _ip("10.244", pod["metadata"]["uid"])
    conditions = [
        {"type": kind, "status": "True", "lastTransitionTime": stamp}
        for kind in (
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        )
    ]
    containers = [
        {
            "name": c["name"],
            "image": c.get("image", ""),
            "imageID": f"{c.get('image', '')}@sha256:"
            + hashlib.sha256(str(c.get("image")).encode()).hexdigest(),
            "containerID": "containerd://"
            + hashlib.sha256((pod["metadata"]["uid"] + c["name"]).encode()).hexdigest(),
            "ready": True,
            "started": True,
            "restartCount": 0,
            "state": {"running": {"startedAt": stamp}},
        }
        for c in spec.get("containers", [])
    ]
    return {
        **pod.get("status", {}),
        "phase": "Running",
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": stamp,
        "containerStatuses": containers,
    }


ClaimResolver = Callable[[str, str], Path | None]
INIT_SCRIPT = Path(__file__).with_name("container_init.py")
DEFAULT_PATH = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
INIT_FAILED_EXIT_CODE = 128  # what runc reports for a container that could not start
VOLUME_RETRY_SECONDS = 0.1
IMAGE_RETRY_SECONDS = 0.5  # the real kubelet backs off 10 s, 20 s, ... up to 5 min
LOG_DRAIN_SECONDS = 2.0
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_FIELD_KEY = re.compile(r"^metadata\.(labels|annotations)\['([^']*)'\]$")


class ContainerConfigError(Exception):
    """The container's env cannot be built (missing Secret, key, unsupported field)."""


class VolumeError(Exception):
    """A volume cannot be set up yet; the pod stays Pending and it is retried."""

    reason = "FailedMount"
    component = "kubelet"


class AttachError(VolumeError):
    """An RWO volume is attached to another node (the attach/detach controller's Multi-Attach)."""

    reason = "FailedAttachVolume"
    component = "attachdetach-controller"


class StartError(Exception):
    """The container process could not be started (exec or mount failure)."""


# --- $(VAR) expansion and env ---------------------------------------------------------------


def expand(text: str, env: Mapping[str, str]) -> str:
    """Expand ``$(VAR)`` exactly like the kubelet (``third_party/forked/golang/expansion``).

    ``$$`` is a literal ``$``; an unknown ``$(VAR)`` stays as written; ``$`` followed by any
    other character (or an unterminated ``$(``) is kept as is.
    """
    out: list[str] = []
    checkpoint, cursor = 0, 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            rest = text[cursor + 1 :]
            if rest[0] == "$":
                out.append("$")
                advance = 1
            elif rest[0] == "(" and (end := rest.find(")", 1)) != -1:
                name = rest[1:end]
                out.append(env.get(name, f"$({name})"))
                advance = end + 1
            else:
                out.append("$" + rest[0])
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + text[checkpoint:]


def field_value(pod: Obj, path: str) -> str:
    """A downward-API ``fieldRef`` value; raises ContainerConfigError for unsupported paths."""
    metadata, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    if match := _FIELD_KEY.match(path):
        return str((metadata.get(match.group(1)) or {}).get(match.group(2), ""))
    values = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
    }
    if path not in values:
        raise ContainerConfigError(f"unsupported fieldRef fieldPath {path!r}")
    return str(values[path] or "")


def _object_data(api: PodApi, kind: str, namespace: str, name: str) -> dict[str, bytes] | None:
    """The decoded data of a Secret or ConfigMap, or None if it does not exist."""
    obj = api.read(kind, namespace, name)
    if obj is None:
        return None
    data = {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}
    for key, value in (obj.get("data") or {}).items():
        data[key] = base64.b64decode(value) if kind == "Secret" else str(value).encode()
    return data


def _key_ref(api: PodApi, namespace: str, kind: str, ref: Obj) -> str | None:
    """The value of a ``secretKeyRef``/``configMapKeyRef``; None when optional and missing."""
    name, key = ref.get("name", ""), ref["key"]
    data = _object_data(api, kind, namespace, name)
    if data is not None and key in data:
        return data[key].decode("utf-8", "replace")
    if ref.get("optional"):
        return None
    if data is None:
        raise ContainerConfigError(f'{kind.lower()} "{name}" not found')
    raise ContainerConfigError(f"couldn't find key {key} in {kind} {namespace}/{name}")


def _value_from(api: PodApi, pod: Obj, source: Obj) -> str | None:
    namespace = pod["metadata"]["namespace"]
    if "secretKeyRef" in source:
        return _key_ref(api, namespace, "Secret", source["secretKeyRef"])
    if "configMapKeyRef" in source:
        return _key_ref(api, namespace, "ConfigMap", source["configMapKeyRef"])
    if "fieldRef" in source:
        return field_value(pod, source["fieldRef"]["fieldPath"])
    raise ContainerConfigError(f"unsupported valueFrom {sorted(source)}")


def _env_from(api: PodApi, namespace: str, source: Obj) -> dict[str, str]:
    kind, ref = (
        ("ConfigMap", source["configMapRef"])
        if "configMapRef" in source
        else ("Secret", source.get("secretRef") or {})
    )
    data = _object_data(api, kind, namespace, ref.get("name", ""))
    if data is None:
        if ref.get("optional"):
            return {}
        raise ContainerConfigError(f'{kind.lower()} "{ref.get("name", "")}" not found')
    prefix = source.get("prefix", "")
    return {
        prefix + k: v.decode("utf-8", "replace")
        for k, v in data.items()
        if _ENV_NAME.match(prefix + k)
    }


def container_env(api: PodApi, pod: Obj, container: Obj) -> dict[str, str]:
    """The env the kubelet gives ``container``: ``envFrom`` first, then ``env`` in order.

    ``value`` is expanded against the variables defined before it; raises ContainerConfigError.
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        env.update(_env_from(api, pod["metadata"]["namespace"], source))
    for variable in container.get("env") or []:
        if "valueFrom" in variable:
            value = _value_from(api, pod, variable["valueFrom"])
            if value is None:
                continue
        else:
            value = expand(str(variable.get("value", "")), env)
        env[variable["name"]] = value
    return env


# --- volumes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Volume:
    """A pod volume, as a host directory."""

    path: Path
    read_only: bool = False


@dataclass(frozen=True)
class Mount:
    """A host path to bind at ``target`` in the container."""

    source: Path
    target: str
    read_only: bool


def _write_keys(data: dict[str, bytes], spec: Obj, directory: Path) -> None:
    """Files of a secret/configMap volume: every key, or just ``items``, with their modes."""
    directory.mkdir(parents=True, exist_ok=True)
    items = spec.get("items") or [{"key": k, "path": k} for k in data]
    for item in items:
        if item["key"] not in data:
            if spec.get("optional"):
                continue
            raise VolumeError(f"references non-existent key {item['key']}")
        target = directory / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data[item["key"]])
        target.chmod(item.get("mode", spec.get("defaultMode", 0o644)))


def _key_volume(api: PodApi, pod: Obj, volume: Obj, directory: Path) -> Volume:
    kind, spec = (
        ("Secret", volume["secret"]) if "secret" in volume else ("ConfigMap", volume["configMap"])
    )
    name = spec.get("secretName") if kind == "Secret" else spec.get("name")
    data = _object_data(api, kind, pod["metadata"]["namespace"], name or "")
    if data is None and not spec.get("optional"):
        raise VolumeError(f'{kind.lower()} "{name}" not found')
    _write_keys(data or {}, spec, directory)
    return Volume(directory, read_only=True)


def _claim_volume(claim_dir: ClaimResolver, namespace: str, volume: Obj) -> Volume:
    source = volume["persistentVolumeClaim"]
    claim = source["claimName"]
    path = claim_dir(namespace, claim)
    if path is None or not Path(path).is_dir():
        where = "no host directory is mapped" if path is None else f"{path} is not a directory"
        raise VolumeError(  # worded as the kubelet's MountVolume.SetUp failures are
            f'MountVolume.SetUp failed for volume "{volume["name"]}" : '
            f"{where} for PersistentVolumeClaim {namespace}/{claim}"
        )
    return Volume(Path(path), read_only=bool(source.get("readOnly")))


def _projected_volume(api: PodApi, pod: Obj, spec: Obj, directory: Path) -> Volume:
    """A ``projected`` volume (what the ServiceAccount admission adds as ``kube-api-access-*``):
    a bound token, ConfigMap and Secret keys, downward-API fields."""
    namespace = pod["metadata"]["namespace"]
    files: dict[str, bytes] = {}
    for source in spec.get("sources") or []:
        if "serviceAccountToken" in source:
            token = source["serviceAccountToken"]
            try:
                issued = api.service_account_token(
                    pod, token.get("audience"), int(token.get("expirationSeconds", 3600))
                )
            except Exception as error:  # the kubelet retries: the account may come, or the pod go
                raise VolumeError(f"failed to fetch token: {error}") from error
            files[token["path"]] = issued.encode()
        elif "configMap" in source or "secret" in source:
            kind, ref = (
                ("ConfigMap", source["configMap"])
                if "configMap" in source
                else ("Secret", source["secret"])
            )
            data = _object_data(api, kind, namespace, ref.get("name", ""))
            if data is None:
                if ref.get("optional"):
                    continue
                raise VolumeError(f'{kind.lower()} "{ref.get("name", "")}" not found')
            for item in ref.get("items") or [{"key": k, "path": k} for k in data]:
                if item["key"] in data:
                    files[item["path"]] = data[item["key"]]
                elif not ref.get("optional"):
                    raise VolumeError(f"references non-existent key {item['key']}")
        elif "downwardAPI" in source:
            for item in source["downwardAPI"].get("items") or []:
                if "fieldRef" not in item:
                    raise VolumeError("only fieldRef items are supported by the test kubelet")
                try:
                    files[item["path"]] = field_value(pod, item["fieldRef"]["fieldPath"]).encode()
                except ContainerConfigError as error:
                    raise VolumeError(str(error)) from error
    _write_keys(files, {"defaultMode": spec.get("defaultMode", 0o644)}, directory)
    return Volume(directory, read_only=True)


def _one_volume(
    api: PodApi, pod: Obj, volume: Obj, claim_dir: ClaimResolver, pod_dir: Path
) -> Volume:
    directory = pod_dir / "volumes" / volume["name"]
    if "persistentVolumeClaim" in volume:
        return _claim_volume(claim_dir, pod["metadata"]["namespace"], volume)
    if "emptyDir" in volume:
        directory.mkdir(parents=True, exist_ok=True)
        return Volume(directory)
    if "secret" in volume or "configMap" in volume:
        return _key_volume(api, pod, volume, directory)
    if "projected" in volume:
        return _projected_volume(api, pod, volume["projected"], directory)
    if "hostPath" in volume:
        path = Path(volume["hostPath"]["path"])
        if not path.exists():
            raise VolumeError(f"hostPath {path} does not exist")
        return Volume(path)
    kinds = sorted(k for k in volume if k != "name")
    raise VolumeError(f"volume type {kinds} is not supported by the test kubelet")


SINGLE_NODE_MODES = {"ReadWriteOnce", "ReadWriteOncePod"}


def _claims(pod: Obj) -> list[str]:
    volumes = (pod.get("spec") or {}).get("volumes") or []
    return [
        v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v
    ]


def check_attachable(api: PodApi, pod: Obj) -> None:
    """Raise AttachError when a claim of ``pod`` that only one node may attach (RWO) is used by
    an unfinished pod on another node, as the attach/detach controller reports it."""
    namespace, node = pod["metadata"]["namespace"], (pod.get("spec") or {}).get("nodeName")
    if not node:
        return
    others = [
        p
        for p in api.pods(namespace)
        if (p.get("spec") or {}).get("nodeName") not in (None, node)
        and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    ]
    for claim in _claims(pod):
        found = api.read("PersistentVolumeClaim", namespace, claim) or {}
        modes = set((found.get("spec") or {}).get("accessModes") or [])
        users = sorted(p["metadata"]["name"] for p in others if claim in _claims(p))
        if modes and modes <= SINGLE_NODE_MODES and users:
            volume = (found.get("spec") or {}).get("volumeName") or claim
            raise AttachError(
                f'Multi-Attach error for volume "{volume}" Volume is already used by pod(s) '
                + ", ".join(users)
            )


def resolve_volumes(
    api: PodApi, pod: Obj, claim_dir: ClaimResolver, pod_dir: Path
) -> dict[str, Volume]:
    """Every volume of ``pod`` as a host directory; raises VolumeError (with the volume name)."""
    check_attachable(api, pod)
    volumes = {}
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        try:
            volumes[volume["name"]] = _one_volume(api, pod, volume, claim_dir, pod_dir)
        except VolumeError as error:
            raise VolumeError(
                f'MountVolume.SetUp failed for volume "{volume["name"]}" : {error}'
            ) from error
    return volumes


def container_mounts(container: Obj, volumes: Mapping[str, Volume]) -> list[Mount]:
    """The container's volumeMounts as host sources, parents before children."""
    mounts = []
    for spec in container.get("volumeMounts") or []:
        volume = volumes[spec["name"]]
        source = volume.path
        if sub_path := spec.get("subPath"):
            if PurePosixPath(sub_path).is_absolute() or ".." in PurePosixPath(sub_path).parts:
                raise ContainerConfigError(
                    f"subPath {sub_path!r} must be a relative path without '..'"
                )
            source = source / sub_path
            if not source.exists():
                source.mkdir(parents=True)
        read_only = bool(spec.get("readOnly")) or volume.read_only
        mounts.append(Mount(source, spec["mountPath"], read_only))
    return sorted(mounts, key=lambda m: len(PurePosixPath(m.target).parts))


def _is_under(path: str, directory: str) -> bool:
    directory = directory.rstrip("/")
    return path == directory or path.startswith(directory + "/")


def rewrite_path(value: str, mounts: list[Mount]) -> str:
    """Rewrite mode: ``value`` with a leading mount path replaced by its host directory."""
    for mount in sorted(mounts, key=lambda m: -len(m.target)):
        target = mount.target.rstrip("/")
        if target and (value == target or value.startswith(target + "/")):
            return str(mount.source) + value[len(target) :]
    return value


# --- starting processes -------------------------------------------------------------------------


def _unshare_command() -> list[str]:
    return [
        shutil.which("unshare") or "unshare",
        "--mount",
        "--uts",
        "--propagation",
        "private",
        "--",
    ]


def launch_init(
    spec: Obj, env: Mapping[str, str], cwd: Path, namespace: bool
) -> subprocess.Popen[bytes]:
    """Start ``container_init.py`` in a new session; raises StartError if it cannot exec.

    Returns once the command itself runs (the status pipe closed on exec); its stdout and
    stderr come merged through ``process.stdout``.
    """
    read_end, write_end = os.pipe()
    command = [
        sys.executable,
        "-I",
        "-S",
        str(INIT_SCRIPT),
        json.dumps({**spec, "statusFd": write_end}),
    ]
    try:
        process = subprocess.Popen(
            (_unshare_command() if namespace else []) + command,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=(write_end,),
            start_new_session=True,
        )
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as status:
        failure = status.read().decode("utf-8", "replace")
    if failure:
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
        raise StartError(failure)
    return process


@functools.cache
def isolation_mode() -> str:
    """``namespace`` if a private mount namespace with bind mounts works here, else ``rewrite``.

    Probed once by running ``container_init.py`` with a read-only mount at a path that does not
    exist on the host.
    """
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "rewrite"
    with tempfile.TemporaryDirectory(prefix="kubelet-probe-") as scratch:
        base = Path(scratch)
        for name in ("root", "staging", "source"):
            (base / name).mkdir()
        target = f"/kubelet-probe-{os.getpid()}/source"
        spec = {
            "root": str(base / "root"),
            "staging": str(base / "staging"),
            "hostname": "probe",
            "workingDir": "/",
            "readOnlyRoot": False,
            "mounts": [{"source": str(base / "source"), "target": target, "readOnly": True}],
            "argv": ["/bin/sh", "-c", f"test -d {target} && ! touch {target}/x 2>/dev/null"],
        }
        try:
            process = launch_init(spec, {"PATH": ":".join(DEFAULT_PATH)}, base, namespace=True)
            process.communicate(timeout=30)
        except (StartError, OSError, subprocess.TimeoutExpired):
            return "rewrite"
        return "namespace" if process.returncode == 0 else "rewrite"


# --- pod status ---------------------------------------------------------------------------------


def _condition(kind: str, status: bool, reason: str | None = None) -> Obj:
    condition = {"type": kind, "status": "True" if status else "False", "lastTransitionTime": now()}
    if reason:
        condition["reason"] = reason
    return condition


def pending_status(running: Obj, container: Obj, reason: str, message: str | None = None) -> Obj:
    """Pending with the container waiting (ContainerCreating, or a reason like FailedMount)."""
    name = container["name"]
    waiting: Obj = {"reason": reason, **({"message": message} if message else {})}
    status = {k: v for k, v in running.items() if k not in ("podIP", "podIPs")}
    unready = "ContainersNotReady"
    return {
        **status,
        "phase": "Pending",
        "conditions": [
            _condition("PodReadyToStartContainers", False),
            _condition("Initialized", True),
            {
                **_condition("Ready", False, unready),
                "message": f"containers with unready status: [{name}]",
            },
            {
                **_condition("ContainersReady", False, unready),
                "message": f"containers with unready status: [{name}]",
            },
            _condition("PodScheduled", True),
        ],
        "containerStatuses": [
            {
                **running["containerStatuses"][0],
                "ready": False,
                "started": False,
                "state": {"waiting": waiting},
            }
        ],
    }


def finished_status(
    running: Obj,
    exit_code: int,
    reason: str,
    *,
    message: str | None = None,
    started_at: str | None = None,
    restarts: int = 0,
) -> Obj:
    """Succeeded (exit code 0) or Failed, with the container terminated."""
    succeeded = exit_code == 0
    why = "PodCompleted" if succeeded else "PodFailed"
    container = dict(running["containerStatuses"][0])
    terminated: Obj = {"exitCode": exit_code, "reason": reason, "finishedAt": now()}
    if started_at:
        terminated.update(startedAt=started_at, containerID=container.get("containerID", ""))
    if message:
        terminated["message"] = message
    container.update(
        ready=False, started=False, restartCount=restarts, state={"terminated": terminated}
    )
    return {
        **running,
        "phase": "Succeeded" if succeeded else "Failed",
        "conditions": [
            _condition("PodReadyToStartContainers", False),
            _condition("Initialized", True, "PodCompleted" if succeeded else None),
            _condition("Ready", False, why),
            _condition("ContainersReady", False, why),
            _condition("PodScheduled", True),
        ],
        "containerStatuses": [container],
    }


def record_event(
    api: PodApi,
    obj: Obj,
    reason: str,
    message: str,
    *,
    component: str,
    warning: bool = False,
    host: str | None = None,
) -> None:
    """Store a core/v1 Event about ``obj`` (ignored if its namespace is gone)."""
    metadata, stamp = obj["metadata"], now()
    source = {"component": component, **({"host": host} if host else {})}
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{metadata['name']}.{time.time_ns():x}",
            "namespace": metadata["namespace"],
        },
        "involvedObject": {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "uid": metadata["uid"],
        },
        "reason": reason,
        "message": message,
        "type": "Warning" if warning else "Normal",
        "source": source,
        "reportingComponent": component,
        "reportingInstance": host or "",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    api.record_event(event)


def signal_group(pid: int, number: int) -> None:
    """Send ``number`` to the process group ``pid`` leads, if it still exists."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, number)


# --- one pod ------------------------------------------------------------------------------------

# The test suite's own checkout: an editable install imports the package from here.
_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])


def host_paths_to_keep(path_prepend: list[str]) -> list[str]:
    """Host directories the pod's tools need even where a volume is mounted over them (a clone
    under /tmp behind a pod's private /tmp): the PATH additions, the virtualenv, and the
    checkout that the editable install points into."""
    keep = list(
        dict.fromkeys(os.path.realpath(p) for p in (*path_prepend, sys.prefix, _PROJECT_ROOT))
    )
    # One bind covers everything below it (a venv inside the checkout comes with it).
    return [p for p in keep if not any(p != q and _is_under(p, q) for q in keep)]


@dataclass
class KubeletConfig:
    """What every PodRun shares: the api, the claim mapping and the controller's hooks."""

    api: PodApi
    claim_dir: ClaimResolver
    path_prepend: list[str]
    isolation: str  # "namespace" or "rewrite", see isolation_mode()
    workdir: Path
    max_grace: float
    spawn: Callable[[Callable[[], None], str], threading.Thread]
    stopping: threading.Event
    on_exit: Callable[[], None]
    image_pullable: Callable[[str], bool] = lambda image: True
    # The image's entrypoint, for a container that gives no command (None: it must give one).
    entrypoint: Callable[[str], list[str]] | None = None


@dataclass(frozen=True)
class LaunchPlan:
    """Everything needed to start the container process (again, after an OnFailure restart)."""

    spec: Obj
    env: dict[str, str]


class PodRun:
    """One pod: its single container runs as a local process group from a background thread.

    Status goes Pending (ContainerCreating) -> Running (Ready) -> Succeeded/Failed, and output
    is appended to the pod's log line by line. ``kill`` (pod deleted) and ``terminate`` (server
    stopping) end the process; then nothing more is written for the pod.
    """

    def __init__(self, kubelet: KubeletConfig, pod: Obj, owner_uid: str) -> None:
        metadata = pod["metadata"]
        self.kubelet, self.pod, self.owner_uid = kubelet, pod, owner_uid
        self.uid, self.namespace, self.name = (
            metadata["uid"],
            metadata["namespace"],
            metadata["name"],
        )
        self.container: Obj = pod["spec"]["containers"][0]
        self.outcome: str | None = None  # "Succeeded"/"Failed": the Job's job-tracking finalizer
        self.restarts = 0
        self.exited = threading.Event()  # process gone and per-pod directories removed
        self.deleted = False
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._main_done = threading.Event()
        self._wake = threading.Event()
        self._dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=kubelet.workdir))

    @property
    def grace(self) -> float:
        """Seconds between SIGTERM and SIGKILL: the pod's grace period, capped."""
        period = float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
        return min(period, self.kubelet.max_grace)

    def start(self) -> None:
        """Run the pod in a background thread."""
        self.kubelet.spawn(self._run, f"pod-{self.name}")

    def kill(self) -> None:
        """The pod was deleted: SIGTERM its process group now, SIGKILL after the grace period."""
        if self.terminate():
            self.kubelet.spawn(self.finish_killing, f"kill-{self.name}")

    def terminate(self) -> bool:
        """Stop the run without reporting: SIGTERM the process; True if one was running."""
        self.deleted = True
        self._wake.set()
        return self._signal(signal.SIGTERM)

    def finish_killing(self, deadline: float | None = None) -> None:
        """SIGKILL the process group unless the main process exits within the grace period
        (or by ``deadline``, a ``time.monotonic()`` value)."""
        wait = self.grace if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._main_done.wait(wait):
            self._signal(signal.SIGKILL)

    def pid(self) -> int | None:
        """The PID of the running container process, or None."""
        with self._lock:
            running = self._process is not None and not self._main_done.is_set()
            return self._process.pid if running and self._process else None

    # --- the run ---------------------------------------------------------------------------------

    def _stopped(self) -> bool:
        return self.deleted or self.kubelet.stopping.is_set()

    def _run(self) -> None:
        try:
            self._run_pod()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
            self.exited.set()
            self.kubelet.on_exit()

    def _run_pod(self) -> None:
        running = running_pod_status(self.pod)
        self._set_status(pending_status(running, self.container, "ContainerCreating"))
        volumes = self._wait_for_volumes(running)
        if volumes is None or not self._pull_image(running):
            return
        plan = self._wait_for_config(volumes, running)
        if plan is None:
            return
        while True:
            code, reason, message, started_at = self._run_once(plan, running)
            if self._stopped():
                return
            if code == 0 or self.pod["spec"].get("restartPolicy") != "OnFailure":
                break
            self.restarts += 1
        self.outcome = "Succeeded" if code == 0 else "Failed"
        self._set_status(
            finished_status(
                running,
                code,
                reason,
                message=message,
                started_at=started_at,
                restarts=self.restarts,
            )
        )

    def _wait_for_volumes(self, running: Obj) -> dict[str, Volume] | None:
        """The pod's volumes; while one cannot be set up, report FailedMount and retry."""
        reported = None
        while not self._stopped():
            try:
                return resolve_volumes(
                    self.kubelet.api, self.pod, self.kubelet.claim_dir, self._dir
                )
            except VolumeError as error:
                if str(error) != reported:
                    reported = str(error)
                    record_event(
                        self.kubelet.api,
                        self.pod,
                        error.reason,
                        reported,
                        component=error.component,
                        warning=True,
                        host=self._node(),
                    )
            self._wake.wait(VOLUME_RETRY_SECONDS)
        return None

    def _wait_for_config(self, volumes: Mapping[str, Volume], running: Obj) -> LaunchPlan | None:
        """The launch plan; while the env cannot be built (a missing Secret or key), the pod
        stays Pending in CreateContainerConfigError with a Failed event, retried like the
        kubelet does. None when the run stopped first."""
        reported = None
        while not self._stopped():
            try:
                return self._plan(volumes, running)
            except ContainerConfigError as error:
                if str(error) != reported:
                    reported = str(error)
                    self._set_status(
                        pending_status(
                            running, self.container, "CreateContainerConfigError", reported
                        )
                    )
                    record_event(
                        self.kubelet.api,
                        self.pod,
                        "Failed",
                        f"Error: {reported}",
                        component="kubelet",
                        warning=True,
                        host=self._node(),
                    )
            self._wake.wait(IMAGE_RETRY_SECONDS)
        return None

    def _pull_image(self, running: Obj) -> bool:
        """Pull the container's image; one its registry does not have leaves the pod Pending in
        ErrImagePull, then ImagePullBackOff, with the kubelet's events, retried until it
        appears or the pod is deleted. False when the run stopped first."""
        image = str(self.container.get("image") or "")
        reported = False
        while not self._stopped():
            if self.kubelet.image_pullable(image):
                return True
            if not reported:
                reported = True
                self._report_pull_failure(running, image)
            self._wake.wait(IMAGE_RETRY_SECONDS)
        return False

    def _report_pull_failure(self, running: Obj, image: str) -> None:
        why = (
            f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": '
            f'failed to resolve reference "{image}": {image}: not found'
        )
        host = self._node()
        api = self.kubelet.api
        record_event(
            api, self.pod, "Pulling", f'Pulling image "{image}"', component="kubelet", host=host
        )
        self._set_status(pending_status(running, self.container, "ErrImagePull", why))
        for message in (f'Failed to pull image "{image}": {why}', "Error: ErrImagePull"):
            record_event(
                api, self.pod, "Failed", message, component="kubelet", warning=True, host=host
            )
        self._wake.wait(IMAGE_RETRY_SECONDS)
        if self._stopped():
            return
        backoff = f'Back-off pulling image "{image}"'
        self._set_status(pending_status(running, self.container, "ImagePullBackOff", backoff))
        record_event(
            api, self.pod, "BackOff", backoff, component="kubelet", warning=True, host=host
        )
        record_event(
            api,
            self.pod,
            "Failed",
            "Error: ImagePullBackOff",
            component="kubelet",
            warning=True,
            host=host,
        )

    def _run_once(self, plan: LaunchPlan, running: Obj) -> tuple[int, str, str | None, str | None]:
        """Start, report Running, wait: (exit code, reason, message, startedAt)."""
        try:
            process = self._launch(plan)
        except StartError as error:
            self._log(f"Error: {error}\n")
            return INIT_FAILED_EXIT_CODE, "StartError", str(error), None
        started_at = now()
        assert process.stdout is not None
        pump = self.kubelet.spawn(functools.partial(self._pump, process.stdout), f"log-{self.name}")
        container = {
            **running["containerStatuses"][0],
            "restartCount": self.restarts,
            "state": {"running": {"startedAt": started_at}},
        }
        self._set_status({**running, "containerStatuses": [container]})
        code = self._wait(process)
        pump.join(LOG_DRAIN_SECONDS)
        return code, "Completed" if code == 0 else "Error", None, started_at

    # --- process ---------------------------------------------------------------------------------

    def _plan(self, volumes: Mapping[str, Volume], running: Obj) -> LaunchPlan:
        """Env, argv and mounts as the container sees them; raises ContainerConfigError."""
        spec = self.pod["spec"]
        if len(spec.get("containers") or []) != 1 or spec.get("initContainers"):
            raise ContainerConfigError(
                "the test kubelet runs pods with exactly one container and no initContainers"
            )
        env = container_env(self.kubelet.api, {**self.pod, "status": running}, self.container)
        command = self.container.get("command") or []
        if not command and self.kubelet.entrypoint is not None:
            command = self.kubelet.entrypoint(str(self.container.get("image") or ""))
        argv = [expand(str(part), env) for part in command + (self.container.get("args") or [])]
        hostname = (spec.get("hostname") or self.name)[:63]
        base = {
            "PATH": ":".join(self.kubelet.path_prepend + DEFAULT_PATH),
            "HOME": "/root",
            "HOSTNAME": hostname,
            "LANG": "C.UTF-8",
        }
        launch: Obj = {
            "argv": argv,
            "workingDir": self.container.get("workingDir") or "/",
            "hostname": hostname,
        }
        mounts = container_mounts(self.container, volumes)
        for name in ("home", "tmp", "root", "staging"):
            (self._dir / name).mkdir()
        if self.kubelet.isolation == "rewrite":
            return self._rewrite_plan(
                launch,
                {**base, "HOME": str(self._dir / "home"), "TMPDIR": str(self._dir / "tmp")},
                env,
                mounts,
            )
        return LaunchPlan(self._namespace_spec(launch, mounts), {**base, **env})

    def _namespace_spec(self, launch: Obj, mounts: list[Mount]) -> Obj:
        """Namespace mode: the volumes, a private /tmp unless one is declared, and the
        ``path_prepend`` directories a mount would hide, bound back read-only."""
        read_only_root = bool(
            (self.container.get("securityContext") or {}).get("readOnlyRootFilesystem")
        )
        if all(m.target.rstrip("/") != "/tmp" for m in mounts):
            mounts = [*mounts, Mount(self._dir / "tmp", "/tmp", read_only_root)]
        ordered = sorted(mounts, key=lambda m: len(PurePosixPath(m.target).parts))
        # Bound back as they are (remounting a bind of the host's own tree read-only fails with
        # EINVAL under a read-only root); nothing in a pod writes there.
        ordered += [
            Mount(Path(tools), tools, False)
            for tools in host_paths_to_keep(self.kubelet.path_prepend)
            if Path(tools).is_dir() and any(_is_under(tools, m.target) for m in mounts)
        ]
        return {
            **launch,
            "root": str(self._dir / "root"),
            "staging": str(self._dir / "staging"),
            "readOnlyRoot": read_only_root,
            "mounts": [
                {"source": str(m.source), "target": m.target, "readOnly": m.read_only}
                for m in ordered
            ],
        }

    @staticmethod
    def _rewrite_plan(
        spec: Obj, base: dict[str, str], env: dict[str, str], mounts: list[Mount]
    ) -> LaunchPlan:
        """Rewrite mode: mount paths at the start of argv, env values and workingDir replaced."""
        spec = {
            **spec,
            "argv": [rewrite_path(a, mounts) for a in spec["argv"]],
            "workingDir": rewrite_path(spec["workingDir"], mounts),
        }
        return LaunchPlan(spec, {**base, **{k: rewrite_path(v, mounts) for k, v in env.items()}})

    def _launch(self, plan: LaunchPlan) -> subprocess.Popen[bytes]:
        process = launch_init(
            plan.spec, plan.env, self._dir, namespace=self.kubelet.isolation == "namespace"
        )
        with self._lock:
            self._process = process
            self._main_done.clear()
        if self._stopped():  # deleted while starting: kill() found no process to signal
            self.kill()
        return process

    def _wait(self, process: subprocess.Popen[bytes]) -> int:
        """Wait for the main process; kill what it leaves behind (as a container's end does)."""
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
        with self._lock:
            signal_group(process.pid, signal.SIGKILL)
            self._main_done.set()
        code = process.wait()
        return 128 - code if code < 0 else code  # killed by signal N: 128 + N, like runc

    def _signal(self, number: int) -> bool:
        with self._lock:
            if self._process is None or self._main_done.is_set():
                return False
            signal_group(self._process.pid, number)
            return True

    def _pump(self, stream: IO[bytes]) -> None:
        with stream:
            for line in iter(stream.readline, b""):
                self._log(line.decode("utf-8", "replace"))

    # --- reporting -------------------------------------------------------------------------------

    def _node(self) -> str | None:
        node: str | None = self.pod["spec"].get("nodeName")
        return node

    def _log(self, text: str) -> None:
        if not self.deleted:
            self.kubelet.api.append_log(self.namespace, self.name, self.container["name"], text)

    def _set_status(self, status: Obj) -> None:
        """Write the pod's status, unless the run is stopping; a deleted pod ends reporting."""
        if self._stopped():
            return
        if not self.kubelet.api.write_status(self.namespace, self.name, self.uid, status):
            self.deleted = True
