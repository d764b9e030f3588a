"""What every benchmark here does before timing."""

from __future__ import annotations

import compileall
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def precompile() -> None:
    """Write the package's bytecode before timing, as ``pip install`` does for users and the
    agent image: with PYTHONDONTWRITEBYTECODE set (these machines set it) every child process of
    ours would otherwise compile each module it imports from source, ~40 ms a process."""
    compileall.compile_dir(ROOT / "migrator", quiet=1)
