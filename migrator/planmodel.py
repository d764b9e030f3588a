"""The plan document as types: one TypedDict per object of ``schemas/plan.schema.json``.

The schema stays the single truth (fields, descriptions, examples, defaults); these types only
say the same thing to mypy, and ``tests/test_planmodel.py`` fails when the two disagree: each
TypedDict has exactly its schema object's ``properties``, and a key is ``Required`` when the
schema requires it or gives it a ``default`` (a loaded plan has its defaults filled in by
:func:`migrator.plan.with_defaults`, so code reads such keys directly).

Why TypedDicts rather than dataclasses: a plan is YAML, loaded and saved as plain dicts and lists,
and every builder in ``manifests.py`` and the workflows reads it as a dict. TypedDicts are those
same dicts, so the YAML round trip (load, validate, save byte for byte in the user's key order)
and all the existing ``volume["source"]["pvc"]`` code stay as they are, at no runtime cost; a
dataclass model would need a converter each way and a rewrite of every reader, and would have to
restate what the schema already says about optional fields.

The target is one TypedDict, not an s3 / pvc union: the schema has one ``target`` object whose
``type`` says which keys apply (s3: ``bucket``, ``prefix``, ``endpoint``, ``credentialsSecret``,
``caBundle``, ``filer``; pvc: ``storageClass``, ``provisioner``), and no ``oneOf`` per type.

No ``from __future__ import annotations`` here: ``Required``/``NotRequired`` must be real objects
when the class is built, or ``__required_keys__`` (which the agreement test reads) is wrong.
"""

from typing import Literal, NotRequired, TypedDict

Mode = Literal["cluster", "local"]
TargetType = Literal["s3", "pvc"]
Filesystem = Literal["block", "network"]
Role = Literal["config", "media"]
Action = Literal["move", "copy"]
AccessMode = Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]
WorkloadKind = Literal["Deployment", "StatefulSet", "Pod"]
CopyProfile = Literal["small-files", "large-files"]
PodSecurityLevel = Literal["baseline", "restricted"]
Severity = Literal["warning", "info"]


class PlanMetadata(TypedDict):
    """``metadata``: identity of the plan."""

    name: str
    generator: NotRequired[str]


class PlanSource(TypedDict):
    """``spec.source``: where the volumes live now."""

    mode: Mode
    namespace: NotRequired[str]
    context: NotRequired[str]
    release: NotRequired[str]


class CaBundle(TypedDict):
    """``spec.target.caBundle``: ``configMap`` + ``key`` (cluster mode) or ``path`` (local)."""

    configMap: NotRequired[str]
    key: NotRequired[str]
    path: NotRequired[str]


class PlanTarget(TypedDict):
    """``spec.target``: where the volumes go (keys by ``type``: see the module docstring)."""

    type: TargetType
    url: NotRequired[str]
    bucket: NotRequired[str]
    prefix: str  # default ""
    endpoint: NotRequired[str]
    credentialsSecret: str  # default migrator-s3-credentials
    caBundle: NotRequired[CaBundle]
    filer: NotRequired[str]
    storageClass: NotRequired[str]
    provisioner: NotRequired[str]
    filesystem: NotRequired[Filesystem]
    capacityBytes: NotRequired[int]
    probe: NotRequired[str]


class PlanBackup(TypedDict):
    """``spec.backup``: where nightly config backups go."""

    url: str
    bucket: NotRequired[str]
    prefix: NotRequired[str]  # read it through migrator.plan.backup_location
    endpoint: NotRequired[str]
    credentialsSecret: NotRequired[str]


class PodSecurity(TypedDict):
    """``spec.podSecurity``: the level the agent pods are rendered for, and why."""

    level: PodSecurityLevel
    reason: str


class VolumeSource(TypedDict):
    """``spec.volumes[].source``: the volume as it is now."""

    pvc: NotRequired[str]
    path: NotRequired[str]
    storageClass: NotRequired[str]
    provisioner: NotRequired[str]
    accessModes: NotRequired[list[AccessMode]]
    capacityBytes: NotRequired[int]
    usedBytes: NotRequired[int]
    files: NotRequired[int]
    nodes: NotRequired[list[str]]


class VolumeWorkload(TypedDict):
    """``spec.volumes[].workloads[]``: a container that mounts the volume."""

    kind: WorkloadKind
    name: str
    container: str
    mountPath: str
    readOnly: bool
    runAsUser: NotRequired[int]
    fsGroup: NotRequired[int]
    podSelector: NotRequired[dict[str, str]]


class VolumeTarget(TypedDict):
    """``spec.volumes[].target``: where this volume goes."""

    url: NotRequired[str]
    pvc: NotRequired[str]
    storageClass: NotRequired[str]
    sizeBytes: NotRequired[int]


class CopyJobs(TypedDict):
    """``spec.volumes[].copy.jobs``: manifest files per step, relative to ``jobsDir``."""

    preseed: str
    cutover: str
    claim: NotRequired[str]
    verify: NotRequired[str]


class VolumeCopy(TypedDict):
    """``spec.volumes[].copy``: how the copy Jobs move the data."""

    tool: Literal["rclone"]
    profile: NotRequired[CopyProfile]
    shards: int
    jobs: CopyJobs


class PlanVolume(TypedDict):
    """``spec.volumes[]`` (``$defs/volume``): one source volume and its destination."""

    name: str
    role: Role
    roleReason: NotRequired[str]
    action: Action
    release: NotRequired[str]
    source: VolumeSource
    workloads: list[VolumeWorkload]  # default []
    target: VolumeTarget
    copy: VolumeCopy


class PlanRelease(TypedDict):
    """``spec.releases[]`` (``$defs/release``): a Flux HelmRelease."""

    name: str
    namespace: str
    chart: NotRequired[str]
    suspended: NotRequired[bool]
    driftDetection: NotRequired[str]
    kustomization: NotRequired[str]
    workloads: list[str]  # default []


class PlanWarning(TypedDict):
    """``spec.warnings[]`` (``$defs/warning``): a safety finding."""

    code: str
    severity: Severity
    volume: NotRequired[str]
    message: str


class PlanSpec(TypedDict):
    """``spec``: what moves where, and how."""

    source: PlanSource
    target: PlanTarget
    backup: NotRequired[PlanBackup]
    image: str
    podSecurity: PodSecurity  # default baseline
    moveConfig: bool  # default false
    jobsDir: NotRequired[str]  # read it through Plan.jobs_dir (its default is jobs/NAME)
    volumes: list[PlanVolume]
    releases: list[PlanRelease]  # default []
    warnings: list[PlanWarning]  # default []


class PlanDocument(TypedDict):
    """A whole plan file (``kind: MigrationPlan``)."""

    apiVersion: Literal["migrator.cozystack.io/v1alpha1"]
    kind: Literal["MigrationPlan"]
    metadata: PlanMetadata
    spec: PlanSpec
