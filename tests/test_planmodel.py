"""The plan model (migrator/planmodel.py) says what the plan schema says: same fields, same
required-ness (required, or filled from a default when loaded), same value types.

No ``from __future__ import annotations`` here: the synthetic TypedDicts below need real
``NotRequired`` objects when their classes are built (see test_required_keys_...)."""

import copy
import inspect
from collections.abc import Mapping
from typing import (
    Any,
    Literal,
    NotRequired,
    TypedDict,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

from migrator import planmodel
from migrator.plan import schema

SCALARS = {"string": str, "integer": int, "boolean": bool}


def _resolve(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in node:
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def model_problems(
    model: Any, node: Mapping[str, Any], root: Mapping[str, Any], where: str = "(document)"
) -> list[str]:
    """Every disagreement between TypedDict ``model`` and schema object ``node`` (recursively)."""
    node = _resolve(node, root)
    properties = {k: _resolve(v, root) for k, v in (node.get("properties") or {}).items()}
    hints = get_type_hints(model)
    name = model.__name__
    problems = [
        f"{where}: schema field {k!r} is missing from {name}"
        for k in properties.keys() - hints.keys()
    ]
    problems += [
        f"{where}: {name} has {k!r}, which the schema does not"
        for k in hints.keys() - properties.keys()
    ]
    required = set(node.get("required") or ()) | {
        k for k, v in properties.items() if "default" in v
    }
    for key in sorted(hints.keys() & properties.keys()):
        if (key in model.__required_keys__) != (key in required):
            want = "Required" if key in required else "NotRequired"
            problems.append(f"{where}.{key}: should be {want} in {name}")
        problems += value_problems(hints[key], properties[key], root, f"{where}.{key}")
    return sorted(problems)


def value_problems(
    hint: Any, node: Mapping[str, Any], root: Mapping[str, Any], where: str
) -> list[str]:
    """Whether type ``hint`` holds what schema ``node`` allows (objects recursively)."""
    node = _resolve(node, root)
    if "properties" in node:
        if not is_typeddict(hint):
            return [f"{where}: a schema object, but the model says {hint}"]
        return model_problems(hint, node, root, where)
    if "enum" in node or "const" in node:
        values = set(node["enum"]) if "enum" in node else {node["const"]}
        if get_origin(hint) is not Literal or set(get_args(hint)) != values:
            return [f"{where}: should be Literal{sorted(values)}, the model says {hint}"]
        return []
    kind: str = node.get("type", "")
    if kind == "array":
        if get_origin(hint) is not list:
            return [f"{where}: a schema array, but the model says {hint}"]
        return value_problems(get_args(hint)[0], node["items"], root, f"{where}[]")
    if kind == "object":  # a map: additionalProperties says what each value is
        if get_origin(hint) is not dict or get_args(hint)[0] is not str:
            return [f"{where}: a schema map, but the model says {hint}"]
        return value_problems(get_args(hint)[1], node["additionalProperties"], root, f"{where}{{}}")
    if SCALARS.get(kind) is not hint:
        return [f"{where}: schema type {kind}, but the model says {hint}"]
    return []


def reached_models(model: Any) -> set[Any]:
    """Every TypedDict reachable from ``model`` through its fields."""
    found = {model}
    pending = list(get_type_hints(model).values())
    while pending:
        hint = pending.pop()
        if is_typeddict(hint) and hint not in found:
            found |= reached_models(hint)
        pending += get_args(hint)
    return found


def test_the_model_agrees_with_the_schema() -> None:
    assert model_problems(planmodel.PlanDocument, schema(), schema()) == []


def test_every_model_type_stands_for_a_schema_object() -> None:
    defined = {
        obj
        for _, obj in inspect.getmembers(planmodel, is_typeddict)
        if obj.__module__ == planmodel.__name__
    }
    assert defined - reached_models(planmodel.PlanDocument) == set()


def test_a_schema_field_added_without_the_model_is_caught() -> None:
    grown = copy.deepcopy(schema())
    volume = grown["$defs"]["volume"]["properties"]
    volume["priority"] = {"description": "Copy order.", "type": "integer", "examples": [1]}
    grown["$defs"]["release"]["properties"]["workloads"].pop("default")
    grown["properties"]["spec"]["properties"]["target"]["properties"]["type"]["enum"].append("nfs")
    assert model_problems(planmodel.PlanDocument, grown, grown) == [
        "(document).spec.releases[].workloads: should be NotRequired in PlanRelease",
        "(document).spec.target.type: should be Literal['nfs', 'pvc', 's3'], the model says "
        "typing.Literal['s3', 'pvc']",
        "(document).spec.volumes[]: schema field 'priority' is missing from PlanVolume",
    ]


# A small schema and models of it, right and wrong, through the same checker.
SYNTHETIC: dict[str, Any] = {
    "type": "object",
    "required": ["name", "parts"],
    "properties": {
        "name": {"type": "string"},
        "size": {"type": "integer", "default": 1},
        "note": {"type": "string"},
        "parts": {"type": "array", "items": {"$ref": "#/$defs/part"}},
    },
    "$defs": {
        "part": {
            "type": "object",
            "required": ["kind"],
            "properties": {
                "kind": {"enum": ["a", "b"]},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        }
    },
}


class Part(TypedDict):
    kind: Literal["a", "b"]
    labels: NotRequired[dict[str, str]]


class Thing(TypedDict):
    name: str
    size: int
    note: NotRequired[str]
    parts: list[Part]


def test_the_checker_accepts_a_matching_model() -> None:
    assert model_problems(Thing, SYNTHETIC, SYNTHETIC) == []


def test_the_checker_names_every_disagreement() -> None:
    class LoosePart(TypedDict):
        kind: str
        labels: NotRequired[dict[str, int]]

    class Wrong(TypedDict):
        name: NotRequired[str]
        size: NotRequired[int]
        extra: bool
        parts: list[LoosePart]

    assert model_problems(Wrong, SYNTHETIC, SYNTHETIC) == [
        "(document).name: should be Required in Wrong",
        "(document).parts[].kind: should be Literal['a', 'b'], the model says <class 'str'>",
        "(document).parts[].labels{}: schema type string, but the model says <class 'int'>",
        "(document).size: should be Required in Wrong",
        "(document): Wrong has 'extra', which the schema does not",
        "(document): schema field 'note' is missing from Wrong",
    ]


def test_the_checker_wants_an_object_where_the_schema_has_one() -> None:
    class Flat(TypedDict):
        name: str
        size: int
        note: NotRequired[str]
        parts: list[str]

    assert model_problems(Flat, SYNTHETIC, SYNTHETIC) == [
        "(document).parts[]: a schema object, but the model says <class 'str'>"
    ]


def test_required_keys_survive_the_module_definitions() -> None:
    # Neither planmodel nor this module has `from __future__ import annotations`: with it,
    # Python 3.11 counts NotRequired keys as required, and the checks above would compare
    # against the wrong sets.
    assert planmodel.PlanVolume.__optional_keys__ == {"roleReason", "release"}
    assert Thing.__optional_keys__ == {"note"}
