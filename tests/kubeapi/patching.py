"""JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge patch.

Strategic merge follows the ``x-kubernetes-patch-strategy`` / ``x-kubernetes-patch-merge-key``
annotations of the official schemas, so ``containers`` merge by ``name``, container ``ports`` by
``containerPort``, ``volumeMounts`` by ``mountPath`` and so on, exactly where the apiserver does.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from .flux_schemas import FLUX_SCHEMAS
from .validation import definitions, kind_schema


class PatchError(ValueError):
    """A patch that cannot be applied (a failed ``test``, a missing path...)."""


class SchemaNode:
    """A position in a kind's schema, with ``$ref`` resolved and patch annotations exposed."""

    def __init__(self, node: Mapping[str, Any]) -> None:
        ref = node.get("$ref")
        if isinstance(ref, str):
            resolved = definitions()[ref.rsplit("/", 1)[-1]]
            node = {**resolved, **{k: v for k, v in node.items() if k != "$ref"}}
        self._node = node

    @classmethod
    def for_kind(cls, api_version: str, kind: str) -> SchemaNode | None:
        """The root node of a built-in kind; None for kinds without official schema."""
        schema = kind_schema(api_version, kind)
        if schema is None or kind in FLUX_SCHEMAS:
            return None
        return cls(schema)

    def field(self, name: str) -> SchemaNode | None:
        """The schema of property ``name`` (or of map values), if known."""
        properties = self._node.get("properties") or {}
        if name in properties:
            return SchemaNode(properties[name])
        extra = self._node.get("additionalProperties")
        return SchemaNode(extra) if isinstance(extra, Mapping) else None

    def items(self) -> SchemaNode | None:
        """The schema of list items, if this is a list."""
        items = self._node.get("items")
        return SchemaNode(items) if isinstance(items, Mapping) else None

    @property
    def patch_strategy(self) -> str:
        """``merge``, ``merge,retainKeys``, ``replace`` or ""."""
        return str(self._node.get("x-kubernetes-patch-strategy", ""))

    @property
    def merge_key(self) -> str | None:
        """The strategic merge key of a list of objects."""
        key = self._node.get("x-kubernetes-patch-merge-key")
        return str(key) if key else None

    @property
    def list_type(self) -> str:
        """``map``, ``set`` or ``atomic`` (the default) for server-side apply."""
        return str(self._node.get("x-kubernetes-list-type", "atomic"))

    @property
    def list_map_keys(self) -> tuple[str, ...]:
        """Keys identifying items of a ``map`` list."""
        return tuple(self._node.get("x-kubernetes-list-map-keys") or ())

    @property
    def atomic_map(self) -> bool:
        """Whether a map is replaced as a whole by apply."""
        return self._node.get("x-kubernetes-map-type") == "atomic"


def _child(schema: SchemaNode | None, name: str) -> SchemaNode | None:
    return schema.field(name) if schema else None


def _items(schema: SchemaNode | None) -> SchemaNode | None:
    return schema.items() if schema else None


# --- JSON patch ----------------------------------------------------------------------------------

def _tokens(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f"JSON pointer must start with '/': {pointer!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _index(container: list[Any], token: str, *, adding: bool = False) -> int:
    if adding and token == "-":
        return len(container)
    if not token.isdigit():
        raise PatchError(f"invalid array index {token!r}")
    index = int(token)
    if index > len(container) or (index == len(container) and not adding):
        raise PatchError(f"array index {index} out of bounds")
    return index


def _resolve(doc: Any, tokens: list[str]) -> Any:
    for token in tokens:
        if isinstance(doc, dict) and token in doc:
            doc = doc[token]
        elif isinstance(doc, list):
            doc = doc[_index(doc, token)]
        else:
            raise PatchError(f"doc is missing path: /{'/'.join(tokens)}")
    return doc


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _resolve(doc, tokens[:-1])
    if isinstance(parent, dict):
        parent[tokens[-1]] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, tokens[-1], adding=True), value)
    else:
        raise PatchError(f"cannot add to non-container at /{'/'.join(tokens[:-1])}")
    return doc


def _remove(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent = _resolve(doc, tokens[:-1])
    if isinstance(parent, dict) and tokens[-1] in parent:
        return parent.pop(tokens[-1])
    if isinstance(parent, list):
        return parent.pop(_index(parent, tokens[-1]))
    raise PatchError(f"remove operation does not apply: doc is missing path: "
                     f"/{'/'.join(tokens)}")


def _apply_operation(doc: Any, operation: Mapping[str, Any]) -> Any:
    op, path = operation.get("op"), _tokens(str(operation.get("path", "")))
    if op == "add":
        return _add(doc, path, copy.deepcopy(operation.get("value")))
    if op == "remove":
        _remove(doc, path)
        return doc
    if op == "replace":
        if not path:
            return copy.deepcopy(operation.get("value"))
        _remove(doc, path)
        return _add(doc, path, copy.deepcopy(operation.get("value")))
    if op in ("move", "copy"):
        source = _tokens(str(operation.get("from", "")))
        value = _remove(doc, source) if op == "move" else copy.deepcopy(_resolve(doc, source))
        return _add(doc, path, value)
    if op == "test":
        if _resolve(doc, path) != operation.get("value"):
            raise PatchError(f"testing value /{'/'.join(path)} failed")
        return doc
    raise PatchError(f"Unexpected kind: {op}")


def json_patch(doc: Any, operations: Any) -> Any:
    """Apply RFC 6902 ``operations`` to a copy of ``doc``; raises PatchError."""
    if not isinstance(operations, list) or not all(isinstance(o, dict) for o in operations):
        raise PatchError("a JSON patch must be a list of operations")
    result = copy.deepcopy(doc)
    for operation in operations:
        result = _apply_operation(result, operation)
    return result


# --- JSON merge patch ----------------------------------------------------------------------------

def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 merge patch: maps merge, ``null`` deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- strategic merge patch -----------------------------------------------------------------------

def _strip(value: Any) -> Any:
    """Drop ``$patch``-style directives from a value copied in wholesale."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def strategic_merge_patch(original: Any, patch: Any, schema: SchemaNode | None) -> Any:
    """Apply a strategic merge patch to ``original`` using ``schema``'s merge annotations."""
    if not isinstance(patch, dict) or not isinstance(original, dict):
        return _strip(patch)
    if patch.get("$patch") == "replace":
        return _strip(patch)
    result = dict(original)
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            result[name] = [v for v in result.get(name) or [] if v not in value]
        elif key.startswith("$"):
            continue
        elif value is None or (isinstance(value, dict) and value.get("$patch") == "delete"):
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(result.get(key), value, _child(schema, key))
        else:
            result[key] = strategic_merge_patch(result.get(key), value, _child(schema, key))
    return result


def _merge_list(original: Any, patch: list[Any], schema: SchemaNode | None) -> list[Any]:
    if not isinstance(original, list) or schema is None or "merge" not in schema.patch_strategy:
        return [_strip(v) for v in patch]
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [_strip(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    key = schema.merge_key
    if key is None:  # a merged list of primitives, e.g. finalizers
        return list(original) + [v for v in patch if v not in original]
    result = [copy.deepcopy(i) for i in original]
    for item in patch:
        position = next((n for n, o in enumerate(result)
                         if isinstance(o, dict) and o.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if position is not None:
                result.pop(position)
        elif position is None:
            result.append(_strip(item))
        else:
            result[position] = strategic_merge_patch(result[position], item, schema.items())
    return result
