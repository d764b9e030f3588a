"""Kubernetes resource quantities (``10Gi``, ``500M``, ``1.5Ti``) to bytes and back."""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

from migrator.errors import BadInputError

_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_QUANTITY_RE = re.compile(r"^\s*([0-9.]+(?:[eE][-+]?[0-9]+)?)\s*([KMGTPE]i?|k)?\s*$")


def parse_quantity(text: str | int) -> int:
    """Return the number of bytes in a quantity; raises BadInputError when malformed."""
    if isinstance(text, int):
        return text
    match = _QUANTITY_RE.match(str(text))
    if not match:
        raise BadInputError(f"{text!r} is not a size; use e.g. 10Gi, 500Mi or 2T")
    try:
        number = Decimal(match.group(1))
    except InvalidOperation:
        raise BadInputError(f"{text!r} is not a size; use e.g. 10Gi, 500Mi or 2T") from None
    return math.ceil(number * _SUFFIXES[match.group(2) or ""])


def format_gi(size_bytes: int) -> str:
    """Round up to whole GiB as a quantity string (``3Gi``), at least 1Gi."""
    return f"{max(1, math.ceil(size_bytes / 2**30))}Gi"


def human_bytes(size: int | None) -> str:
    """Short binary size for tables: ``1.5 GiB``; ``?`` when unknown."""
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"
