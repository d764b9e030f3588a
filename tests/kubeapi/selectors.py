"""Label and field selectors, parsed from query strings and from ``LabelSelector`` specs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_REQUIREMENT = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9][-A-Za-z0-9_./]*)\s*"
    r"(?:(?P<op>==|=|!=|>|<)\s*(?P<value>[-A-Za-z0-9_.]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^()]*)\))?\s*$"
)

_SPEC_OPERATORS = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}

# Field labels the real apiserver accepts per kind; everything else is a 400 there too.
_COMMON_FIELDS = ("metadata.name", "metadata.namespace")
_EXTRA_FIELDS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
            "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP",
            "status.nominatedNodeName"),
    "Event": ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
              "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
              "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"),
    "Secret": ("type",),
    "Namespace": ("status.phase",),
    "Node": ("spec.unschedulable",),
    "Job": ("status.successful",),
    "ReplicaSet": ("status.replicas",),
    "PersistentVolumeClaim": (),
}


@dataclass(frozen=True)
class Requirement:
    """One label requirement: ``op`` is one of = != in notin exists ! > <."""

    key: str
    op: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfy this requirement."""
        present = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        return present and _compare(value, self.op, self.values[0])

    def __str__(self) -> str:
        if self.op in ("in", "notin"):
            return f"{self.key} {self.op} ({','.join(self.values)})"
        if self.op == "exists":
            return self.key
        if self.op == "!":
            return f"!{self.key}"
        return f"{self.key}{self.op}{self.values[0]}"


def _compare(value: str | None, op: str, bound: str) -> bool:
    try:
        number, limit = int(value or ""), int(bound)
    except ValueError:
        return False
    return number > limit if op == ">" else number < limit


@dataclass(frozen=True)
class LabelSelector:
    """A conjunction of requirements; the empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        """Whether an object with ``labels`` is selected."""
        return all(r.matches(labels or {}) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def _parse_requirement(text: str) -> Requirement:
    match = _REQUIREMENT.match(text)
    if not match or (match["neg"] and (match["op"] or match["setop"])):
        raise ValueError(f"unable to parse requirement: {text.strip()!r}")
    key = match["key"]
    if match["neg"]:
        return Requirement(key, "!")
    if match["setop"]:
        values = tuple(v.strip() for v in match["values"].split(",") if v.strip())
        return Requirement(key, match["setop"], values)
    if match["op"]:
        op = "=" if match["op"] == "==" else match["op"]
        if op in ("<", ">") and not match["value"].lstrip("-").isdigit():
            raise ValueError(f"for 'Gt', 'Lt' operators, the value must be an integer: {text!r}")
        return Requirement(key, op, (match["value"],))
    return Requirement(key, "exists")


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse ``a=b,c!=d,e in (f,g),!h``; raises ValueError on bad syntax."""
    if not text:
        return LabelSelector()
    return LabelSelector(tuple(_parse_requirement(p) for p in _split_top_level(text)))


def label_selector_from_spec(spec: Mapping[str, Any] | None) -> LabelSelector:
    """Build a selector from a ``metav1.LabelSelector`` dict (matchLabels, matchExpressions)."""
    spec = spec or {}
    requirements = [Requirement(k, "=", (v,)) for k, v in (spec.get("matchLabels") or {}).items()]
    for expression in spec.get("matchExpressions") or []:
        op = _SPEC_OPERATORS.get(expression.get("operator", ""))
        if op is None:
            raise ValueError(f"{expression.get('operator')!r} is not a valid selector operator")
        requirements.append(Requirement(expression["key"], op,
                                        tuple(expression.get("values") or ())))
    return LabelSelector(tuple(requirements))


@dataclass(frozen=True)
class FieldSelector:
    """Equality and inequality on dotted field paths (``status.phase!=Running``)."""

    terms: tuple[tuple[str, bool, str], ...] = ()

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Whether ``obj`` satisfies every term (missing fields compare as "")."""
        return all((field_value(obj, path) == value) == equal for path, equal, value in self.terms)


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string form of a dotted field, as the apiserver's field label conversion gives it."""
    current: Any = obj
    for part in path.split("."):
        current = current.get(part) if isinstance(current, Mapping) else None
    if isinstance(current, bool):
        return str(current).lower()
    return "" if current is None else str(current)


def parse_field_selector(text: str | None, kind: str) -> FieldSelector:
    """Parse ``a=b,c!=d`` for ``kind``; raises ValueError for unsupported field labels."""
    if not text:
        return FieldSelector()
    allowed = _COMMON_FIELDS + _EXTRA_FIELDS.get(kind, ())
    terms = []
    for part in _split_top_level(text):
        match = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not match:
            raise ValueError(f"invalid selector: {part!r}; can't understand {part.strip()!r}")
        path, op, value = match.groups()
        if path not in allowed:
            raise ValueError(f'field label not supported: {path}')
        terms.append((path, op != "!=", value))
    return FieldSelector(tuple(terms))
