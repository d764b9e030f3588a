"""File names as rclone spells them, so that what rclone lists can be matched with local files.

rclone moves names through its "standard" encoding (lib/encoder): a local name is decoded with
the local backend's encoding (``Base``: NUL, slash, dot) and re-encoded with ``Standard``,
which also shows control characters and DEL as their Unicode symbols (TAB as ``␉``) and quotes
its own quote rune (U+201B). ``rclone lsf`` prints names that way, and takes them back that way in
``--files-from-raw`` and path arguments. Comparing a listing with a local tree therefore
happens in that form: :func:`standard_path`.

Into S3, rclone's backend encoding (``Slash,InvalidUtf8,Dot``) leaves valid UTF-8 names as they
are and writes each byte of an invalid UTF-8 sequence as U+201B and two upper-case hex digits:
:func:`local_path_of_key` undoes that for object keys read directly.

SeaweedFS stores a key's backslash as a slash (``win\\path.txt`` becomes ``win/path.txt``), so every
rclone call that touches the destination adds ``BackSlash`` (:data:`ENCODING_FLAG`): rclone then
writes ``\\`` as the full-width reverse solidus U+FF3C and a literal U+FF3C quoted with U+201B
(from the first such character on, its quote rune and the full-width forms it decodes are quoted
too). :func:`key_path` spells a name that way for migrator's own uploader;
:func:`local_path_of_key` maps it back.
"""

from __future__ import annotations

import re

QUOTE = "\u201b"  # SINGLE HIGH-REVERSED-9 QUOTATION MARK, rclone's QuoteRune
SYMBOL_NUL = "\u2400"  # SYMBOL FOR NULL; U+2401..U+241F stand for 0x01..0x1F
SYMBOL_DEL = "\u2421"
FULL_SLASH = "\uff0f"
FULL_DOT = "\uff0e"
FULL_BACKSLASH = "\uff3c"
# rclone's default S3 encoding plus BackSlash: what every rclone call on an S3 destination uses.
S3_ENCODING = "Slash,InvalidUtf8,Dot,BackSlash"
ENCODING_FLAG = f"--s3-encoding={S3_ENCODING}"
_SPECIAL = re.compile(
    "[\x00-\x1f\x7f" + QUOTE + SYMBOL_NUL + "-\u241f" + SYMBOL_DEL + FULL_SLASH + FULL_DOT + "]"
)
_INVALID_BYTE = re.compile(QUOTE + "([89A-F][0-9A-F])")


def standard_path(path: str) -> str:
    """How rclone lists the local file ``path`` (``/``-separated; undecodable bytes as
    surrogate escapes, as ``os.fsdecode`` gives them)."""
    if not _SPECIAL.search(path):
        return path
    return "/".join(_standard_encode(_base_decode(part)) for part in path.split("/"))


def key_path(path: str) -> str:
    """The object key (below the volume's prefix) of the local file ``path`` (valid UTF-8), as
    rclone with :data:`S3_ENCODING` stores it: names holding a backslash are encoded."""
    if "\\" not in path and FULL_BACKSLASH not in path:
        return path
    return "/".join(_backslash_encode(part) for part in path.split("/"))


# From the first character rclone's encoder must replace on, it replaces or quotes these.
_BACKSLASH_ENCODED = {
    "\\": FULL_BACKSLASH,
    FULL_BACKSLASH: QUOTE + FULL_BACKSLASH,
    QUOTE: QUOTE + QUOTE,
    SYMBOL_NUL: QUOTE + SYMBOL_NUL,
    FULL_SLASH: QUOTE + FULL_SLASH,
}
_BACKSLASH_DECODED = re.compile(
    QUOTE
    + "["
    + QUOTE
    + SYMBOL_NUL
    + FULL_SLASH
    + FULL_BACKSLASH
    + "]|"
    + QUOTE
    + "[89A-F][0-9A-F]|"
    + FULL_BACKSLASH
)


def _backslash_encode(name: str) -> str:
    if "\\" not in name and FULL_BACKSLASH not in name:
        return name
    start = min(name.find(char) for char in _BACKSLASH_ENCODED if char in name)
    return name[:start] + "".join(_BACKSLASH_ENCODED.get(char, char) for char in name[start:])


def _backslash_decode(name: str) -> bytes:
    """Inverse of :func:`_backslash_encode` (and rclone's invalid UTF-8 bytes)."""

    def token(match: re.Match[str]) -> str:
        text = match.group()
        if text == FULL_BACKSLASH:
            return "\\"
        if len(text) == 3:  # an invalid UTF-8 byte, kept as a surrogate escape until encoded
            return chr(0xDC00 + int(text[1:], 16))
        return text[1]

    decoded = _BACKSLASH_DECODED.sub(token, name)
    return decoded.encode("utf-8", errors="surrogateescape")


def local_path_of_key(relative: str) -> bytes:
    """The local name (bytes) of an object key written by rclone (or by migrator's uploader)."""
    if FULL_BACKSLASH in relative:
        return b"/".join(
            _backslash_decode(part) if FULL_BACKSLASH in part else local_path_of_key(part)
            for part in relative.split("/")
        )
    if QUOTE not in relative:
        return relative.encode()
    out = bytearray()
    last = 0
    for match in _INVALID_BYTE.finditer(relative):
        out += relative[last : match.start()].encode()
        out.append(int(match.group(1), 16))
        last = match.end()
    out += relative[last:].encode()
    return bytes(out)


_DOTS = {
    FULL_DOT: ".",
    FULL_DOT * 2: "..",
    QUOTE + FULL_DOT: FULL_DOT,
    (QUOTE + FULL_DOT) * 2: FULL_DOT * 2,
}
_DOTS_BACK = {
    ".": FULL_DOT,
    "..": FULL_DOT * 2,
    FULL_DOT: QUOTE + FULL_DOT,
    FULL_DOT * 2: (QUOTE + FULL_DOT) * 2,
}


def _base_decode(name: str) -> str:
    """rclone's ``Base`` (NUL, slash, dot) decoding: what the local backend does to a name."""
    if name in _DOTS:
        return _DOTS[name]
    out: list[str] = []
    quoted = False
    for char in name:
        if quoted:
            quoted = False
            if char not in (SYMBOL_NUL, QUOTE, FULL_SLASH):
                out.append(QUOTE)
            out.append(char)
        elif char == QUOTE:
            quoted = True
        elif char == SYMBOL_NUL:
            out.append("\x00")
        elif char == FULL_SLASH:
            out.append("/")
        else:
            out.append(char)
    if quoted:
        out.append(QUOTE)
    return "".join(out)


def _standard_encode(name: str) -> str:
    """rclone's ``Standard`` (NUL, slash, control characters, DEL, dot) encoding."""
    if name in _DOTS_BACK:
        return _DOTS_BACK[name]
    out: list[str] = []
    for char in name:
        code = ord(char)
        if code == 0:
            out.append(SYMBOL_NUL)
        elif char in (QUOTE, FULL_SLASH, SYMBOL_DEL) or 0x2400 <= code <= 0x241F:
            out += (QUOTE, char)
        elif char == "/":
            out.append(FULL_SLASH)
        elif code < 0x20:
            out.append(chr(0x2400 + code))
        elif code == 0x7F:
            out.append(SYMBOL_DEL)
        else:
            out.append(char)
    return "".join(out)
