"""The ``migrator`` command line: thin click commands over the library (one module per command).

Each command parses its options, calls one core function, and turns domain errors into a one-line
``Error: ...`` with the exit code of the tool's contract (see :mod:`migrator.errors`).
"""

from __future__ import annotations

import functools
import importlib
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


# The module that defines each command, imported when that command runs: a Job's `migrator agent
# verify` then starts without importing swap, plan or backup (and rich's tables) it never uses.
COMMAND_MODULES = {
    "agent": "agent",
    "backup": "backup",
    "demo": "demo",
    "plan": "plan",
    "rollback": "swap",
    "run": "run",
    "status": "swap",
    "swap": "swap",
    "verify": "verify",
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use, from :data:`COMMAND_MODULES`."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMAND_MODULES))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            importlib.import_module(f"migrator.cli.{COMMAND_MODULES[cmd_name]}")
        return super().get_command(ctx, cmd_name)


def load_commands() -> click.Group:
    """Import every command module (for the reference docs and their tests); returns ``cli``."""
    for module in sorted(set(COMMAND_MODULES.values())):
        importlib.import_module(f"migrator.cli.{module}")
    return cli


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="migrator")
def cli() -> None:
    """Move Kubernetes workload data to new storage, prove nothing was lost, swap the apps over,
    and keep nightly backups."""


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="migrator")
