"""GitOps values rewriting: change the claim references of moved volumes and not one byte more.

Handles Helm values files and Flux HelmRelease manifests (``spec.values``), multi-document YAML,
for the bjw-s app-template (``persistence.<name>.existingClaim``) and the k8s-at-home charts
(``persistence.config.existingClaim``, ``persistence.media.existingClaim``).

ruamel.yaml only *locates* the scalars (its composer gives each node's exact character offsets);
the new value is spliced into the original text at that position. Comments, key order, quoting,
anchors, line endings and every other key therefore stay byte for byte. Before anything is
returned, the rewritten text is parsed again and compared node by node with the original: the only
differences allowed are the claim values that were meant to change, so a rewrite that would touch
anything else (e.g. an anchor shared with another key) is refused instead of written.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from migrator.errors import BadInputError, OperationFailedError

CLAIM_KEY = "existingClaim"
PERSISTENCE_KEY = "persistence"
HELMRELEASE_KIND = "HelmRelease"
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_ANCHOR_OR_TAG = re.compile(r"^(?:[&!][^\s]*\s+)+")
_ALIAS_AFTER_KEY = re.compile(r"[ \t]*:[ \t]*(\*[^\s,\[\]{}]+)")

KeyPath = tuple[str, ...]


@dataclass(frozen=True)
class ClaimReference:
    """One ``existingClaim`` scalar found in a YAML stream."""

    document: int  # index of the document in the stream
    path: KeyPath  # keys from the document root
    value: str
    start: int  # character offsets of the scalar's own text (after any anchor or tag)
    end: int
    text: str  # the exact source text: ``media``, ``"media"``, ``'media'`` or ``*app``
    line: int  # 1-based
    style: str | None  # None plain, "'" or '"' quoted, "*" an alias
    release: str | None = None  # the HelmRelease it belongs to, for HelmRelease documents
    namespace: str | None = None  # where that release installs, when the manifest says

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True)
class Change:
    """One claim reference changed in a text, with what it was (for an exact rollback)."""

    document: int
    path: str  # dotted
    line: int
    old: str
    new: str
    old_text: str
    new_text: str
    release: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "document": self.document,
            "path": self.path,
            "line": self.line,
            "old": self.old,
            "new": self.new,
            "oldText": self.old_text,
            "newText": self.new_text,
        }
        if self.release:
            data["release"] = self.release
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Change:
        return cls(
            int(data["document"]),
            str(data["path"]),
            int(data.get("line", 0)),
            str(data["old"]),
            str(data["new"]),
            str(data["oldText"]),
            str(data["newText"]),
            data.get("release"),
        )


@dataclass
class Rewrite:
    """The result of rewriting one text: the new text, what changed and what was left alone."""

    original: str
    text: str
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.text != self.original

    def diff(self, name: str) -> str:
        """A unified diff (``a/NAME`` -> ``b/NAME``); empty when nothing changed."""
        return unified_diff(self.original, self.text, name)


def unified_diff(before: str, after: str, name: str) -> str:
    lines = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile=f"a/{name.lstrip('/')}",
        tofile=f"b/{name.lstrip('/')}",
    )
    return "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )


# --- locating ---------------------------------------------------------------------------------


def _compose_all(text: str, source: str) -> list[Any]:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        return [doc for doc in YAML(typ="rt").compose_all(text) if doc is not None]
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise BadInputError(f"{source} is not valid YAML{where}: {exc.problem}") from None
    except YAMLError as exc:
        raise BadInputError(f"{source} is not valid YAML: {exc}") from None


def _is_mapping(node: Any) -> bool:
    return type(node).__name__ == "MappingNode"


def _is_scalar(node: Any) -> bool:
    return type(node).__name__ == "ScalarNode"


def _items(node: Any) -> Iterator[tuple[Any, Any]]:
    """Key/value pairs of a mapping node whose key is a plain string (merge keys skipped)."""
    if not _is_mapping(node):
        return
    for key, value in node.value:
        if _is_scalar(key) and key.tag.endswith(":str") and key.value != "<<":
            yield key, value


def _child(node: Any, name: str) -> tuple[Any, Any] | None:
    for key, value in _items(node):
        if key.value == name:
            return key, value
    return None


def _scalar_value(node: Any, name: str) -> str | None:
    found = _child(node, name)
    if found is None or not _is_scalar(found[1]):
        return None
    return str(found[1].value)


def _document_scope(root: Any) -> tuple[Any, KeyPath, str | None, str | None] | None:
    """Where the chart values are in a document: (node, path, release, namespace), or None.

    A HelmRelease manifest keeps them under ``spec.values``; any other Kubernetes manifest has
    none; a document without ``apiVersion``/``kind`` is a plain values file.
    """
    kind, api_version = _scalar_value(root, "kind"), _scalar_value(root, "apiVersion")
    if kind is None and api_version is None:
        return root, (), None, None
    if kind != HELMRELEASE_KIND or not (api_version or "").startswith("helm.toolkit.fluxcd.io/"):
        return None
    metadata = _child(root, "metadata")
    spec = _child(root, "spec")
    values = _child(spec[1], "values") if spec else None
    if values is None:
        return None
    release = _scalar_value(metadata[1], "name") if metadata else None
    namespace = _scalar_value(spec[1], "targetNamespace") if spec else None
    if namespace is None and metadata:
        namespace = _scalar_value(metadata[1], "namespace")
    return values[1], ("spec", "values"), release, namespace


def find_claim_references(text: str, source: str = "<text>") -> list[ClaimReference]:
    """Every ``persistence.<name>.existingClaim`` (and ``persistence.existingClaim``) scalar.

    Raises BadInputError when the text is not valid YAML.
    """
    references = []
    for index, root in enumerate(_compose_all(text, source)):
        scope = _document_scope(root)
        if scope is None:
            continue
        values, prefix, release, namespace = scope
        persistence = _child(values, PERSISTENCE_KEY)
        if persistence is None:
            continue
        candidates: list[tuple[KeyPath, Any]] = [((PERSISTENCE_KEY,), persistence[1])]
        candidates += [((PERSISTENCE_KEY, key.value), node) for key, node in _items(persistence[1])]
        for path, node in candidates:
            claim = _child(node, CLAIM_KEY)
            if claim is None or not _is_scalar(claim[1]):
                continue
            reference = _reference(text, index, (*prefix, *path, CLAIM_KEY), claim, release)
            references.append(_with_namespace(reference, namespace))
    return references


def _with_namespace(reference: ClaimReference, namespace: str | None) -> ClaimReference:
    from dataclasses import replace

    return replace(reference, namespace=namespace)


def _reference(
    text: str, document: int, path: KeyPath, pair: tuple[Any, Any], release: str | None
) -> ClaimReference:
    key, node = pair
    value = str(node.value)
    if node.start_mark.index < key.end_mark.index:
        # An alias (``existingClaim: *app``): the composer hands back the anchored node, whose
        # marks are those of the anchor. The alias itself follows the key.
        match = _ALIAS_AFTER_KEY.match(text, key.end_mark.index)
        if match is None:
            raise BadInputError(
                f"cannot locate the value of {'.'.join(path)} at line {key.start_mark.line + 1}"
            )
        start, end = match.span(1)
        return ClaimReference(
            document, path, value, start, end, match.group(1), _line(text, start), "*", release
        )
    start, end = node.start_mark.index, node.end_mark.index
    raw = text[start:end]
    prefix = _ANCHOR_OR_TAG.match(raw)
    if prefix:
        start += prefix.end()
        raw = raw[prefix.end() :]
    style = node.style if node.style in ("'", '"') else None
    if node.style not in (None, "'", '"') or "\n" in raw:
        style = "unsupported"
    return ClaimReference(
        document, path, value, start, end, raw, _line(text, start), style, release
    )


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


# --- rewriting --------------------------------------------------------------------------------


def scalar_text(value: str, like: str | None) -> str:
    """``value`` as YAML source text in the quoting style ``like`` (plain, ``'`` or ``"``).

    A plain (or alias) position stays plain unless the value would not read back as that exact
    string (``123``, ``true``, ``null``...), then it is double-quoted.
    """
    if like == "'":
        return "'" + value.replace("'", "''") + "'"
    if like == '"' or not _plain_is_safe(value):
        return json.dumps(value, ensure_ascii=False)
    return value


def _plain_is_safe(value: str) -> bool:
    import yaml as pyyaml
    from ruamel.yaml import YAML

    if not _DNS_NAME.match(value):
        return False
    # YAML 1.1 (Helm's Go parser reads yes/no/on/off as booleans) and YAML 1.2 must both agree.
    return bool(
        pyyaml.safe_load(value) == value and YAML(typ="safe", pure=True).load(value) == value
    )


def rewrite_claims(
    text: str,
    claims: Mapping[str, str],
    source: str = "<text>",
    namespace: str | None = None,
    releases: Iterable[str] | None = None,
) -> Rewrite:
    """Point every claim reference whose value is a key of ``claims`` at its new claim.

    ``namespace`` skips HelmRelease documents that install elsewhere; ``releases`` (when given)
    limits HelmRelease documents to those names (others are reported in ``notes``). Plain values
    files have no release name, so every matching reference in them changes.
    Raises BadInputError for invalid YAML and OperationFailedError when the rewrite would change
    anything besides the references.
    """
    wanted = set(releases) if releases is not None else None
    edits: list[tuple[ClaimReference, str, str]] = []
    notes: list[str] = []
    for reference in find_claim_references(text, source):
        new = claims.get(reference.value)
        if new is None:
            continue
        where = f"{source}:{reference.line} ({reference.dotted})"
        if namespace and reference.namespace and reference.namespace != namespace:
            notes.append(f"{where}: HelmRelease installs in {reference.namespace}; left alone")
            continue
        if reference.release and wanted is not None and reference.release not in wanted:
            notes.append(
                f"{where}: HelmRelease {reference.release} is not among the plan's releases; left alone"
            )
            continue
        if reference.style == "unsupported":
            notes.append(f"{where}: block or multi-line scalar; change it by hand")
            continue
        edits.append((reference, scalar_text(new, reference.style), new))
    changes = [
        Change(r.document, r.dotted, r.line, r.value, new, r.text, new_text, r.release)
        for r, new_text, new in edits
    ]
    return _apply(text, source, edits, changes, notes)


def restore_claims(text: str, changes: Iterable[Change], source: str = "<text>") -> Rewrite:
    """Undo recorded changes: each reference that still holds the new claim gets its exact old
    text back (``*app`` included). References changed since are left alone and noted."""
    by_location = {(r.document, r.dotted): r for r in find_claim_references(text, source)}
    edits: list[tuple[ClaimReference, str, str]] = []
    restored: list[Change] = []
    notes: list[str] = []
    for change in changes:
        reference = by_location.get((change.document, change.path))
        where = f"{source} ({change.path})"
        if reference is None:
            notes.append(f"{where}: no longer present; nothing to restore")
        elif reference.value == change.old and reference.text == change.old_text:
            notes.append(f"{where}: already {change.old_text}")
            restored.append(change)
        elif reference.value != change.new:
            notes.append(
                f"{where}: now {reference.text}, not {change.new_text}; changed since the swap, left alone"
            )
        else:
            edits.append((reference, change.old_text, change.old))
            restored.append(change)
    return _apply(text, source, edits, restored, notes)


def _apply(
    text: str,
    source: str,
    edits: list[tuple[ClaimReference, str, str]],
    changes: list[Change],
    notes: list[str],
) -> Rewrite:
    new_text = text
    for reference, replacement, _ in sorted(edits, key=lambda e: e[0].start, reverse=True):
        new_text = new_text[: reference.start] + replacement + new_text[reference.end :]
    if edits:
        _check_only_claims_changed(text, new_text, source, edits)
    return Rewrite(text, new_text, changes, notes)


# --- the proof --------------------------------------------------------------------------------


def _tree(node: Any) -> Any:
    """A comparable form of a node tree (aliases expanded, order and tags kept)."""
    kind = type(node).__name__
    if kind == "MappingNode":
        return ("map", node.tag, [(_tree(k), _tree(v)) for k, v in node.value])
    if kind == "SequenceNode":
        return ("seq", node.tag, [_tree(item) for item in node.value])
    return ("scalar", node.tag, node.value)


def _set_path(tree: Any, path: KeyPath, value: str) -> Any:
    if not path:
        return ("scalar", "tag:yaml.org,2002:str", value)
    kind, tag, pairs = tree
    updated = [
        (k, _set_path(v, path[1:], value)) if k[0] == "scalar" and k[2] == path[0] else (k, v)
        for k, v in pairs
    ]
    return (kind, tag, updated)


def _check_only_claims_changed(
    before: str, after: str, source: str, edits: list[tuple[ClaimReference, str, str]]
) -> None:
    """Parse both texts; they must be equal once the edited paths are set to their new values."""
    old_docs = [_tree(d) for d in _compose_all(before, source)]
    try:
        new_docs = [_tree(d) for d in _compose_all(after, source)]
    except BadInputError:
        new_docs = []
    for reference, _, value in edits:
        old_docs[reference.document] = _set_path(
            old_docs[reference.document], reference.path, value
        )
    if old_docs != new_docs:
        lines = ", ".join(str(r.line) for r, _, _ in edits)
        raise OperationFailedError(
            f"refusing to rewrite {source}: changing the claim at line {lines} would change other "
            "values too (an anchor shared with another key?); change it by hand"
        )


# --- values as data (in-cluster HelmRelease spec.values) --------------------------------------


def claim_paths(values: Mapping[str, Any]) -> list[tuple[KeyPath, str]]:
    """The ``existingClaim`` paths of a values dict (relative to the values root) and their claim."""
    persistence = values.get(PERSISTENCE_KEY)
    if not isinstance(persistence, Mapping):
        return []
    found: list[tuple[KeyPath, str]] = []
    if isinstance(persistence.get(CLAIM_KEY), str):
        found.append(((PERSISTENCE_KEY, CLAIM_KEY), persistence[CLAIM_KEY]))
    for name, item in persistence.items():
        if isinstance(item, Mapping) and isinstance(item.get(CLAIM_KEY), str):
            found.append(((PERSISTENCE_KEY, str(name), CLAIM_KEY), item[CLAIM_KEY]))
    return found


def merge_patch(paths: Iterable[tuple[KeyPath, Any]]) -> dict[str, Any]:
    """A JSON merge patch setting each path to its value (and touching nothing else)."""
    patch: dict[str, Any] = {}
    for path, value in paths:
        node = patch
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return patch
