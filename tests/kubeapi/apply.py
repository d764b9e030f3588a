"""Server-side apply: merge an applied configuration and keep ``metadata.managedFields``.

A simplified structured-merge-diff: maps merge field by field, ``x-kubernetes-list-type: map``
lists merge by their keys, ``set`` lists by value, other lists are atomic. Fields a manager
applied before and no longer applies are removed unless another applier owns them; a field
another applier owns with a different value is a 409 conflict unless ``force=true``. Non-apply
writes that change an applied field take it away from its applier (as the apiserver does), but
are not recorded as ``Update`` entries.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Any

from .patching import SchemaNode

Path = tuple[str, ...]
_MISSING = object()
# Keys the apiserver defaults, needed to match applied list items against live ones.
_KEY_DEFAULTS = {"protocol": "TCP"}
_METADATA_FIELDS = ("labels", "annotations", "ownerReferences", "finalizers")


def _child(schema: SchemaNode | None, name: str) -> SchemaNode | None:
    return schema.field(name) if schema else None


def _list_kind(schema: SchemaNode | None) -> tuple[str, tuple[str, ...]]:
    if schema is None:
        return "atomic", ()
    return schema.list_type, schema.list_map_keys


def _item_key(item: Any, keys: tuple[str, ...]) -> str:
    values = {k: item.get(k, _KEY_DEFAULTS.get(k)) for k in keys} if isinstance(item, dict) else {}
    return "k:" + json.dumps({k: v for k, v in values.items() if v is not None},
                             sort_keys=True, separators=(",", ":"))


def _value_key(value: Any) -> str:
    return "v:" + json.dumps(value, sort_keys=True, separators=(",", ":"))


# --- field sets ----------------------------------------------------------------------------------

def _fields(value: Any, schema: SchemaNode | None, prefix: Path) -> Iterable[Path]:
    if isinstance(value, dict) and value and not (schema and schema.atomic_map):
        for key, child in value.items():
            yield from _fields(child, _child(schema, key), (*prefix, f"f:{key}"))
    elif isinstance(value, list) and _list_kind(schema)[0] in ("map", "set"):
        list_type, keys = _list_kind(schema)
        for item in value:
            if list_type == "set":
                yield (*prefix, _value_key(item))
            else:
                item_path = (*prefix, _item_key(item, keys))
                yield (*item_path, ".")
                yield from _fields(item, _items(schema), item_path)
    else:
        yield prefix


def _items(schema: SchemaNode | None) -> SchemaNode | None:
    return schema.items() if schema else None


def field_set(obj: dict[str, Any], schema: SchemaNode | None, subresource: str | None) -> set[Path]:
    """Leaf paths (``f:``/``k:``/``v:`` elements) set by ``obj``, as managedFields records them."""
    paths: set[Path] = set()
    metadata = obj.get("metadata") or {}
    roots = ["status"] if subresource == "status" else [
        k for k in obj if k not in ("apiVersion", "kind", "metadata", "status")]
    for key in roots:
        if key in obj:
            paths.update(_fields(obj[key], _child(schema, key), (f"f:{key}",)))
    if subresource != "status":
        meta_schema = _child(schema, "metadata")
        for key in _METADATA_FIELDS:
            if key in metadata:
                paths.update(_fields(metadata[key], _child(meta_schema, key),
                                     ("f:metadata", f"f:{key}")))
    return paths


def to_fields_v1(paths: Iterable[Path]) -> dict[str, Any]:
    """Nest leaf paths into the ``fieldsV1`` format."""
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for element in path:
            node = node.setdefault(element, {})
    return root


def from_fields_v1(fields: dict[str, Any], prefix: Path = ()) -> set[Path]:
    """Flatten ``fieldsV1`` back into leaf paths."""
    paths: set[Path] = set()
    for element, child in fields.items():
        if child:
            paths |= from_fields_v1(child, (*prefix, element))
        else:
            paths.add((*prefix, element))
    return paths


# --- reading and removing by path ----------------------------------------------------------------

def _step(value: Any, element: str) -> Any:
    if element.startswith("f:") and isinstance(value, dict):
        return value.get(element[2:], _MISSING)
    if element.startswith("k:") and isinstance(value, list):
        keys = tuple(json.loads(element[2:]))
        return next((i for i in value if _item_key(i, keys) == element), _MISSING)
    if element.startswith("v:") and isinstance(value, list):
        wanted = json.loads(element[2:])
        return wanted if wanted in value else _MISSING
    return _MISSING


def value_at(obj: Any, path: Path) -> Any:
    """The value a field path points at, or a sentinel when absent."""
    for element in path:
        if element == ".":
            break
        obj = _step(obj, element)
        if obj is _MISSING:
            break
    return obj


def remove_path(obj: Any, path: Path) -> None:
    """Remove the field (or list item, for paths ending in ``.``) at ``path`` if present."""
    if path and path[-1] == ".":
        path = path[:-1]
    parent = value_at(obj, path[:-1]) if len(path) > 1 else obj
    last = path[-1]
    if isinstance(parent, dict) and last.startswith("f:"):
        parent.pop(last[2:], None)
    elif isinstance(parent, list):
        target = _step(parent, last)
        if target is not _MISSING:
            parent.remove(target)


# --- merging -------------------------------------------------------------------------------------

def merge_applied(live: Any, applied: Any, schema: SchemaNode | None) -> Any:
    """Merge an applied configuration into the live value."""
    if not isinstance(applied, dict) or not isinstance(live, dict) or (
            schema and schema.atomic_map):
        if isinstance(applied, list) and isinstance(live, list):
            return _merge_list(live, applied, schema)
        return copy.deepcopy(applied)
    result = dict(live)
    for key, value in applied.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_applied(result.get(key), value, _child(schema, key))
    return result


def _merge_list(live: list[Any], applied: list[Any], schema: SchemaNode | None) -> list[Any]:
    list_type, keys = _list_kind(schema)
    if list_type == "set":
        return list(live) + [copy.deepcopy(v) for v in applied if v not in live]
    if list_type != "map":
        return copy.deepcopy(applied)
    result = [copy.deepcopy(i) for i in live]
    for item in applied:
        key = _item_key(item, keys)
        index = next((n for n, i in enumerate(result) if _item_key(i, keys) == key), None)
        if index is None:
            result.append(copy.deepcopy(item))
        else:
            result[index] = merge_applied(result[index], item, _items(schema))
    return result


# --- managedFields -------------------------------------------------------------------------------

def _entries(obj: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list(((obj or {}).get("metadata") or {}).get("managedFields") or [])


def _is_entry(entry: dict[str, Any], manager: str, subresource: str | None) -> bool:
    return (entry.get("manager") == manager and entry.get("operation") == "Apply"
            and entry.get("subresource") == subresource)


def _conflicting(live: dict[str, Any], applied: dict[str, Any], paths: set[Path],
                 manager: str) -> list[tuple[str, Path]]:
    """(manager, path) of fields another applier owns with a value different from ``applied``."""
    found = []
    for entry in _entries(live):
        if entry.get("manager") == manager or entry.get("operation") != "Apply":
            continue
        for path in sorted(paths & from_fields_v1(entry.get("fieldsV1") or {})):
            if value_at(live, path) != value_at(applied, path):
                found.append((str(entry["manager"]), path))
    return found


def _describe(manager: str, path: Path) -> str:
    field = "." + ".".join(e[2:] if e[1:2] == ":" else e for e in path if e != ".")
    return f'conflict with "{manager}": {field}'


def server_side_apply(live: dict[str, Any] | None, applied: dict[str, Any],
                      schema: SchemaNode | None, manager: str, *, force: bool,
                      subresource: str | None, now: str) -> tuple[dict[str, Any], list[str]]:
    """Return (merged object with managedFields, conflicts); with ``force`` there are none.

    Raises nothing: the caller turns conflicts into a 409.
    """
    paths = field_set(applied, schema, subresource)
    if live is None:
        result, others = copy.deepcopy(applied), []
    else:
        conflicts = _conflicting(live, applied, paths, manager)
        if conflicts and not force:
            return live, [_describe(m, p) for m, p in conflicts]
        result = merge_applied(live, applied, schema)
        others = _remove_stale_fields(live, result, paths, manager, subresource,
                                      taken={p for _, p in conflicts})
    entry = {"manager": manager, "operation": "Apply", "apiVersion": applied.get("apiVersion"),
             "time": now, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(paths)}
    if subresource:
        entry["subresource"] = subresource
    result.setdefault("metadata", {})["managedFields"] = [*others, entry]
    return result, []


def _remove_stale_fields(live: dict[str, Any], result: dict[str, Any], paths: set[Path],
                         manager: str, subresource: str | None,
                         taken: set[Path]) -> list[dict[str, Any]]:
    """Drop fields ``manager`` applied before but not now; return the other managers' entries."""
    entries = _entries(live)
    mine = [e for e in entries if _is_entry(e, manager, subresource)]
    others = [e for e in (_without(e, taken) for e in entries
                          if not _is_entry(e, manager, subresource)) if e]
    previous = from_fields_v1(mine[0].get("fieldsV1") or {}) if mine else set()
    owned = set().union(*(from_fields_v1(e.get("fieldsV1") or {}) for e in others))
    for path in sorted(previous - paths - owned, key=len, reverse=True):
        remove_path(result, path)
    return others


def _without(entry: dict[str, Any], taken: set[Path]) -> dict[str, Any]:
    """``entry`` minus fields a forced apply took over (empty dict if nothing is left)."""
    if entry.get("operation") != "Apply" or not taken:
        return entry
    remaining = from_fields_v1(entry.get("fieldsV1") or {}) - taken
    return {**entry, "fieldsV1": to_fields_v1(remaining)} if remaining else {}


def transfer_ownership(old: dict[str, Any], new: dict[str, Any]) -> None:
    """After a non-apply write, drop changed fields from appliers' field sets (in place)."""
    entries = _entries(new)
    if not any(e.get("operation") == "Apply" for e in entries):
        return
    kept = []
    for entry in entries:
        if entry.get("operation") == "Apply":
            paths = from_fields_v1(entry.get("fieldsV1") or {})
            unchanged = {p for p in paths if value_at(old, p) == value_at(new, p)}
            if not unchanged:
                continue
            entry = {**entry, "fieldsV1": to_fields_v1(unchanged)}
        kept.append(entry)
    new["metadata"]["managedFields"] = kept
