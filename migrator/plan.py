"""The plan document: one schema, deterministic load/save, and validation that reports every error.

A plan is a versioned YAML document (``apiVersion: migrator.cozystack.io/v1alpha1``,
``kind: MigrationPlan``). It holds no secret values, only Secret names.

The schema is also the one place that says what an absent field means (its ``default``s): a
loaded plan has them filled in (:func:`with_defaults`), so code reads ``target["prefix"]``
rather than restating ``.get("prefix", "")``. The file keeps only what the planner or the user
wrote: defaults are never saved into it. Its shape as types: :mod:`migrator.planmodel`.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final, TypeVar, cast

import yaml

from migrator.errors import BadInputError, InvalidPlanError, UnknownVolumeError
from migrator.planmodel import PlanBackup, PlanDocument, PlanSpec

API_VERSION: Final = "migrator.cozystack.io/v1alpha1"
KIND: Final = "MigrationPlan"


@functools.cache
def schema() -> dict[str, Any]:
    """The JSON Schema of plan files (also the reference documentation of every field)."""
    text = resources.files("migrator").joinpath("schemas/plan.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _format_path(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(document)"


def validate_document(document: Any) -> list[str]:
    """Return every schema problem as ``At 'spec.volumes[1].target': message``; [] when valid."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema())
    problems = []
    for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.path))):
        problems.append(f"At '{_format_path(error.path)}': {_short_message(error)}")
    if not problems:  # what one field's schema cannot say: prefixes, and two fields together
        spec = with_defaults(document)["spec"]
        problems += _prefix_problems(spec)
        problems += [f"At 'spec.backup.prefix': {p}" for p in backup_overlaps(spec)]
    return problems


def fill_defaults(node: Mapping[str, Any], instance: Any, root: Mapping[str, Any]) -> None:
    """Set, in place, every absent property of ``instance`` that schema ``node`` gives a
    ``default`` (a deep copy of it), through nested objects, array items and local ``$ref``s
    (resolved in ``root``). Only ``properties`` and ``items`` are followed: a default inside a
    ``oneOf``/``anyOf`` branch would depend on which branch matched, and the plan schema has none.
    """
    node = _resolve(node, root)
    if isinstance(instance, dict):
        for key, sub in (node.get("properties") or {}).items():
            sub = _resolve(sub, root)
            if key not in instance and "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
            if key in instance:
                fill_defaults(sub, instance[key], root)
    elif isinstance(instance, list) and isinstance(node.get("items"), Mapping):
        for item in instance:
            fill_defaults(node["items"], item, root)


def _resolve(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow a ``$ref`` of the form ``#/a/b`` (the only kind the plan schema uses)."""
    while "$ref" in node:
        target: Any = root
        for part in str(node["$ref"]).removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def with_defaults(document: Any) -> PlanDocument:
    """A copy of a valid plan ``document`` with the schema's defaults filled in (the argument is
    left as it is: it may be what gets saved)."""
    filled = copy.deepcopy(document)
    fill_defaults(schema(), filled, schema())
    return cast(PlanDocument, filled)


def _prefix_problems(spec: PlanSpec) -> list[str]:
    from migrator.objectstore import prefix_problem

    problems = []
    for section, prefix in (
        ("target", spec["target"]["prefix"]),
        ("backup", backup_location(spec["backup"])[1] if "backup" in spec else ""),
    ):
        problem = prefix_problem(prefix)
        if problem:
            problems.append(f"At 'spec.{section}.prefix': {problem}")
    return problems


def _within(key: str, prefix: str) -> bool:
    """Whether key prefix ``key`` is ``prefix`` or below it (whole path segments)."""
    return not prefix or key == prefix or key.startswith(prefix + "/")


def backup_overlaps(spec: PlanSpec) -> list[str]:
    """Why the backups (``spec.backup``) would share keys with the copies, or [].

    A volume's snapshots go under ``BACKUP/VOLUME/``; its copy under ``TARGET/VOLUME/`` and the
    copy state under ``TARGET/.migrator/``. Where one contains the other, the cutover's sync
    deletes the snapshots as extras (and verify reports them).
    """
    backup, target = spec.get("backup"), spec["target"]
    if not backup or target["type"] != "s3":
        return []
    bucket, prefix = backup_location(backup)
    if bucket != target.get("bucket"):
        return []
    overlap = _overlap(spec, prefix)
    if overlap is None:
        return []
    volume, snapshots, what, keys = overlap
    free = next(
        p for p in ("backups", "migrator-backups", "migrator-backups-0") if not _overlap(spec, p)
    )
    return [
        f"the backups of {volume} (s3://{bucket}/{snapshots}/) would share keys with {what} "
        f"(s3://{bucket}/{keys}/), whose cutover deletes what the source does not have; "
        f"put backups beside the copies, e.g. s3://{bucket}/{free}"
    ]


def backup_location(backup: PlanBackup) -> tuple[str, str]:
    """(bucket, prefix) of the backups: ``bucket`` and ``prefix`` (default ""), or without a
    bucket both from ``url`` (as ``manifests.backup_url`` reads them)."""
    if backup.get("bucket"):
        return backup["bucket"], backup.get("prefix", "")
    bucket, _, prefix = backup["url"].removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def _overlap(spec: PlanSpec, backup_prefix: str) -> tuple[str, str, str, str] | None:
    """(volume, its snapshot prefix, what it overlaps, that prefix), or None."""
    base = spec["target"]["prefix"]
    copies = {_join(base, v["name"]): f"the copy of volume {v['name']}" for v in spec["volumes"]}
    copies[_join(base, ".migrator")] = "the copy state (.migrator/)"
    for volume in spec["volumes"]:
        snapshots = _join(backup_prefix, volume["name"])
        for keys, what in copies.items():
            if _within(snapshots, keys) or _within(keys, snapshots):
                return volume["name"], snapshots, what, keys
    return None


def _short_message(error: Any) -> str:
    if error.validator == "additionalProperties":
        return str(error.message).replace("Additional properties are not allowed", "unknown field")
    if error.validator == "enum":
        return f"{error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
    return str(error.message)


@dataclass
class Plan:
    """A loaded, validated plan (its schema defaults filled in) and where it came from.

    ``model`` is the document as :mod:`migrator.planmodel` types. ``document``, ``spec``,
    ``volumes``, ``volume()`` and ``volumes_for_phase()`` are the same objects as plain
    ``dict[str, Any]``, for the modules that still take those (``manifests/``,
    ``workflows/swap/``, ``workflows/backup.py``, ``ui.py``): a TypedDict is not a ``dict[str, Any]`` to mypy. They go once
    those modules take the model types (#14); typed code reads ``model``, :func:`volume_named`
    and :func:`volumes_in_phase`.
    """

    model: PlanDocument
    path: Path | None = None

    @property
    def document(self) -> dict[str, Any]:
        """The document as a plain dict (the one cast from the model; see the class)."""
        return cast(dict[str, Any], self.model)

    @property
    def name(self) -> str:
        return self.model["metadata"]["name"]

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.document["spec"]
        return spec

    @property
    def mode(self) -> str:
        return self.model["spec"]["source"]["mode"]

    @property
    def namespace(self) -> str | None:
        return self.model["spec"]["source"].get("namespace") or None

    @property
    def volumes(self) -> list[dict[str, Any]]:
        volumes: list[dict[str, Any]] = self.spec["volumes"]
        return volumes

    def volume(self, name: str) -> dict[str, Any]:
        return volume_named(self.volumes, name)

    def volumes_for_phase(self, phase: str) -> list[dict[str, Any]]:
        """Volumes of a phase: ``config``, ``media`` or ``all``."""
        return volumes_in_phase(self.volumes, phase)

    @property
    def jobs_dir(self) -> Path:
        """Absolute directory of the rendered manifests."""
        base = project_dir(self.path) if self.path else Path.cwd()
        # A default the schema can only describe: it depends on metadata.name.
        return base / self.model["spec"].get("jobsDir", f"jobs/{self.name}")


VolumeT = TypeVar("VolumeT", bound=Mapping[str, Any])


def volume_route(spec: Mapping[str, Any], volume: Mapping[str, Any]) -> str:
    """Where a volume's copy goes from and to, as the journal records it with each step.

    A plan re-written under the same name keeps its journal; a cutover or verify recorded on
    another route (another source, bucket, prefix, endpoint or StorageClass) is not done for
    this one, so ``run`` copies again and ``swap`` refuses until it has.
    """
    source = volume["source"]
    namespace = spec["source"].get("namespace")
    origin = source.get("path") or "/".join(filter(None, [namespace, source.get("pvc")]))
    target = volume["target"]
    if target.get("url"):
        destination = str(target["url"])
        endpoint = spec["target"].get("endpoint")
        if endpoint:
            destination += f" at {endpoint}"
    else:
        destination = f"pvc {target.get('pvc')}"
        if target.get("storageClass"):
            destination += f" ({target['storageClass']})"
    return f"{origin} -> {destination}"


def volume_named(volumes: Sequence[VolumeT], name: str) -> VolumeT:
    """The volume called ``name``; raises UnknownVolumeError (listing the known ones)."""
    for volume in volumes:
        if volume["name"] == name:
            return volume
    raise UnknownVolumeError(name, [v["name"] for v in volumes])


def volumes_in_phase(volumes: Sequence[VolumeT], phase: str) -> list[VolumeT]:
    """The volumes of a phase: ``config``, ``media`` or ``all``; raises BadInputError."""
    if phase not in ("config", "media", "all"):
        raise BadInputError(f"phase {phase!r} must be config, media or all")
    return [v for v in volumes if phase in ("all", v["role"])]


def project_dir(plan_path: Path) -> Path:
    """The project directory of a plan: the parent of ``plans/``, or the plan's own directory."""
    parent = plan_path.resolve().parent
    return parent.parent if parent.name == "plans" else parent


class _PlainDumper(yaml.SafeDumper):
    """Never emits anchors/aliases: every manifest reads on its own."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(document: Any) -> str:
    """Deterministic, diff-friendly YAML: keys in insertion order, block style, unicode kept."""
    return yaml.dump(
        document,
        Dumper=_PlainDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=100,
    )


def save_plan(document: PlanDocument, path: Path) -> Plan:
    """Validate and write a plan as it is (no defaults added: the file stays what the planner
    wrote); returns it loaded, defaults filled in. Raises InvalidPlanError if the builder produced
    a bad one."""
    problems = validate_document(document)
    if problems:
        raise InvalidPlanError(str(path), problems)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# Generated by 'migrator plan'. Review it; it holds no secret values.\n"
    _write_atomically(path, text + dump_yaml(document))
    return Plan(with_defaults(document), path)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file.

    Raises BadInputError when it does not exist and InvalidPlanError (with every problem) when
    it is not valid YAML or does not match the schema.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInputError(f"plan file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read plan file {str(path)!r}: {exc}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InvalidPlanError(str(path), [f"not valid YAML{where}"]) from None
    problems = validate_document(document)
    if problems:
        raise InvalidPlanError(str(path), problems)
    return Plan(with_defaults(document), path)
