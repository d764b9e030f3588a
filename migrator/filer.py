"""Owner, mode and mtime in SeaweedFS filer entries: what a ``weed mount`` (the CSI driver) shows.

The S3 gateway creates every entry as uid 0, gid 0, mode 0660 (directories 0771), mtime = the time
of the PUT; the source's attributes live only in ``x-amz-meta-*``, which a mount ignores. This
module sets them in the filer entries themselves, through the filer's gRPC API (its HTTP port +
10000): one ``ListEntries`` stream per directory reads the entries, one ``UpdateEntry`` per entry
that differs writes them back, pipelined (see docs/reference/filer-attributes.md for the
measurements behind that choice).

``UpdateEntry`` *replaces* an entry, and the filer deletes every chunk the new entry lacks. So an
entry is never rebuilt: the bytes read are sent back with only the attribute fields changed (a
small protobuf codec below edits them at the wire level and keeps every other field as it was), and
each update carries the filer's ``IF_CHUNKS_EQUAL`` condition with the chunks that were read, so an
entry rewritten in between is refused instead of losing its data.

gRPC is spoken by ``grpcio`` with raw-bytes method handles; no generated code is used.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from migrator.errors import OperationFailedError

SERVICE = "/filer_pb.SeaweedFiler/"
LINK_SUFFIX = ".rclonelink"
# Go's os.FileMode type bits, which the filer keeps in FuseAttributes.file_mode next to the
# POSIX permission bits (07777, setuid/setgid/sticky as POSIX has them, as weed mount writes them).
GO_MODE_DIR = 1 << 31
GO_MODE_SYMLINK = 1 << 27
PERMISSION_BITS = 0o7777
LIST_PAGE = 1024
# Updates in flight at once on the one channel.
WINDOW = 64
UPDATE_TIMEOUT = 60.0

# Field numbers of filer.proto that are read or written here.
ENTRY_NAME, ENTRY_IS_DIRECTORY, ENTRY_CHUNKS, ENTRY_ATTRIBUTES = 1, 2, 3, 4
ATTR_MTIME, ATTR_MODE, ATTR_UID, ATTR_GID = 2, 3, 4, 5
ATTR_SYMLINK_TARGET, ATTR_MTIME_NS = 13, 19
CHUNK_FILE_ID, CHUNK_FID = 1, 7
CONDITION_IF_CHUNKS_EQUAL = 9

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


# --- a minimal protobuf wire codec --------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 values are ten bytes of two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


@dataclass(frozen=True)
class Field:
    number: int
    wire: int
    value: int | bytes  # an int for varint/fixed fields, the payload for length-delimited ones
    raw: bytes  # the whole field (key and value) exactly as read


def parse(data: bytes) -> list[Field]:
    """The fields of one message in wire order; raises ValueError on malformed input."""
    fields, pos = [], 0
    while pos < len(data):
        start = pos
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == VARINT:
            value, pos = _read_varint(data, pos)
        elif wire == FIXED64:
            value, pos = int.from_bytes(data[pos : pos + 8], "little"), pos + 8
        elif wire == FIXED32:
            value, pos = int.from_bytes(data[pos : pos + 4], "little"), pos + 4
        elif wire == LENGTH:
            length, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated field")
        fields.append(Field(number, wire, value, data[start:pos]))
    return fields


def encode_varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3 | VARINT) + _varint(value)


def encode_bytes_field(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | LENGTH) + _varint(len(value)) + value


def _first(fields: list[Field], number: int) -> int | bytes | None:
    found = [f.value for f in fields if f.number == number]
    return found[-1] if found else None  # the last one wins, as in protobuf


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value & (1 << 63) else value


# --- attributes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attributes:
    """What a mount shows of one entry: POSIX permission bits (07777), owner, mtime, symlink."""

    mode: int
    uid: int
    gid: int
    mtime_ns: int
    is_dir: bool = False
    symlink_target: bytes | None = None

    @classmethod
    def from_stat(cls, st: os.stat_result, symlink_target: bytes | None = None) -> Attributes:
        return cls(
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            mtime_ns=st.st_mtime_ns,
            is_dir=stat.S_ISDIR(st.st_mode),
            symlink_target=symlink_target,
        )

    def differs(self, other: Attributes) -> list[str]:
        """What differs (``mode``, ``owner``, ``mtime``) between these and ``other``."""
        kinds = []
        if self.mode != other.mode:
            kinds.append("mode")
        if (self.uid, self.gid) != (other.uid, other.gid):
            kinds.append("owner")
        # whole seconds: a mount shows the filer's seconds and nanoseconds, but older entries and
        # some filers keep seconds only
        if self.mtime_ns // 10**9 != other.mtime_ns // 10**9:
            kinds.append("mtime")
        if self.symlink_target is not None and self.symlink_target != other.symlink_target:
            kinds.append("target")
        return kinds


def attributes_of(entry: bytes) -> Attributes:
    """The attributes of a serialized ``Entry``."""
    fields = parse(entry)
    attrs = parse(bytes(_first(fields, ENTRY_ATTRIBUTES) or b""))
    mode = int(_first(attrs, ATTR_MODE) or 0)
    is_dir = bool(_first(fields, ENTRY_IS_DIRECTORY)) or bool(mode & GO_MODE_DIR)
    seconds = _signed64(int(_first(attrs, ATTR_MTIME) or 0))
    nanos = _signed32(int(_first(attrs, ATTR_MTIME_NS) or 0))
    target = _first(attrs, ATTR_SYMLINK_TARGET)
    return Attributes(
        mode=mode & PERMISSION_BITS,
        uid=int(_first(attrs, ATTR_UID) or 0),
        gid=int(_first(attrs, ATTR_GID) or 0),
        mtime_ns=seconds * 10**9 + nanos,
        is_dir=is_dir,
        symlink_target=bytes(target) if target else None,
    )


def entry_name(entry: bytes) -> bytes:
    return bytes(_first(parse(entry), ENTRY_NAME) or b"")


def with_attributes(entry: bytes, wanted: Attributes) -> bytes:
    """``entry`` with owner, permission bits and mtime replaced; every other field kept as read.

    The type bits the filer keeps (directory, symlink) are kept too.
    """
    fields = parse(entry)
    old = bytes(_first(fields, ENTRY_ATTRIBUTES) or b"")
    old_fields = parse(old)
    mode = int(_first(old_fields, ATTR_MODE) or 0)
    replaced = {ATTR_MTIME, ATTR_MODE, ATTR_UID, ATTR_GID, ATTR_MTIME_NS}
    if wanted.symlink_target is not None:
        replaced.add(ATTR_SYMLINK_TARGET)
    seconds, nanos = divmod(wanted.mtime_ns, 10**9)
    attrs = b"".join(f.raw for f in old_fields if f.number not in replaced)
    if wanted.symlink_target is not None:
        attrs += encode_bytes_field(ATTR_SYMLINK_TARGET, wanted.symlink_target)
    attrs += encode_varint_field(ATTR_MTIME, seconds)
    attrs += encode_varint_field(ATTR_MODE, (mode & ~PERMISSION_BITS) | wanted.mode)
    attrs += encode_varint_field(ATTR_UID, wanted.uid)
    attrs += encode_varint_field(ATTR_GID, wanted.gid)
    attrs += encode_varint_field(ATTR_MTIME_NS, nanos)
    out = bytearray()
    placed = False
    for f in fields:
        if f.number == ENTRY_ATTRIBUTES:
            if not placed:
                out += encode_bytes_field(ENTRY_ATTRIBUTES, attrs)
                placed = True
            continue
        out += f.raw
    if not placed:
        out += encode_bytes_field(ENTRY_ATTRIBUTES, attrs)
    return bytes(out)


def symlink_entry(name: str, wanted: Attributes) -> bytes:
    """A new entry for a symlink: no chunks, the target in its attributes (what weed mount
    writes for ``ln -s``)."""
    assert wanted.symlink_target is not None
    seconds, nanos = divmod(wanted.mtime_ns, 10**9)
    attrs = (
        encode_varint_field(ATTR_MTIME, seconds)
        + encode_varint_field(ATTR_MODE, GO_MODE_SYMLINK | wanted.mode)
        + encode_varint_field(ATTR_UID, wanted.uid)
        + encode_varint_field(ATTR_GID, wanted.gid)
        + encode_varint_field(6, seconds)  # crtime
        + encode_bytes_field(ATTR_SYMLINK_TARGET, wanted.symlink_target)
        + encode_varint_field(ATTR_MTIME_NS, nanos)
    )
    return encode_bytes_field(
        ENTRY_NAME, name.encode("utf-8", "surrogateescape")
    ) + encode_bytes_field(ENTRY_ATTRIBUTES, attrs)


def chunk_fids(entry: bytes) -> list[str]:
    """The file ids of the entry's chunks, spelled as the filer compares them."""
    fids = []
    for f in parse(entry):
        if f.number != ENTRY_CHUNKS:
            continue
        chunk = parse(bytes(f.value))
        file_id = _first(chunk, CHUNK_FILE_ID)
        if file_id:
            fids.append(bytes(file_id).decode())
            continue
        fid = parse(bytes(_first(chunk, CHUNK_FID) or b""))
        fids.append(
            _format_fid(
                int(_first(fid, 1) or 0), int(_first(fid, 2) or 0), int(_first(fid, 3) or 0)
            )
        )
    return fids


def _format_fid(volume_id: int, key: int, cookie: int) -> str:
    """``VOLUME,HEX``: the 8-byte key and 4-byte cookie in hex, leading zero key bytes dropped."""
    raw = key.to_bytes(8, "big") + cookie.to_bytes(4, "big")
    start = 0
    while start < 8 and raw[start] == 0:
        start += 1
    return f"{volume_id},{raw[start:].hex()}"


def _create_request(directory: str, entry: bytes) -> bytes:
    # o_excl: never replace an entry that appeared meanwhile (and so drop its chunks)
    return (
        encode_bytes_field(1, directory.encode("utf-8", "surrogateescape"))
        + encode_bytes_field(2, entry)
        + encode_varint_field(3, 1)
    )


def _update_request(directory: str, entry: bytes, fids: list[str]) -> bytes:
    clause = encode_varint_field(1, CONDITION_IF_CHUNKS_EQUAL)
    clause += b"".join(encode_bytes_field(9, fid.encode()) for fid in fids)
    condition = encode_bytes_field(1, clause)
    return (
        encode_bytes_field(1, directory.encode("utf-8", "surrogateescape"))
        + encode_bytes_field(2, entry)
        + encode_bytes_field(6, condition)
    )


# --- the client ---------------------------------------------------------------------------------


def grpc_address(filer_url_or_address: str) -> str:
    """``HOST:GRPCPORT`` as given; a ``http://HOST:PORT`` filer URL becomes HOST:PORT+10000."""
    text = filer_url_or_address.strip()
    if "://" in text:
        host_port = text.split("://", 1)[1].rstrip("/")
        host, _, port = host_port.rpartition(":")
        return f"{host}:{int(port) + 10000}"
    return text


class FilerClient:
    """The few filer gRPC calls migrator needs, over one channel. Use as a context manager."""

    def __init__(self, address: str, timeout: float = UPDATE_TIMEOUT) -> None:
        import grpc

        self.address, self.timeout = address, timeout
        self._grpc = grpc
        self.channel = grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )
        self._list = self.channel.unary_stream(SERVICE + "ListEntries")
        self._lookup = self.channel.unary_unary(SERVICE + "LookupDirectoryEntry")
        self._update = self.channel.unary_unary(SERVICE + "UpdateEntry")
        self._create = self.channel.unary_unary(SERVICE + "CreateEntry")

    def __enter__(self) -> FilerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _failed(self, what: str, exc: Any) -> OperationFailedError:
        detail = exc.details() if hasattr(exc, "details") else str(exc)
        return OperationFailedError(
            f"filer gRPC {self.address}: {what}: {detail} "
            "(is --filer the filer's gRPC address, its HTTP port + 10000?)"
        )

    def list_dir(self, directory: str) -> Iterator[bytes]:
        """The serialized entries of ``directory`` (none when it does not exist)."""
        start = b""
        while True:
            request = encode_bytes_field(1, directory.encode("utf-8", "surrogateescape"))
            if start:
                request += encode_bytes_field(3, start)
            request += encode_varint_field(5, LIST_PAGE)
            count = 0
            try:
                for response in self._list(request, timeout=self.timeout):
                    entry = bytes(_first(parse(response), 1) or b"")
                    start = entry_name(entry)
                    count += 1
                    yield entry
            except self._grpc.RpcError as exc:
                if exc.code() == self._grpc.StatusCode.NOT_FOUND:
                    return
                raise self._failed(f"listing {directory}", exc) from None
            if count < LIST_PAGE:
                return

    def lookup(self, directory: str, name: str) -> bytes | None:
        request = encode_bytes_field(1, directory.encode("utf-8", "surrogateescape"))
        request += encode_bytes_field(2, name.encode("utf-8", "surrogateescape"))
        try:
            response = self._lookup(request, timeout=self.timeout)
        except self._grpc.RpcError as exc:
            if exc.code() == self._grpc.StatusCode.NOT_FOUND or "not found" in str(exc.details()):
                return None
            raise self._failed(f"looking up {directory}/{name}", exc) from None
        entry = _first(parse(response), 1)
        return bytes(entry) if entry is not None else None

    def update_many(self, updates: Iterable[tuple[str, bytes, bool]]) -> list[str]:
        """Send ``(directory, entry, create)`` writes, ``WINDOW`` in flight; returns the failures.

        ``create``: a new entry (a symlink); otherwise an update of an entry as it was read."""
        failures: list[str] = []
        pending: list[tuple[str, Any]] = []

        def settle(item: tuple[str, Any]) -> None:
            where, future = item
            try:
                future.result()
            except self._grpc.RpcError as exc:
                failures.append(f"{where}: {exc.details()}")

        for directory, entry, create in updates:
            where = f"{directory}/{entry_name(entry).decode(errors='replace')}"
            if create:
                future = self._create.future(
                    _create_request(directory, entry), timeout=self.timeout
                )
            else:
                request = _update_request(directory, entry, chunk_fids(entry))
                future = self._update.future(request, timeout=self.timeout)
            pending.append((where, future))
            if len(pending) >= WINDOW:
                settle(pending.pop(0))
        for item in pending:
            settle(item)
        return failures


# --- applying a source tree's attributes ---------------------------------------------------------


def filer_directory(dest: str) -> str:
    """The filer directory of an rclone S3 destination ``REMOTE:BUCKET/PREFIX`` (or s3://...)."""
    path = dest.split("://", 1)[1] if dest.startswith("s3://") else dest.split(":", 1)[-1]
    return "/buckets/" + path.strip("/")


def _join(directory: str, rel: str) -> str:
    return f"{directory}/{rel}" if rel else directory


def source_entries(root: str, rel: str) -> dict[str, Attributes]:
    """What the filer should hold for ``rel`` of the copy (a directory, a file, or the
    ``NAME.rclonelink`` object rclone stores for a symlink), relative path -> attributes.

    A symlink gets two entries: ``NAME.rclonelink`` (the object rclone, verify and restores read:
    the link's owner and mtime, mode 0644) and ``NAME``, a real symlink, which is what a mount
    shows to apps. Nothing when the path vanished.
    """
    is_link = rel.endswith(LINK_SUFFIX)
    name = rel[: -len(LINK_SUFFIX)] if is_link else rel
    try:
        st = os.lstat(os.path.join(root, name) if rel else root)
        if is_link and not stat.S_ISLNK(st.st_mode):  # a regular file really named *.rclonelink
            name, st = rel, os.lstat(os.path.join(root, rel))
        target = os.readlink(os.path.join(root, name)) if stat.S_ISLNK(st.st_mode) else None
    except OSError:
        return {}
    if target is None:
        return {rel: Attributes.from_stat(st)}
    link = Attributes.from_stat(st, symlink_target=os.fsencode(target))
    stored = Attributes(0o644, st.st_uid, st.st_gid, st.st_mtime_ns)
    return {rel: stored, name: link}


@dataclass
class ApplyReport:
    checked: int = 0
    updated: int = 0
    missing: int = 0
    failures: list[str] | None = None


def apply_attributes(client: FilerClient, base: str, wanted: dict[str, Attributes]) -> ApplyReport:
    """Make the filer entries under ``base`` carry ``wanted`` (relative path -> attributes).

    Paths are ``/``-separated and relative to ``base`` ("" is ``base`` itself). Each directory
    concerned is listed once; only entries that differ are updated. Entries not found (a file
    that vanished, a live database left for later) are counted, not fatal.
    """
    by_dir: dict[str, dict[str, Attributes]] = {}
    report = ApplyReport(failures=[])
    for rel, attrs in wanted.items():
        if rel == "":
            parent, _, name = base.rpartition("/")
            by_dir.setdefault(parent or "/", {})[name] = attrs
            continue
        parent_rel, _, name = rel.rpartition("/")
        by_dir.setdefault(_join(base, parent_rel), {})[name] = attrs

    def updates() -> Iterator[tuple[str, bytes, bool]]:
        for directory in sorted(by_dir):
            names = dict(by_dir[directory])
            for entry in client.list_dir(directory):
                name = entry_name(entry).decode("utf-8", "surrogateescape")
                target = names.pop(name, None)
                if target is None:
                    continue
                report.checked += 1
                if attributes_of(entry).differs(target):
                    report.updated += 1
                    yield directory, with_attributes(entry, target), False
            for name, target in sorted(names.items()):
                if target.symlink_target is None:
                    report.missing += 1
                    continue
                report.updated += 1
                yield directory, symlink_entry(name, target), True

    assert report.failures is not None
    report.failures.extend(client.update_many(updates()))
    return report


def read_tree(client: FilerClient, base: str) -> dict[str, Attributes]:
    """Every entry under ``base`` (recursively): relative path -> attributes as a mount shows them."""
    found: dict[str, Attributes] = {}
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        for entry in client.list_dir(_join(base, rel_dir)):
            name = entry_name(entry).decode("utf-8", "surrogateescape")
            rel = f"{rel_dir}/{name}" if rel_dir else name
            attrs = attributes_of(entry)
            found[rel] = attrs
            if attrs.is_dir:
                stack.append(rel)
    return found
