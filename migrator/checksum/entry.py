"""One manifest entry, reversible path escaping and the deterministic sample."""

from __future__ import annotations

import re
import stat
from typing import NamedTuple

import xxhash

# Entry types, one letter each in the manifest.
FILE = "f"
SYMLINK = "l"
DIRECTORY = "d"  # only empty directories get an entry; their path ends with "/"
OTHER = "o"  # fifo, socket, device: listed so a copy that loses them is caught, never read

_TYPE_OF_MODE = {
    stat.S_IFREG: FILE,
    stat.S_IFLNK: SYMLINK,
    stat.S_IFDIR: DIRECTORY,
}


def type_of_mode(mode: int) -> str:
    """The one-letter entry type for an ``st_mode``."""
    return _TYPE_OF_MODE.get(stat.S_IFMT(mode), OTHER)


class Entry(NamedTuple):
    """One file, symlink, empty directory or special file of a tree.

    ``path`` is the raw relative path (bytes, ``/``-separated; an empty directory's ends with
    ``/``). Metadata that a source cannot tell (an S3 object without rclone metadata) is None.
    ``xxh3`` is the lowercase hex xxh3-128 of the content (of the target string for a symlink),
    None for directories and special files.
    """

    path: bytes
    type: str
    size: int
    mtime_ns: int | None
    mode: int | None  # permission bits only (07777); the type is in ``type``
    uid: int | None
    gid: int | None
    xxh3: str | None

    @property
    def name(self) -> str:
        """The path as escaped UTF-8 text, safe to print on one line."""
        return escape_path(self.path)


# Bytes that are never written as-is: controls, DEL and the escape character itself.
_NEEDS_ESCAPE = re.compile(rb"[\x00-\x1f\x7f\\]")
_SHORT = {0x5C: "\\\\", 0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
_C1_OR_SURROGATE = re.compile("[\x80-\x9f\udc80-\udcff]")


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not valid UTF-8, kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    return "".join(f"\\x{b:02x}" for b in char.encode())


def _escape_ascii(match: re.Match[str]) -> str:
    code = ord(match.group())
    return _SHORT.get(code) or f"\\x{code:02x}"


_ASCII_ESCAPE = re.compile(r"[\x00-\x1f\x7f\\]")


def escape_path(path: bytes) -> str:
    """Escape raw path bytes into one line of UTF-8 text; :func:`unescape_path` reverses it.

    Backslash, tab, newline and carriage return become ``\\\\ \\t \\n \\r``; other control
    characters, C1 controls and bytes that are not valid UTF-8 become ``\\xHH`` per byte.
    Everything else (spaces, unicode) is written as it is.
    """
    try:
        text = path.decode()
    except UnicodeDecodeError:
        text = path.decode(errors="surrogateescape")
        text = _ASCII_ESCAPE.sub(_escape_ascii, text)
        return _C1_OR_SURROGATE.sub(_escape_char, text)
    if _NEEDS_ESCAPE.search(path):
        text = _ASCII_ESCAPE.sub(_escape_ascii, text)
    if not text.isascii():
        text = _C1_OR_SURROGATE.sub(_escape_char, text)
    return text


_UNESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|[\\tnr]|.?)", re.DOTALL)
_UNSHORT = {b"\\": b"\\", b"t": b"\t", b"n": b"\n", b"r": b"\r"}


def _unescape_one(match: re.Match[bytes]) -> bytes:
    code = match.group(1)
    if len(code) == 3:
        return bytes([int(code[1:], 16)])
    if code in _UNSHORT:
        return _UNSHORT[code]
    raise ValueError(f"bad escape {match.group()!r} in a manifest path")


def unescape_path(text: str) -> bytes:
    """Turn an escaped path back into its raw bytes; raises ValueError on a bad escape."""
    raw = text.encode()
    if b"\\" not in raw:
        return raw
    return _UNESCAPE.sub(_unescape_one, raw)


def sample_threshold(fraction: float) -> int:
    """The 64-bit threshold below which a path's hash selects it for a ``fraction`` sample."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"sample fraction must be in (0, 1], not {fraction}")
    return min(int(fraction * 2**64), 2**64)


def in_sample(path: bytes, threshold: int) -> bool:
    """Whether ``path`` belongs to the sample: xxh3-64 of the relative path below ``threshold``.

    The choice depends on the relative path alone, so both sides of a copy pick the same files.
    """
    return bool(xxhash.xxh3_64_intdigest(path) < threshold)
