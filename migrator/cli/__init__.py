"""The ``migrator`` command line: thin click commands over the library (one module per command).

Each command parses its options, calls one core function, and turns domain errors into a one-line
``Error: ...`` with the exit code of the tool's contract (see :mod:`migrator.errors`).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from migrator import __version__
from migrator.errors import MigratorError, Outcome

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Map domain exceptions to ``Error: ...`` and the outcome's exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from migrator import ui

        try:
            return fn(*args, **kwargs)
        except MigratorError as exc:
            ui.error(exc.message)
            sys.exit(int(exc.outcome))
        except KeyboardInterrupt:
            ui.error("interrupted; re-run the same command to resume")
            sys.exit(int(Outcome.INTERRUPTED))
        except Exception as exc:
            if os.environ.get("MIGRATOR_DEBUG"):
                raise
            ui.error(f"unexpected {type(exc).__name__}: {exc} (set MIGRATOR_DEBUG=1 for details)")
            sys.exit(int(Outcome.FAILED))

    return wrapper  # type: ignore[return-value]


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(fn)


def kube_options(fn: F) -> F:
    fn = click.option("--context", help="kubeconfig context to use.")(fn)
    fn = click.option(
        "--kubeconfig",
        type=click.Path(dir_okay=False),
        help="Path of the kubeconfig (default: $KUBECONFIG or ~/.kube/config).",
    )(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="migrator")
def cli() -> None:
    """Move Kubernetes workload data to new storage, prove nothing was lost, swap the apps over,
    and keep nightly backups."""


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="migrator")


# Each command module attaches its commands to ``cli`` (imported last: they import ``cli``).
from migrator.cli import agent, backup, backup_agent, demo, plan, run, swap, verify  # noqa: E402, F401
