"""``migrator verify``: prove, file by file, that the destination holds what the source held."""

from __future__ import annotations
