"""A process kubelet for the real control plane: it registers Nodes, runs the pods the scheduler
binds to them as local processes (tests/kubelet/pods.py: env and envFrom resolved through the API,
PVCs as host directories, read-only where mounted so), reports their phase, conditions and exit
codes, and serves container logs to the API server's ``pods/log`` proxy, so ``kubectl logs`` and
migrator's log following work unchanged. As a real kubelet does, it keeps what it syncs by
list+watch (tests/kubelet/informer.py: the pods bound to its nodes, claims, StorageClasses) and
syncs when one of them changes or a container exits: an idle cluster costs the API server little.

Like a real kubelet it finishes a graceful deletion itself: when a pod it runs gets a
``deletionTimestamp`` it sends SIGTERM, SIGKILL after the grace period (capped by
``max_grace_seconds``), then deletes the pod with grace period 0.

Deliberate differences from a real kubelet:

- Images are not pulled: the host's tools stand in for every image (``path_prepend`` first on the
  PATH: the venv, so ``migrator`` and ``rclone`` resolve). ``images``, when given, is the set a
  registry has, and ``unpublished`` the images it has not; another image leaves the pod in
  ErrImagePull/ImagePullBackOff. A container with
  no ``command`` runs ``entrypoint(image)`` (default: an idle process, standing for an app
  that serves until it is stopped). Probes are not run: a started container is Ready.
- A claim needs no CSI driver: it is a host directory, ``add_claim``'s or else one made on first
  use under the kubelet's work directory. A new claim of a StorageClass gets a PersistentVolume
  from :meth:`ProcessKubelet.provision`, standing in for the CSI external-provisioner.
- It reads with the admin credentials it is given (a real kubelet is ``system:node:<name>``
  under the Node authorizer) and does not heartbeat: the control plane runs without the node
  lifecycle controller, so Nodes stay Ready until the kubelet stops.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from kubernetes.client.rest import RESTClientObject

from migrator.errors import ConflictError, OperationFailedError
from migrator.kube import KubeClient

from .informer import Informer
from .logs import LogServer, LogStore
from .pods import KubeletConfig, PodRun, isolation_mode, now
from .retry import read_modify_write

Obj = dict[str, Any]
PLURALS = {
    "Secret": "secrets",
    "ConfigMap": "configmaps",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Pod": "pods",
    "Event": "events",
}
# The sync loop wakes on a change the informers see and when a container exits; this is only
# the safety net (a sync reads the informers' caches: it makes no request by itself).
SYNC_SECONDS = 1.0
IDLE = [sys.executable, "-c", "import signal; signal.pause()"]
USER_AGENT = "process-kubelet/v1.37.2"


def kube_client(kubeconfig: Path) -> KubeClient:
    """migrator's client for ``kubeconfig``, shared by the kubelet's threads (one per container):
    a pool of 32 connections instead of the client's default 5 per core, and its own user agent,
    so the audit log tells its requests from the tests' own."""
    kube = KubeClient.from_kubeconfig(str(kubeconfig))
    kube.api_client.configuration.connection_pool_maxsize = 32
    kube.api_client.rest_client = RESTClientObject(kube.api_client.configuration)
    kube.api_client.user_agent = USER_AGENT
    return kube


class RealApi:
    """:class:`tests.kubelet.pods.PodApi` over the real API server."""

    def __init__(self, kube: KubeClient, logs: LogStore) -> None:
        self.kube, self.logs = kube, logs

    def read(self, kind: str, namespace: str, name: str) -> Obj | None:
        path = f"/api/v1/namespaces/{namespace}/{PLURALS[kind]}/{name}"
        return self.kube.send(f"reading {kind} {namespace}/{name}", "GET", path, missing_ok=True)

    def pods(self, namespace: str) -> list[Obj]:
        found = self.kube.send("listing pods", "GET", f"/api/v1/namespaces/{namespace}/pods")
        return list((found or {})["items"])

    def write_status(self, namespace: str, name: str, uid: str, status: Obj) -> bool:
        path = f"/api/v1/namespaces/{namespace}/pods/{name}"
        what = f"writing the status of pod {namespace}/{name}"

        def read() -> Obj | None:
            current = self.kube.send(what, "GET", path, missing_ok=True)
            return current if current and current["metadata"]["uid"] == uid else None

        def write(current: Obj) -> Obj | None:
            body = {**current, "status": status}
            return self.kube.send(what, "PUT", path + "/status", body, missing_ok=True)

        return read_modify_write(read, write, f"status of pod {namespace}/{name}") is not None

    def record_event(self, event: Obj) -> None:
        namespace = event["metadata"]["namespace"]
        # Best effort: the namespace may be terminating.
        with contextlib.suppress(OperationFailedError):
            self.kube.send(
                "recording an event", "POST", f"/api/v1/namespaces/{namespace}/events", event
            )

    def append_log(self, namespace: str, name: str, container: str, text: str) -> None:
        self.logs.append(namespace, name, container, text)

    def service_account_token(self, pod: Obj, audience: str | None, seconds: int) -> str:
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        spec: Obj = {
            "expirationSeconds": seconds,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "uid": meta["uid"],
            },
        }
        if audience:
            spec["audiences"] = [audience]
        answer = self.kube.send(
            f"requesting a token for pod {meta['namespace']}/{meta['name']}",
            "POST",
            f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        return str((answer or {})["status"]["token"])


@dataclass(frozen=True)
class Node:
    """A Node this kubelet registers."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[Obj, ...] = ()
    unschedulable: bool = False


@dataclass
class _Run:
    run: PodRun
    killing: bool = False
    finished: bool = False  # its logs are complete
    removed: bool = False


class ProcessKubelet:
    """Runs the pods bound to ``nodes`` (names or :class:`Node`) as local processes; see the
    module docstring. Use as a context manager, or call :meth:`start` and :meth:`stop`."""

    def __init__(
        self,
        kubeconfig: Path,
        nodes: Iterable[str | Node] = ("worker-1", "worker-2", "worker-3"),
        *,
        workdir: Path | None = None,
        path_prepend: list[str] | None = None,
        images: Collection[str] | None = None,
        entrypoint: Callable[[str], list[str]] = lambda image: IDLE,
        isolation: str | None = None,
        max_grace_seconds: float = 5.0,
    ) -> None:
        self.nodes = [n if isinstance(n, Node) else Node(n) for n in nodes]
        self.node_names = {n.name for n in self.nodes}
        self.kube = kube_client(kubeconfig)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="process-kubelet-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs = LogStore()
        self.log_server = LogServer(self.logs)
        self.claims: dict[tuple[str, str], Path] = {}
        self.unmountable: set[tuple[str, str]] = set()
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._runs: dict[str, _Run] = {}
        self._removed: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.errors: list[BaseException] = []
        self.images = frozenset(images) if images is not None else None
        self.unpublished: set[str] = set()  # images the registry does not have (tests add some)
        self.config = KubeletConfig(
            api=RealApi(self.kube, self.logs),
            claim_dir=self.claim_dir,
            path_prepend=(
                path_prepend if path_prepend is not None else [str(Path(sys.executable).parent)]
            ),
            isolation=isolation or isolation_mode(),
            workdir=self.workdir / "pods",
            max_grace=max_grace_seconds,
            spawn=self._spawn,
            stopping=self.stopping,
            on_exit=self._wake.set,
            image_pullable=self._pullable,
            entrypoint=entrypoint,
        )
        self.config.workdir.mkdir(exist_ok=True)
        # What a sync reads, kept by list+watch; pods only of this kubelet's nodes, as a real
        # kubelet watches with the field selector spec.nodeName.
        core, storage = self.kube.core, self.kube.storage
        self._pods = [
            Informer(
                self.kube,
                f"pods on {node.name}",
                core.list_pod_for_all_namespaces,
                self._wake.set,
                self.errors,
                field_selector=f"spec.nodeName={node.name}",
            )
            for node in self.nodes
        ]
        self._claims = Informer(
            self.kube,
            "claims",
            core.list_persistent_volume_claim_for_all_namespaces,
            self._wake.set,
            self.errors,
        )
        self._classes = Informer(
            self.kube, "StorageClasses", storage.list_storage_class, self._wake.set, self.errors
        )

    # --- life cycle --------------------------------------------------------------------------

    def __enter__(self) -> ProcessKubelet:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.log_server.start()
        for node in self.nodes:
            self.register(node)
        for informer in self._informers():
            informer.start()
        self._thread = threading.Thread(target=self._loop, name="process-kubelet", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every container (SIGTERM, SIGKILL after the grace period), then serving."""
        self.stopping.set()
        self._wake.set()
        for informer in self._informers():
            informer.stop()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            runs = [entry.run for entry in self._runs.values()]
        for run in runs:
            if run.terminate():
                run.finish_killing(time.monotonic() + run.grace)
        for run in runs:
            run.exited.wait(timeout)
        self.log_server.stop()

    def _informers(self) -> list[Informer]:
        return [*self._pods, self._claims, self._classes]

    def register(self, node: Node) -> None:
        """Create (or update) the Node, Ready, with this kubelet's log endpoint."""
        labels = {
            "kubernetes.io/hostname": node.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **node.labels,
        }
        spec: Obj = {"unschedulable": node.unschedulable, "taints": list(node.taints)}
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node.name, "labels": labels},
            "spec": spec,
        }
        path = f"/api/v1/nodes/{node.name}"
        if self.kube.send(f"reading Node {node.name}", "GET", path, missing_ok=True) is None:
            self.kube.send(f"registering Node {node.name}", "POST", "/api/v1/nodes", body)
        self._update(path, lambda n: {**n, "metadata": {**n["metadata"], "labels": labels}})
        self._update(path + "/status", lambda n: {**n, "status": self._node_status()})
        # Admission taints a new Node not-ready; the node lifecycle controller (not run here:
        # nothing heartbeats) would lift that once the Node reports Ready.
        self._update(path, lambda n: {**n, "spec": {**n["spec"], **spec}})

    def _update(self, path: str, change: Callable[[Obj], Obj]) -> None:
        """Read-modify-write ``path`` (a Node or its status), again on a conflict: controllers
        annotate a new Node meanwhile."""
        read_modify_write(
            lambda: self.kube.send(f"reading {path}", "GET", path.removesuffix("/status")),
            lambda current: self.kube.send(f"updating {path}", "PUT", path, change(current)),
            path,
        )

    def _node_status(self) -> Obj:
        stamp = now()
        capacity = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        conditions = [
            {
                "type": kind,
                "status": "False",
                "reason": f"KubeletHas{reason}",
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp,
            }
            for kind, reason in (
                ("MemoryPressure", "SufficientMemory"),
                ("DiskPressure", "NoDiskPressure"),
                ("PIDPressure", "SufficientPID"),
            )
        ]
        conditions.append(
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "process kubelet is posting ready status",
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp,
            }
        )
        return {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.log_server.port}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": "",
                "osImage": "process kubelet",
                "containerRuntimeVersion": "process://1",
                "kubeletVersion": "v1.37.2",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def _pullable(self, image: str) -> bool:
        return image not in self.unpublished and (self.images is None or image in self.images)

    # --- claims ------------------------------------------------------------------------------

    def add_claim(self, namespace: str, claim: str, directory: Path) -> None:
        """Back a claim by ``directory`` (pods waiting for it mount it at once)."""
        self.claims[(namespace, claim)] = Path(directory)

    def claim_dir(self, namespace: str, claim: str) -> Path | None:
        """The host directory of a claim: the one given by :meth:`add_claim`, else a fresh one;
        None for a claim in ``unmountable`` (its pods stay ContainerCreating, FailedMount)."""
        if (namespace, claim) in self.unmountable:
            return None
        found = self.claims.get((namespace, claim))
        if found is None:
            found = self.workdir / "claims" / namespace / claim
            found.mkdir(parents=True, exist_ok=True)
            self.claims[(namespace, claim)] = found
        return found

    def processes(self) -> list[int]:
        """PIDs of the container processes still running."""
        with self._lock:
            return [pid for entry in self._runs.values() if (pid := entry.run.pid()) is not None]

    # --- the sync loop -----------------------------------------------------------------------

    def _spawn(self, target: Callable[[], None], name: str) -> threading.Thread:
        def run() -> None:
            try:
                target()
            except BaseException as error:  # kept for the fixture to report, never lost
                self.errors.append(error)

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        return thread

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.sync()
            except Exception as error:  # an API hiccup: try again on the next round
                if not self.stopping.is_set():
                    self.errors.append(error)
            self._wake.wait(SYNC_SECONDS)
            self._wake.clear()

    def provision(self) -> None:
        """Give every Pending claim of a StorageClass a PersistentVolume, as a CSI
        external-provisioner does: at once for ``Immediate`` classes, once the scheduler picked a
        node for ``WaitForFirstConsumer`` ones. The PV controller then binds the two."""
        classes = {c["metadata"]["name"]: c for c in self._classes.items()}
        pending = [
            c
            for c in self._claims.items()
            if (c.get("status") or {}).get("phase") == "Pending"
            and c["spec"].get("storageClassName")
            and not c["spec"].get("volumeName")
            and not c["metadata"].get("deletionTimestamp")
        ]
        for claim in pending:
            meta, spec = claim["metadata"], claim["spec"]
            klass = classes.get(spec["storageClassName"])
            if klass is None:
                continue
            annotations = meta.get("annotations") or {}
            if (
                klass.get("volumeBindingMode") == "WaitForFirstConsumer"
                and "volume.kubernetes.io/selected-node" not in annotations
            ):
                continue
            name = f"pvc-{meta['uid']}"
            volume = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {
                    "name": name,
                    "annotations": {"pv.kubernetes.io/provisioned-by": klass["provisioner"]},
                },
                "spec": {
                    "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                    "accessModes": spec["accessModes"],
                    "persistentVolumeReclaimPolicy": klass.get("reclaimPolicy", "Delete"),
                    "storageClassName": spec["storageClassName"],
                    "volumeMode": spec.get("volumeMode", "Filesystem"),
                    "csi": {"driver": klass["provisioner"], "volumeHandle": name},
                    "claimRef": {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "namespace": meta["namespace"],
                        "name": meta["name"],
                        "uid": meta["uid"],
                    },
                },
            }
            with contextlib.suppress(ConflictError):  # provisioned on an earlier round
                self.kube.send(f"provisioning {name}", "POST", "/api/v1/persistentvolumes", volume)

    def sync(self) -> None:
        """One round: start the pods bound here, finish the deleted ones."""
        self.provision()
        mine = {p["metadata"]["uid"]: p for pods in self._pods for p in pods.items()}
        with self._lock:
            for uid, pod in mine.items():
                entry = self._runs.get(uid)
                if entry is None:
                    self._admit(pod)
                elif pod["metadata"].get("deletionTimestamp") and not entry.killing:
                    entry.killing = True
                    entry.run.kill()
            for uid, entry in list(self._runs.items()):
                if uid not in mine:
                    entry.run.terminate()  # deleted outright (grace 0): stop, nothing to report
                    if entry.run.exited.is_set():
                        del self._runs[uid]
                elif entry.run.exited.is_set() and not entry.finished:
                    entry.finished = True
                    self.logs.finish(entry.run.namespace, entry.run.name)
                if (
                    uid in mine
                    and entry.killing
                    and entry.run.exited.is_set()
                    and not entry.removed
                ):
                    entry.removed = True
                    self._remove(mine[uid])
            # Pods this kubelet never ran (finished before it started), deleted: finish them.
            stale = [
                p
                for uid, p in mine.items()
                if uid not in self._runs
                and p["metadata"].get("deletionTimestamp")
                and uid not in self._removed
            ]
            self._removed.update(p["metadata"]["uid"] for p in stale)
        for pod in stale:
            self._remove(pod)

    def _admit(self, pod: Obj) -> None:
        if pod["metadata"].get("deletionTimestamp"):
            return
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return  # finished before this kubelet started
        pod = {**pod, "apiVersion": "v1", "kind": "Pod"}  # list items come without them
        owners = pod["metadata"].get("ownerReferences") or [{}]
        run = PodRun(self.config, pod, owners[0].get("uid", ""))
        self.logs.reset(pod["metadata"]["namespace"], pod["metadata"]["name"])
        self._runs[pod["metadata"]["uid"]] = _Run(run)
        run.start()

    def _remove(self, pod: Obj) -> None:
        """Delete a pod whose containers are gone, with grace period 0, as the kubelet does."""
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": meta["uid"]},
        }
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        with contextlib.suppress(ConflictError):  # 404 or 409: gone already, or replaced
            self.kube.send(f"deleting pod {meta['name']}", "DELETE", path, body, missing_ok=True)

    def pod_dirs(self) -> list[Path]:
        """Per-pod scratch directories still present (each is removed when its pod ends)."""
        return sorted(p for p in self.config.workdir.iterdir() if p.is_dir())

    def clean(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
