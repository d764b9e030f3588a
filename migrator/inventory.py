"""Discovery: what volumes a tenant has, who mounts them, which release owns them, and their role.

Cluster discovery reads the API through :class:`migrator.kube.KubeClient`; local discovery walks
directories. Both produce the same :class:`Inventory`, which the planner turns into a plan.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from migrator.errors import BadInputError, UnknownVolumeError
from migrator.planmodel import AccessMode, Mode, Role, WorkloadKind
from migrator.quantity import parse_quantity

ROLES: tuple[Role, ...] = get_args(Role)
CONFIG_PATHS = ("/config",)
MEDIA_PATHS = ("/media", "/data", "/tv", "/movies", "/downloads", "/music", "/books", "/library")
MEDIA_SIZE_THRESHOLD = 100 * 2**30  # a claim this big is a library, not app config
SQLITE_HEADER = b"SQLite format 3\x00"
RELEASE_LABELS = ("helm.toolkit.fluxcd.io/name", "app.kubernetes.io/instance")
KUSTOMIZATION_LABEL = "kustomize.toolkit.fluxcd.io/name"
KUSTOMIZATION_NS_LABEL = "kustomize.toolkit.fluxcd.io/namespace"


@dataclass(frozen=True)
class Mount:
    """One container mounting a volume."""

    kind: WorkloadKind
    workload: str
    container: str
    mount_path: str
    read_only: bool
    run_as_user: int | None = None
    fs_group: int | None = None
    nodes: tuple[str, ...] = ()
    pod_labels: tuple[tuple[str, str], ...] = ()  # the workload's selector.matchLabels


@dataclass(frozen=True)
class Release:
    """A Flux HelmRelease and what matters about it for a migration."""

    name: str
    namespace: str
    chart: str
    suspended: bool
    drift_detection: str
    kustomization: str | None
    workloads: tuple[str, ...] = ()


@dataclass(frozen=True)
class Node:
    name: str
    ready: bool
    unschedulable: bool
    taints: tuple[str, ...] = ()


@dataclass
class Volume:
    """A source volume: a PVC in cluster mode, a directory in local mode."""

    name: str
    claim: str | None = None
    path: str | None = None
    storage_class: str | None = None
    provisioner: str | None = None
    access_modes: tuple[AccessMode, ...] = ()
    capacity_bytes: int | None = None
    used_bytes: int | None = None
    file_count: int | None = None
    has_sqlite: bool = False
    mounts: list[Mount] = field(default_factory=list)
    releases: tuple[str, ...] = ()
    role: Role = "media"
    role_reason: str = ""

    @property
    def release(self) -> str | None:
        """The owning release when exactly one release uses the volume (a shared one has none)."""
        return self.releases[0] if len(self.releases) == 1 else None

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(sorted({n for m in self.mounts for n in m.nodes}))


@dataclass
class Inventory:
    """Everything discovery found, ready for the planner."""

    mode: Mode
    namespace: str | None
    volumes: list[Volume]
    releases: list[Release] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    storage_classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    csi_drivers: tuple[str, ...] = ()

    def volume(self, name: str) -> Volume:
        for volume in self.volumes:
            if volume.name == name:
                return volume
        raise UnknownVolumeError(name, [v.name for v in self.volumes])


# --- classification ---------------------------------------------------------------------------


def classify(volume: Volume) -> tuple[Role, str]:
    """Return (role, reason) for a volume from its mounts, access modes, size and content."""
    for mount in volume.mounts:
        if _path_is(mount.mount_path, CONFIG_PATHS):
            return "config", f"mounted at {mount.mount_path} by {mount.kind}/{mount.workload}"
    for mount in volume.mounts:
        if _path_is(mount.mount_path, MEDIA_PATHS):
            return "media", f"mounted at {mount.mount_path} by {mount.kind}/{mount.workload}"
    if volume.has_sqlite:
        return "config", "holds an SQLite database or config.xml"
    if "ReadWriteMany" in volume.access_modes:
        return "media", "shared ReadWriteMany claim"
    size = volume.used_bytes or volume.capacity_bytes or 0
    if size >= MEDIA_SIZE_THRESHOLD:
        return "media", f"large ({size // 2**30} GiB)"
    if "config" in volume.name:
        return "config", "named like a config volume"
    if volume.path is not None:
        return "media", "no SQLite database or config.xml found"
    return "media", "no config mount, database or name hint"


def _path_is(path: str, candidates: Iterable[str]) -> bool:
    path = path.rstrip("/") or "/"
    return any(path == c or path.startswith(c + "/") for c in candidates)


def parse_assignments(values: Iterable[str], option: str) -> dict[str, str]:
    """Parse repeated ``NAME=VALUE`` options; raises BadInputError on a malformed one."""
    result: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise BadInputError(f"{option} {item!r} must look like NAME=VALUE")
        if name in result and result[name] != value:
            raise BadInputError(
                f"{option} {name} is given twice ({result[name]} and {value}); give it once"
            )
        result[name] = value
    return result


def apply_roles(inventory: Inventory, overrides: Mapping[str, str]) -> None:
    """Classify every volume, then apply ``--role NAME=ROLE`` overrides (validated)."""
    for volume in inventory.volumes:
        volume.role, volume.role_reason = classify(volume)
    for name, given in overrides.items():
        role = next((r for r in ROLES if r == given), None)
        if role is None:
            raise BadInputError(f"--role {name}={given}: role must be one of {', '.join(ROLES)}")
        volume = inventory.volume(name)
        volume.role, volume.role_reason = role, "set with --role"


def select_volumes(inventory: Inventory, names: Iterable[str]) -> None:
    """Keep only the named volumes (all when ``names`` is empty); unknown names are errors."""
    wanted = list(names)
    if wanted:
        inventory.volumes = [inventory.volume(name) for name in sorted(set(wanted))]
    keep_releases_of_volumes(inventory)


def keep_releases_of_volumes(inventory: Inventory) -> None:
    """Keep the releases whose workloads use a planned volume: a cutover stops all of them."""
    used = {name for volume in inventory.volumes for name in volume.releases}
    inventory.releases = [r for r in inventory.releases if r.name in used]


# --- local discovery --------------------------------------------------------------------------


def discover_local(source_dirs: Mapping[str, str]) -> Inventory:
    """Inventory of directories on this host (``--source-dir NAME=PATH``)."""
    volumes = []
    for name, raw_path in sorted(source_dirs.items()):
        path = Path(raw_path).expanduser()
        if not path.is_dir():
            raise BadInputError(f"--source-dir {name}={raw_path}: not a directory")
        used, files, has_sqlite = _scan_directory(path)
        volumes.append(
            Volume(
                name=_check_volume_name(name),
                path=str(path.resolve()),
                used_bytes=used,
                file_count=files,
                has_sqlite=has_sqlite,
            )
        )
    return Inventory(mode="local", namespace=None, volumes=volumes)


_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$")


def _check_volume_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise BadInputError(
            f"volume name {name!r} must be a DNS label: lowercase letters, digits and '-', "
            "at most 52 characters"
        )
    return name


def _scan_directory(root: Path) -> tuple[int, int, bool]:
    """Return (bytes, files, looks like app config) with one stat walk."""
    used = files = 0
    has_sqlite = (root / "config.xml").is_file()
    for dirpath, _dirnames, filenames in os.walk(root):
        for filename in filenames:
            full = os.path.join(dirpath, filename)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            used += st.st_size
            files += 1
            if not has_sqlite and filename.endswith((".db", ".sqlite", ".sqlite3")):
                has_sqlite = _is_sqlite(full)
    return used, files, has_sqlite


def _is_sqlite(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


# --- cluster discovery ------------------------------------------------------------------------


def discover_cluster(kube: Any, namespace: str, release: str | None = None) -> Inventory:
    """Inventory of a namespace: PVCs, PVs, StorageClasses, workloads, HelmReleases, nodes.

    Raises UnknownNamespaceError when the namespace does not exist.
    """
    kube.require_namespace(namespace)
    pvcs = kube.list_pvcs(namespace)
    pvs = {pv["metadata"]["name"]: pv for pv in kube.list_pvs()}
    classes = {sc["metadata"]["name"]: sc for sc in kube.list_storage_classes()}
    workloads = _workloads(kube, namespace)
    pods = kube.list_pods(namespace)
    helmreleases = kube.list_helmreleases(namespace)
    volumes = [_volume_from_pvc(pvc, pvs, classes) for pvc in pvcs]
    _attach_mounts(volumes, workloads, pods)
    releases = [_release(hr, workloads) for hr in helmreleases]
    _attach_releases(volumes, releases, workloads, pvcs)
    if release is not None:
        volumes = _volumes_of_release(volumes, releases, release)
    inventory = Inventory(
        mode="cluster",
        namespace=namespace,
        volumes=sorted(volumes, key=lambda v: v.name),
        releases=sorted(releases, key=lambda r: r.name),
        nodes=[_node(n) for n in kube.list_nodes()],
        storage_classes={name: _class_summary(sc) for name, sc in classes.items()},
        csi_drivers=tuple(sorted(d["metadata"]["name"] for d in kube.list_csi_drivers())),
    )
    keep_releases_of_volumes(inventory)
    return inventory


def _volumes_of_release(volumes: list[Volume], releases: list[Release], name: str) -> list[Volume]:
    if not any(r.name == name for r in releases):
        known = ", ".join(sorted(r.name for r in releases)) or "none"
        raise BadInputError(f"no HelmRelease named {name!r}; known releases: {known}")
    return [v for v in volumes if name in v.releases]


def _class_summary(sc: dict[str, Any]) -> dict[str, Any]:
    return {"provisioner": sc.get("provisioner", ""), "parameters": sc.get("parameters") or {}}


def _volume_from_pvc(
    pvc: dict[str, Any], pvs: dict[str, dict[str, Any]], classes: dict[str, dict[str, Any]]
) -> Volume:
    spec, status = pvc.get("spec") or {}, pvc.get("status") or {}
    pv = pvs.get(spec.get("volumeName") or "", {})
    class_name = spec.get("storageClassName") or (pv.get("spec") or {}).get("storageClassName")
    capacity = (status.get("capacity") or {}).get("storage") or (
        (spec.get("resources") or {}).get("requests") or {}
    ).get("storage")
    name = pvc["metadata"]["name"]
    return Volume(
        name=name,
        claim=name,
        storage_class=class_name,
        provisioner=(classes.get(class_name or "") or {}).get("provisioner"),
        access_modes=tuple(status.get("accessModes") or spec.get("accessModes") or ()),
        capacity_bytes=parse_quantity(capacity) if capacity else None,
    )


def _workloads(kube: Any, namespace: str) -> list[dict[str, Any]]:
    items = []
    for kind, objs in (
        ("Deployment", kube.list_deployments(namespace)),
        ("StatefulSet", kube.list_statefulsets(namespace)),
    ):
        for obj in objs:
            items.append({"kind": kind, **obj})
    return items


def _attach_mounts(
    volumes: list[Volume], workloads: list[dict[str, Any]], pods: list[dict[str, Any]]
) -> None:
    by_claim = {v.claim: v for v in volumes}
    for workload in workloads:
        template = (workload.get("spec") or {}).get("template") or {}
        nodes = _nodes_of(workload, pods)
        for claim, mount in _template_mounts(workload, template, nodes):
            if claim in by_claim:
                by_claim[claim].mounts.append(mount)
        for volume in volumes:
            if _is_statefulset_claim(workload, volume.claim or ""):
                volume.mounts.extend(_claim_template_mounts(workload, template, volume, nodes))
    for pod in pods:
        if not (pod["metadata"].get("ownerReferences")):
            for claim, mount in _template_mounts({"kind": "Pod", **pod}, pod, _pod_node(pod)):
                if claim in by_claim:
                    by_claim[claim].mounts.append(mount)
    for volume in volumes:
        volume.mounts.sort(key=lambda m: (m.kind, m.workload, m.container, m.mount_path))


def _pod_node(pod: dict[str, Any]) -> tuple[str, ...]:
    node = (pod.get("spec") or {}).get("nodeName")
    return (node,) if node else ()


def _nodes_of(workload: dict[str, Any], pods: list[dict[str, Any]]) -> tuple[str, ...]:
    selector = ((workload.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    if not selector:
        return ()
    nodes: set[str] = set()
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        if all(labels.get(k) == v for k, v in selector.items()):
            nodes.update(_pod_node(pod))
    return tuple(sorted(nodes))


def _template_mounts(
    workload: dict[str, Any], template: dict[str, Any], nodes: tuple[str, ...]
) -> Iterable[tuple[str, Mount]]:
    pod_spec = template.get("spec") or {}
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod_spec.get("volumes") or []
        if v.get("persistentVolumeClaim")
    }
    for container, volume_mount in _container_mounts(pod_spec):
        claim = claims.get(volume_mount["name"])
        if claim:
            yield claim, _mount(workload, pod_spec, container, volume_mount, nodes)


def _container_mounts(pod_spec: dict[str, Any]) -> Iterable[tuple[dict[str, Any], dict[str, Any]]]:
    for container in (pod_spec.get("initContainers") or []) + (pod_spec.get("containers") or []):
        for volume_mount in container.get("volumeMounts") or []:
            yield container, volume_mount


def _mount(
    workload: dict[str, Any],
    pod_spec: dict[str, Any],
    container: dict[str, Any],
    volume_mount: dict[str, Any],
    nodes: tuple[str, ...],
) -> Mount:
    pod_sc = pod_spec.get("securityContext") or {}
    container_sc = container.get("securityContext") or {}
    run_as = container_sc.get("runAsUser", pod_sc.get("runAsUser"))
    if run_as is None:
        run_as = _puid(container)
    return Mount(
        kind=workload["kind"],
        workload=workload["metadata"]["name"],
        container=container["name"],
        mount_path=volume_mount["mountPath"],
        read_only=bool(volume_mount.get("readOnly", False)),
        run_as_user=run_as,
        fs_group=pod_sc.get("fsGroup"),
        nodes=nodes,
        pod_labels=_pod_labels(workload),
    )


def _pod_labels(workload: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """Labels that select the workload's pods (a bare Pod: its own labels), sorted."""
    if workload["kind"] == "Pod":
        labels = workload["metadata"].get("labels") or {}
    else:
        labels = ((workload.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return tuple(sorted((str(k), str(v)) for k, v in labels.items()))


def _puid(container: dict[str, Any]) -> int | None:
    """linuxserver.io / hotio images take their user from the PUID variable, not runAsUser."""
    for env in container.get("env") or []:
        if env.get("name") == "PUID" and str(env.get("value", "")).isdigit():
            return int(env["value"])
    return None


def _is_statefulset_claim(workload: dict[str, Any], claim: str) -> bool:
    if workload["kind"] != "StatefulSet":
        return False
    name = workload["metadata"]["name"]
    for template in (workload.get("spec") or {}).get("volumeClaimTemplates") or []:
        if re.fullmatch(rf"{re.escape(template['metadata']['name'])}-{re.escape(name)}-\d+", claim):
            return True
    return False


def _claim_template_mounts(
    workload: dict[str, Any], template: dict[str, Any], volume: Volume, nodes: tuple[str, ...]
) -> list[Mount]:
    pod_spec = template.get("spec") or {}
    name = workload["metadata"]["name"]
    mounts = []
    for container, volume_mount in _container_mounts(pod_spec):
        if (volume.claim or "").startswith(f"{volume_mount['name']}-{name}-"):
            mounts.append(_mount(workload, pod_spec, container, volume_mount, nodes))
    return mounts


def _release(hr: dict[str, Any], workloads: list[dict[str, Any]]) -> Release:
    meta, spec = hr["metadata"], hr.get("spec") or {}
    labels = meta.get("labels") or {}
    chart_spec = ((spec.get("chart") or {}).get("spec")) or {}
    chart = chart_spec.get("chart") or (spec.get("chartRef") or {}).get("name") or ""
    kustomization = None
    if KUSTOMIZATION_LABEL in labels:
        ks_ns = labels.get(KUSTOMIZATION_NS_LABEL, "")
        kustomization = (
            f"{ks_ns}/{labels[KUSTOMIZATION_LABEL]}" if ks_ns else labels[KUSTOMIZATION_LABEL]
        )
    owned = tuple(
        sorted(
            f"{w['kind']}/{w['metadata']['name']}" for w in workloads if _owner(w) == meta["name"]
        )
    )
    return Release(
        name=meta["name"],
        namespace=meta.get("namespace", ""),
        chart=chart,
        suspended=bool(spec.get("suspend", False)),
        drift_detection=((spec.get("driftDetection") or {}).get("mode")) or "disabled",
        kustomization=kustomization,
        workloads=owned,
    )


def _owner(obj: dict[str, Any]) -> str | None:
    labels = obj["metadata"].get("labels") or {}
    for label in RELEASE_LABELS:
        if labels.get(label):
            return str(labels[label])
    return None


def _attach_releases(
    volumes: list[Volume],
    releases: list[Release],
    workloads: list[dict[str, Any]],
    pvcs: list[dict[str, Any]],
) -> None:
    known = {r.name for r in releases}
    owner_of_workload = {f"{w['kind']}/{w['metadata']['name']}": _owner(w) for w in workloads}
    owner_of_claim = {p["metadata"]["name"]: _owner(p) for p in pvcs}
    for volume in volumes:
        candidates = [owner_of_claim.get(volume.claim or "")]
        candidates += [owner_of_workload.get(f"{m.kind}/{m.workload}") for m in volume.mounts]
        volume.releases = tuple(sorted({c for c in candidates if c and c in known}))


def _node(node: dict[str, Any]) -> Node:
    spec, status = node.get("spec") or {}, node.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    taints = tuple(
        f"{t['key']}:{t.get('effect', '')}"
        for t in spec.get("taints") or []
        if t.get("effect") in ("NoSchedule", "NoExecute")
    )
    return Node(
        name=node["metadata"]["name"],
        ready=ready,
        unschedulable=bool(spec.get("unschedulable", False)),
        taints=taints,
    )
