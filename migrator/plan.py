"""The plan document: one schema, deterministic load/save, and validation that reports every error.

A plan is a versioned YAML document (``apiVersion: migrator.cozystack.io/v1alpha1``,
``kind: MigrationPlan``). It holds no secret values, only Secret names.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from migrator.errors import BadInputError, InvalidPlanError, UnknownVolumeError

API_VERSION = "migrator.cozystack.io/v1alpha1"
KIND = "MigrationPlan"


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
        problems += _prefix_problems(document["spec"])
        problems += [f"At 'spec.backup.prefix': {p}" for p in backup_overlaps(document["spec"])]
    return problems


def _prefix_problems(spec: dict[str, Any]) -> list[str]:
    from migrator.objectstore import prefix_problem

    problems = []
    for section in ("target", "backup"):
        problem = prefix_problem(str(spec.get(section, {}).get("prefix", "")))
        if problem:
            problems.append(f"At 'spec.{section}.prefix': {problem}")
    return problems


def _within(key: str, prefix: str) -> bool:
    """Whether key prefix ``key`` is ``prefix`` or below it (whole path segments)."""
    return not prefix or key == prefix or key.startswith(prefix + "/")


def backup_overlaps(spec: dict[str, Any]) -> list[str]:
    """Why the backups (``spec.backup``) would share keys with the copies, or [].

    A volume's snapshots go under ``BACKUP/VOLUME/``; its copy under ``TARGET/VOLUME/`` and the
    copy state under ``TARGET/.migrator/``. Where one contains the other, the cutover's sync
    deletes the snapshots as extras (and verify reports them).
    """
    backup, target = spec.get("backup"), spec.get("target", {})
    if not backup or target.get("type") != "s3":
        return []
    bucket = backup.get("bucket") or str(backup["url"])[len("s3://") :].partition("/")[0]
    if bucket != target.get("bucket"):
        return []
    overlap = _overlap(spec, str(backup.get("prefix", "")))
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


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def _overlap(spec: dict[str, Any], backup_prefix: str) -> tuple[str, str, str, str] | None:
    """(volume, its snapshot prefix, what it overlaps, that prefix), or None."""
    base = str(spec["target"].get("prefix", ""))
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
    """A loaded, validated plan and where it came from."""

    document: dict[str, Any]
    path: Path | None = None

    @property
    def name(self) -> str:
        return str(self.document["metadata"]["name"])

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.document["spec"]
        return spec

    @property
    def mode(self) -> str:
        return str(self.spec["source"]["mode"])

    @property
    def namespace(self) -> str | None:
        namespace = self.spec["source"].get("namespace")
        return str(namespace) if namespace else None

    @property
    def volumes(self) -> list[dict[str, Any]]:
        volumes: list[dict[str, Any]] = self.spec["volumes"]
        return volumes

    def volume(self, name: str) -> dict[str, Any]:
        for volume in self.volumes:
            if volume["name"] == name:
                return volume
        raise UnknownVolumeError(name, [v["name"] for v in self.volumes])

    def volumes_for_phase(self, phase: str) -> list[dict[str, Any]]:
        """Volumes of a phase: ``config``, ``media`` or ``all``."""
        if phase not in ("config", "media", "all"):
            raise BadInputError(f"phase {phase!r} must be config, media or all")
        return [v for v in self.volumes if phase in ("all", v["role"])]

    @property
    def jobs_dir(self) -> Path:
        """Absolute directory of the rendered manifests."""
        base = project_dir(self.path) if self.path else Path.cwd()
        return base / str(self.spec.get("jobsDir", f"jobs/{self.name}"))


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


def save_plan(document: dict[str, Any], path: Path) -> Plan:
    """Validate and write a plan; raises InvalidPlanError if the builder produced a bad one."""
    problems = validate_document(document)
    if problems:
        raise InvalidPlanError(str(path), problems)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# Generated by 'migrator plan'. Review it; it holds no secret values.\n"
    _write_atomically(path, text + dump_yaml(document))
    return Plan(document, path)


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
    return Plan(document, path)
