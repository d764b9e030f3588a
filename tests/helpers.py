"""Small helpers shared by tests: running the CLI, validating manifests."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml
from click.testing import CliRunner, Result

from migrator.cli import cli

K8S_VERSION = "1.37.0"


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Result:
    """Invoke ``migrator ARGS`` in-process, as a user would, without catching exceptions."""
    runner = CliRunner()
    if cwd is None:
        return runner.invoke(cli, list(args), catch_exceptions=False, env=env)
    import os

    old = Path.cwd()
    os.chdir(cwd)
    try:
        return runner.invoke(cli, list(args), catch_exceptions=False, env=env)
    finally:
        os.chdir(old)


@functools.cache
def _validator() -> Any:
    import kubernetes_validate

    return kubernetes_validate


def validate_manifest(manifest: dict[str, Any]) -> None:
    """Validate strictly against the official schemas; raises on any problem."""
    _validator().validate(manifest, K8S_VERSION, strict=True)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def unavailable(why: str) -> NoReturn:
    """Skip a test this machine cannot run, with one line saying why; under CI=true fail instead,
    so a missing capability (FUSE, mount namespaces, the control plane...) never hides a test."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"required under CI=true: {why}")
    pytest.skip(why)
