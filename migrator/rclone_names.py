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
"""

from __future__ import annotations

import re

QUOTE = "\u201b"  # SINGLE HIGH-REVERSED-9 QUOTATION MARK, rclone's QuoteRune
SYMBOL_NUL = "\u2400"  # SYMBOL FOR NULL; U+2401..U+241F stand for 0x01..0x1F
SYMBOL_DEL = "\u2421"
FULL_SLASH = "\uff0f"
FULL_DOT = "\uff0e"
_SPECIAL = re.compile("[\x00-\x1f\x7f" + QUOTE + SYMBOL_NUL + "-\u241f" + SYMBOL_DEL
                      + FULL_SLASH + FULL_DOT + "]")  # fmt: skip
_INVALID_BYTE = re.compile(QUOTE + "([89A-F][0-9A-F])")


def standard_path(path: str) -> str:
    """How rclone lists the local file ``path`` (``/``-separated; undecodable bytes as
    surrogate escapes, as ``os.fsdecode`` gives them)."""
    if not _SPECIAL.search(path):
        return path
    return "/".join(_standard_encode(_base_decode(part)) for part in path.split("/"))


def local_path_of_key(relative: str) -> bytes:
    """The local name (bytes) of an object key written by rclone (or by migrator's uploader)."""
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


_DOTS = {FULL_DOT: ".", FULL_DOT * 2: "..", QUOTE + FULL_DOT: FULL_DOT,
         (QUOTE + FULL_DOT) * 2: FULL_DOT * 2}  # fmt: skip
_DOTS_BACK = {".": FULL_DOT, "..": FULL_DOT * 2, FULL_DOT: QUOTE + FULL_DOT,
              FULL_DOT * 2: (QUOTE + FULL_DOT) * 2}  # fmt: skip


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
