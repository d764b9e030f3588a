"""``migrator backup ...``: nightly config backups, restores and restore drills."""

from __future__ import annotations
