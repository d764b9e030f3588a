"""Read-modify-write against the API server, again on a conflict (409): another writer (a
controller annotating a new Node, the PV binder binding a claim, a pod's other container) changed
the object between the read and the write."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from migrator.errors import ConflictError

T = TypeVar("T")
R = TypeVar("R")
ATTEMPTS = 50


def is_conflict(error: Exception) -> bool:
    """A 409 from migrator's ``KubeClient`` (ConflictError) or the official client
    (``ApiException`` with status 409)."""
    return isinstance(error, ConflictError) or getattr(error, "status", None) == 409


def read_modify_write(
    read: Callable[[], T | None],
    write: Callable[[T], R],
    what: str,
    current: T | None = None,
) -> R | None:
    """``write(read())`` until the write meets no conflict; a conflict reads again.

    ``current``, when given, is what was read already (the first round does not read). Returns
    what ``write`` returned, or None as soon as ``read`` finds nothing (the object is gone).
    Raises RuntimeError naming ``what`` after ``ATTEMPTS`` conflicts; any other error at once.
    """
    for _ in range(ATTEMPTS):
        if current is None:
            current = read()
            if current is None:
                return None
        try:
            return write(current)
        except Exception as error:
            if not is_conflict(error):
                raise
        current = None
    raise RuntimeError(f"{what} kept conflicting")
