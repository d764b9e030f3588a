"""From an inventory and the user's choices to a plan document, its safety lint and its Jobs."""

# Over 600 lines: 605. Building the plan document and linting it are one step of `migrator plan`
# over the same request, target and inventory. The safety lint (~235 lines, its own section below)
# is the cut to make when either grows; not made while the typed plan model (#14) rewrites these
# signatures on another branch.

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict, cast

from migrator import __version__
from migrator.errors import BadInputError, InvalidTargetError
from migrator.inventory import Inventory, Mount, Release, Volume
from migrator.manifests.copy import render_plan
from migrator.manifests.verify import render_verify_jobs
from migrator.objectstore import S3Location
from migrator.plan import (
    API_VERSION,
    KIND,
    Plan,
    backup_overlaps,
    dump_yaml,
    save_plan,
    with_defaults,
)
from migrator.planmodel import (
    CaBundle,
    CopyJobs,
    CopyProfile,
    PlanBackup,
    PlanDocument,
    PlanRelease,
    PlanSource,
    PlanSpec,
    PlanTarget,
    PlanVolume,
    PlanWarning,
    PodSecurity,
    PodSecurityLevel,
    Severity,
    TargetType,
    VolumeCopy,
    VolumeSource,
    VolumeTarget,
    VolumeWorkload,
)
from migrator.quantity import human_bytes

# What .github/workflows/publish.yaml pushes from the cozystack repository for this version.
DEFAULT_IMAGE = f"ghcr.io/cozystack/migrator-agent:{__version__}"
HEADROOM = 1.2
SHARD_BYTES = 200 * 2**30  # one copy pod per this many bytes of media
MAX_AUTO_SHARDS = 8
SMALL_FILE_AVERAGE = 4 * 2**20  # below this average size a tree is "small files"
NETWORK_PROVISIONER_HINTS = ("seaweedfs", "nfs", "cephfs", "smb", "cifs", "juicefs", "s3", "efs")


@dataclass
class PlanRequest:
    """What the user asked for on the command line."""

    target: str
    name: str | None = None
    s3_endpoint: str | None = None
    credentials_secret: str | None = None
    secret_fields: dict[str, str] = field(default_factory=dict)
    move_config: bool = False
    target_capacity: int | None = None
    parallel: int | None = None
    image: str = DEFAULT_IMAGE
    context: str | None = None
    release: str | None = None
    backup_target: str | None = None
    backup_endpoint: str | None = None  # off-site backups: their own S3 ...
    backup_credentials_secret: str | None = None  # ... and keys
    backup_secret_fields: dict[str, str] = field(default_factory=dict)
    # spec.target.caBundle: {"configMap", "key"} or {"path"}; ca_file is a readable copy of it
    ca_bundle: CaBundle | None = None
    ca_file: str | None = None
    # spec.target.filer: the SeaweedFS filer's gRPC HOST:PORT (owner, mode, mtime of entries)
    filer_grpc: str | None = None
    pod_security: PodSecurityLevel | None = None  # --pod-security
    namespace_enforce: str | None = None  # the namespace's pod-security.kubernetes.io/enforce


@dataclass
class Target:
    """The resolved destination."""

    type: TargetType
    url: str
    location: S3Location | None = None
    storage_class: str | None = None
    provisioner: str | None = None


def resolve_target(request: PlanRequest, inventory: Inventory) -> Target:
    """Parse ``s3://BUCKET[/PREFIX]`` or ``pvc:STORAGECLASS``; raises InvalidTargetError."""
    url = request.target
    if url.startswith("s3://"):
        location = S3Location.parse(url)
        real_bucket = request.secret_fields.get("bucketName")
        if real_bucket:  # COSI assigns the real name; never guess it
            location = S3Location(real_bucket, location.prefix)
        return Target("s3", url, location=location)
    if url.startswith("pvc:"):
        storage_class = url[len("pvc:") :]
        if inventory.mode != "cluster":
            raise InvalidTargetError("a pvc: target needs cluster mode (-n NAMESPACE)")
        if storage_class not in inventory.storage_classes:
            known = ", ".join(sorted(inventory.storage_classes)) or "none"
            raise InvalidTargetError(
                f"StorageClass {storage_class!r} not found; known classes: {known}"
            )
        provisioner = inventory.storage_classes[storage_class]["provisioner"]
        return Target("pvc", url, storage_class=storage_class, provisioner=provisioner)
    raise InvalidTargetError(f"target {url!r} must be s3://BUCKET[/PREFIX] or pvc:STORAGECLASS")


def target_is_network(target: Target) -> bool:
    """S3 data reaches apps through the SeaweedFS CSI (FUSE); NFS-like classes are network too."""
    if target.type == "s3":
        return True
    provisioner = (target.provisioner or "").lower()
    return any(hint in provisioner for hint in NETWORK_PROVISIONER_HINTS)


def s3_endpoint(request: PlanRequest) -> str | None:
    endpoint = request.s3_endpoint or request.secret_fields.get("endpoint")
    if endpoint and "://" not in endpoint:
        endpoint = f"https://{endpoint}"  # COSI Secrets hold a host, no scheme
    return endpoint


def _backup_section(request: PlanRequest, target: Target) -> PlanBackup:
    """``spec.backup``: the copies' S3, or an S3 of its own (off-site) with its own keys."""
    backup = S3Location.parse(str(request.backup_target))
    bucket = backup.bucket
    fields = request.backup_secret_fields
    offsite = bool(request.backup_endpoint or request.backup_credentials_secret)
    requested = (
        S3Location.parse(request.target).bucket if request.target.startswith("s3://") else None
    )
    if offsite and fields.get("bucketName"):
        bucket = fields["bucketName"]  # the off-site Bucket app's name, as COSI assigned it
    elif not offsite and target.location is not None and bucket == requested:
        bucket = target.location.bucket  # the same Bucket app: use the name COSI assigned
    section: PlanBackup = {"url": backup.url, "bucket": bucket, "prefix": backup.prefix}
    endpoint = request.backup_endpoint or fields.get("endpoint")
    if endpoint:
        section["endpoint"] = endpoint if "://" in endpoint else f"https://{endpoint}"
    if request.backup_credentials_secret:
        section["credentialsSecret"] = request.backup_credentials_secret
    return section


class _BackupKey(TypedDict, total=False):
    """``spec.backup`` alone, so the spec literal can hold it in its place or not at all."""

    backup: PlanBackup


def build_plan_document(
    inventory: Inventory, request: PlanRequest, target: Target, probe: str | None
) -> PlanDocument:
    """The full plan document (validated later by :func:`migrator.plan.save_plan`)."""
    name = plan_name(inventory, request)
    backup: _BackupKey = {}
    if request.backup_target:
        backup["backup"] = _backup_section(request, target)
    spec: PlanSpec = {  # in the order the file shows them
        "source": _source_section(inventory, request),
        "target": _target_section(request, target, probe),
        **backup,
        "image": request.image,
        "podSecurity": pod_security_section(request, inventory),
        "moveConfig": request.move_config,
        "jobsDir": f"jobs/{name}",
        "volumes": [_volume_section(v, request, target) for v in inventory.volumes],
        "releases": [_release_section(r) for r in inventory.releases],
        "warnings": [],  # the lint below reads the rest of the document
    }
    document: PlanDocument = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "generator": f"migrator {__version__}"},
        "spec": spec,
    }
    loaded = with_defaults(document)  # what the checks read: the plan as it will be loaded
    for problem in backup_overlaps(loaded["spec"]):
        raise BadInputError(f"--backup-target {request.backup_target}: {problem}")
    spec["warnings"] = lint(loaded, inventory, target)
    return document


def pod_security_section(request: PlanRequest, inventory: Inventory) -> PodSecurity:
    """The Pod Security level to render the agents for: --pod-security, else restricted when the
    namespace enforces it, else baseline (what Talos enforces everywhere by default)."""
    if request.pod_security:
        return {"level": request.pod_security, "reason": f"--pod-security {request.pod_security}"}
    if request.namespace_enforce == "restricted":
        return {
            "level": "restricted",
            "reason": f"namespace {inventory.namespace} enforces restricted "
            "(pod-security.kubernetes.io/enforce)",
        }
    if not inventory.namespace:
        return {"level": "baseline", "reason": "default"}
    enforced = request.namespace_enforce or "no level"
    return {
        "level": "baseline",
        "reason": f"default (namespace {inventory.namespace} enforces {enforced})",
    }


def plan_name(inventory: Inventory, request: PlanRequest) -> str:
    name = request.name or request.release or inventory.namespace or "local"
    if len(name) > 40:
        raise BadInputError(f"plan name {name!r} is longer than 40 characters; pass --name")
    return name


def _source_section(inventory: Inventory, request: PlanRequest) -> PlanSource:
    source: PlanSource = {"mode": inventory.mode}
    if inventory.namespace:
        source["namespace"] = inventory.namespace
    if request.context:
        source["context"] = request.context
    if request.release:
        source["release"] = request.release
    return source


def _target_section(request: PlanRequest, target: Target, probe: str | None) -> PlanTarget:
    # Without credentialsSecret in the file, the schema's default applies when it is loaded.
    section = cast(PlanTarget, {"type": target.type, "url": target.url})
    if target.location is not None:
        section["bucket"] = target.location.bucket
        section["prefix"] = target.location.prefix
        endpoint = s3_endpoint(request)
        if endpoint:
            section["endpoint"] = endpoint
        if request.credentials_secret:
            section["credentialsSecret"] = request.credentials_secret
        if request.ca_bundle:
            section["caBundle"] = request.ca_bundle.copy()
        if request.filer_grpc:
            section["filer"] = request.filer_grpc
    else:
        section["storageClass"] = str(target.storage_class)
        section["provisioner"] = str(target.provisioner)
    section["filesystem"] = "network" if target_is_network(target) else "block"
    if request.target_capacity is not None:
        section["capacityBytes"] = request.target_capacity
    if probe:
        section["probe"] = probe
    return section


def _volume_section(volume: Volume, request: PlanRequest, target: Target) -> PlanVolume:
    action: Literal["move", "copy"] = (
        "move" if volume.role == "media" or request.move_config else "copy"
    )
    # Without workloads in the file (none found), the schema's default [] applies when loaded.
    section = cast(
        PlanVolume,
        {
            "name": volume.name,
            "role": volume.role,
            "roleReason": volume.role_reason,
            "action": action,
        },
    )
    if volume.release:
        section["release"] = volume.release
    section["source"] = _volume_source(volume)
    if volume.mounts:
        section["workloads"] = [_workload(m) for m in volume.mounts]
    section["target"] = _volume_target(volume, request, target)
    section["copy"] = _copy_section(volume, request, target)
    return section


def _volume_source(volume: Volume) -> VolumeSource:
    fields: list[tuple[str, Any]] = [
        ("pvc", volume.claim),
        ("path", volume.path),
        ("storageClass", volume.storage_class),
        ("provisioner", volume.provisioner),
        ("accessModes", list(volume.access_modes)),
        ("capacityBytes", volume.capacity_bytes),
        ("usedBytes", volume.used_bytes),
        ("files", volume.file_count),
        ("nodes", list(volume.nodes)),
    ]
    # Every key is optional and typed by the fields above.
    return cast(VolumeSource, {k: v for k, v in fields if v not in (None, [])})


def _workload(mount: Mount) -> VolumeWorkload:
    workload: VolumeWorkload = {
        "kind": mount.kind,
        "name": mount.workload,
        "container": mount.container,
        "mountPath": mount.mount_path,
        "readOnly": mount.read_only,
    }
    if mount.run_as_user is not None:
        workload["runAsUser"] = mount.run_as_user
    if mount.fs_group is not None:
        workload["fsGroup"] = mount.fs_group
    if mount.pod_labels:
        workload["podSelector"] = dict(mount.pod_labels)
    return workload


def target_size(volume: Volume, capacity_cap: int | None) -> int:
    """Size of a new PVC: the source's capacity, or its used bytes plus headroom if larger."""
    used = volume.used_bytes or 0
    size = max(volume.capacity_bytes or 0, math.ceil(used * HEADROOM), 2**30)
    size = math.ceil(size / 2**30) * 2**30
    return min(size, capacity_cap) if capacity_cap else size


def _volume_target(volume: Volume, request: PlanRequest, target: Target) -> VolumeTarget:
    if target.location is not None:
        return {"url": f"s3://{target.location.bucket}/{target.location.key(volume.name)}"}
    claim = f"{volume.name}-{target.storage_class}"[:63].rstrip("-")
    return {
        "pvc": claim,
        "storageClass": str(target.storage_class),
        "sizeBytes": target_size(volume, request.target_capacity),
    }


def _copy_section(volume: Volume, request: PlanRequest, target: Target) -> VolumeCopy:
    profile = _profile(volume)
    jobs: CopyJobs = {"preseed": f"copy-{volume.name}.yaml", "cutover": f"sync-{volume.name}.yaml"}
    if target.type == "pvc":
        jobs["claim"] = f"pvc-{volume.name}.yaml"
    jobs["verify"] = f"verify-{volume.name}.yaml"
    return {"tool": "rclone", "profile": profile, "shards": _shards(volume, request), "jobs": jobs}


def _profile(volume: Volume) -> CopyProfile:
    if volume.role == "config":
        return "small-files"
    if volume.file_count and volume.used_bytes is not None:
        average = volume.used_bytes / max(volume.file_count, 1)
        return "small-files" if average < SMALL_FILE_AVERAGE else "large-files"
    return "large-files"


def _shards(volume: Volume, request: PlanRequest) -> int:
    if volume.role != "media":
        return 1
    if request.parallel:
        return max(1, min(64, request.parallel))
    size = volume.used_bytes or volume.capacity_bytes or 0
    return max(1, min(MAX_AUTO_SHARDS, math.ceil(size / SHARD_BYTES)))


def _release_section(release: Release) -> PlanRelease:
    # Filled in the order the file shows them (kustomization before workloads).
    section = cast(
        PlanRelease,
        {
            "name": release.name,
            "namespace": release.namespace,
            "chart": release.chart,
            "suspended": release.suspended,
            "driftDetection": release.drift_detection,
        },
    )
    if release.kustomization:
        section["kustomization"] = release.kustomization
    section["workloads"] = list(release.workloads)
    return section


# --- safety lint ------------------------------------------------------------------------------

Finding = PlanWarning


def lint(document: PlanDocument, inventory: Inventory, target: Target) -> list[Finding]:
    """Every safety finding of a plan, sorted by volume then code (deterministic)."""
    findings: list[Finding] = []
    for check in LINTS:
        findings.extend(check(document, inventory, target))
    return sorted(findings, key=lambda f: (f.get("volume", ""), f["code"], f["message"]))


def _finding(
    code: str, message: str, volume: str | None = None, severity: Severity = "warning"
) -> Finding:
    if volume:
        return {"code": code, "severity": severity, "volume": volume, "message": message}
    return {"code": code, "severity": severity, "message": message}


def lint_sqlite_on_network(
    document: PlanDocument, inventory: Inventory, target: Target
) -> list[Finding]:
    """SQLite corrupts on FUSE/network file systems (Servarr wiki; seaweedfs#3384)."""
    if not target_is_network(target):
        return []
    findings = []
    for volume in document["spec"]["volumes"]:
        if volume["role"] != "config":
            continue
        if volume["action"] == "move":
            findings.append(
                _finding(
                    "sqlite-on-network-fs",
                    f"config volume {volume['name']} would land on a FUSE/network file system "
                    f"({target.provisioner or 'SeaweedFS via CSI'}): SQLite databases corrupt there "
                    "(Servarr wiki; seaweedfs#3384). Keep config on block storage: drop --move-config.",
                    volume["name"],
                )
            )
        else:
            findings.append(
                _finding(
                    "config-stays",
                    f"config volume {volume['name']} stays on its block storage (SQLite is unsafe on "
                    "FUSE/network file systems); the target gets a copy. Pass --move-config to move it.",
                    volume["name"],
                    severity="info",
                )
            )
    return findings


def lint_capacity(document: PlanDocument, inventory: Inventory, target: Target) -> list[Finding]:
    """The destination must hold at least what the sources use."""
    spec = document["spec"]
    capacity = spec["target"].get("capacityBytes")
    findings = []
    if target.type == "pvc":
        for volume in spec["volumes"]:
            used = volume["source"].get("usedBytes") or volume["source"].get("capacityBytes") or 0
            if volume["target"]["sizeBytes"] < used:
                findings.append(
                    _finding(
                        "capacity",
                        f"new claim {volume['target']['pvc']} ({human_bytes(volume['target']['sizeBytes'])}) "
                        f"is smaller than what {volume['name']} holds ({human_bytes(used)})",
                        volume["name"],
                    )
                )
        return findings
    if capacity is None:
        return []
    used = sum(
        v["source"].get("usedBytes") or v["source"].get("capacityBytes") or 0
        for v in spec["volumes"]
    )
    if capacity < used:
        findings.append(
            _finding(
                "capacity",
                f"destination capacity {human_bytes(capacity)} is below the {human_bytes(used)} "
                "the volumes use (capacity of claims where usage is unknown)",
            )
        )
    return findings


def lint_rwo_nodes(document: PlanDocument, inventory: Inventory, target: Target) -> list[Finding]:
    """An RWO claim in use can only be read on its node; that node must accept the copy pod."""
    nodes = {n.name: n for n in inventory.nodes}
    findings = []
    for volume in document["spec"]["volumes"]:
        source = volume["source"]
        if "ReadWriteOnce" not in (source.get("accessModes") or []):
            continue
        for node_name in source.get("nodes") or []:
            node = nodes.get(node_name)
            problem = _node_problem(node_name, node)
            if problem:
                findings.append(
                    _finding(
                        "rwo-node-unreachable",
                        f"{volume['name']} is ReadWriteOnce and attached on {node_name}, which {problem}: "
                        "the copy pod cannot be scheduled there. Uncordon it or stop the app first.",
                        volume["name"],
                    )
                )
    return findings


def _node_problem(name: str, node: Any) -> str | None:
    if node is None:
        return "does not exist"
    if not node.ready:
        return "is not Ready"
    if node.unschedulable:
        return "is cordoned (unschedulable)"
    if node.taints:
        return f"has taints {', '.join(node.taints)}"
    return None


def lint_flux(document: PlanDocument, inventory: Inventory, target: Target) -> list[Finding]:
    """Flux reverts manual changes: drift detection re-scales, Git re-asserts suspend."""
    findings = []
    for release in document["spec"]["releases"]:
        if release["driftDetection"] == "enabled":
            findings.append(
                _finding(
                    "helm-drift-detection",
                    f"HelmRelease {release['name']} has driftDetection enabled: helm-controller reverts "
                    "a manual scale-down unless the release is suspended first (migrator suspends it at cutover).",
                )
            )
        if release.get("kustomization"):
            findings.append(
                _finding(
                    "kustomization-reconciles",
                    f"HelmRelease {release['name']} is applied by Kustomization {release['kustomization']}: "
                    "if Git sets spec.suspend, Flux re-asserts it and un-suspends the release mid-migration. "
                    "Suspend the Kustomization too, or commit suspend: true during the cutover.",
                )
            )
    return findings


def lint_csi_driver(document: PlanDocument, inventory: Inventory, target: Target) -> list[Finding]:
    """Swapping to an s3 target mounts the bucket through seaweedfs-csi-driver."""
    if inventory.mode != "cluster" or target.type != "s3":
        return []
    if "seaweedfs-csi-driver" in inventory.csi_drivers:
        return []
    if not any(v["action"] == "move" for v in document["spec"]["volumes"]):
        return []
    return [
        _finding(
            "csi-driver-missing",
            "the cluster has no CSIDriver seaweedfs-csi-driver: the copy works, but swapping apps onto "
            "the bucket needs it (Cozystack ships SeaweedFS S3-only; see docs/how-to/cozystack-migration.md).",
            severity="info",
        )
    ]


def lint_filer(document: PlanDocument, inventory: Inventory, target: Target) -> list[Finding]:
    """Without the filer's gRPC address the copy cannot set owner, mode and mtime where a mount
    reads them: apps that mount the bucket (swap) would see uid 0, gid 0, mode 0660."""
    if target.type != "s3" or document["spec"]["target"].get("filer"):
        return []
    if not any(v["action"] == "move" for v in document["spec"]["volumes"]):
        return []
    return [
        _finding(
            "no-filer-attributes",
            "no --filer-grpc: a weed mount of the bucket (seaweedfs-csi-driver) will show every file as "
            "uid 0, gid 0, mode 0660 (directories 0771) with the copy time as mtime, so apps running "
            "as another user cannot read it; swap will refuse. Re-plan with --filer-grpc HOST:PORT.",
        )
    ]


def lint_probe(document: PlanDocument, inventory: Inventory, target: Target) -> list[Finding]:
    probe = document["spec"]["target"].get("probe", "")
    if not probe or probe.startswith(("bucket exists", "reachable")):
        return []
    code = "target-unreachable" if "unreachable" in probe else "target-problem"
    return [
        _finding(
            code,
            f"target probe: {probe} (a warning, not a failure: the copy Jobs may reach what this machine cannot)",
        )
    ]


def lint_restricted(document: PlanDocument, inventory: Inventory, target: Target) -> list[Finding]:
    """In restricted mode, the volumes whose agents must stay root (and so are refused)."""
    from migrator.manifests.pod import volume_owner

    if document["spec"]["podSecurity"]["level"] != "restricted":
        return []
    findings = []
    for volume in document["spec"]["volumes"]:
        # manifests.py takes plain dicts until it is converted to the plan model (#14)
        owner, why = volume_owner(cast(dict[str, Any], volume))
        if owner is not None and document["spec"]["target"]["type"] == "pvc":
            why = "a pvc: target is written as root to keep every file's owner"
        elif owner is not None:
            continue
        findings.append(
            _finding(
                "restricted-root-agent",
                f"its Jobs cannot run as a non-root user: {why}; they run as root, which a namespace "
                "enforcing restricted refuses (set runAsUser or PUID on the workload, or label the "
                "namespace pod-security.kubernetes.io/enforce=baseline for the migration)",
                volume["name"],
            )
        )
    return findings


def lint_image(document: PlanDocument, inventory: Inventory, target: Target) -> list[Finding]:
    """The built-in default image is only a name until someone publishes it (issue #11)."""
    image = document["spec"]["image"]
    if image != DEFAULT_IMAGE:
        return []
    return [
        _finding(
            "default-agent-image",
            f"the Jobs will run the built-in default image {image}, which may not be published: "
            "if it is not in the registry every Job sits in ImagePullBackOff. Build and push "
            "jobs/Containerfile to a registry the cluster can pull from and re-plan with "
            "--image REGISTRY/migrator-agent:TAG (see README, 'The agent image').",
        )
    ]


LINTS: list[Callable[[PlanDocument, Inventory, Target], list[Finding]]] = [
    lint_sqlite_on_network,
    lint_filer,
    lint_capacity,
    lint_rwo_nodes,
    lint_flux,
    lint_csi_driver,
    lint_probe,
    lint_image,
    lint_restricted,
]


# --- writing ----------------------------------------------------------------------------------


def default_plan_path(name: str, base: Path | None = None) -> Path:
    return (base or Path.cwd()) / "plans" / f"{name}.yaml"


def write_plan_and_jobs(document: PlanDocument, plan_path: Path) -> tuple[Plan, list[Path]]:
    """Save the plan and render its manifests into ``jobs/<name>/`` beside ``plans/``.

    Stale manifests of volumes no longer in the plan are left alone but no longer listed in
    kustomization.yaml. The verify Jobs are written beside the copy Jobs but not listed there:
    applying the kustomization copies, it never starts a verify.
    """
    plan = save_plan(document, plan_path)
    jobs_dir = plan.jobs_dir
    jobs_dir.mkdir(parents=True, exist_ok=True)
    written = []
    files = render_plan(plan.document)  # the plan as loaded: what run and swap render from
    for filename, manifest in {**files, **render_verify_jobs(plan.document)}.items():
        written.append(_write(jobs_dir / filename, dump_yaml(manifest)))
    from migrator.manifests.copy import build_kustomization

    written.append(
        _write(jobs_dir / "kustomization.yaml", dump_yaml(build_kustomization(list(files))))
    )
    return plan, written


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
