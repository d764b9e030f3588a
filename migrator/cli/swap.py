"""``migrator swap``, ``migrator rollback`` and ``migrator status``."""

from __future__ import annotations
