"""Docs stay in step with the code: every command has help and is documented."""

from __future__ import annotations

from pathlib import Path

import click

from migrator.cli import cli
from migrator.docgen import generated_docs

ROOT = Path(__file__).resolve().parent.parent


def test_generated_reference_docs_are_up_to_date() -> None:
    for path, text in generated_docs(ROOT).items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path} drifted: run python -m migrator.docgen"
        )


def test_every_command_has_help_and_is_documented() -> None:
    reference = (ROOT / "docs" / "reference" / "cli.md").read_text()

    def check(group: click.Group, prefix: str) -> None:
        for name, command in group.commands.items():
            assert command.help, f"{prefix} {name} has no help text"
            assert f"## `{prefix} {name}`" in reference
            if isinstance(command, click.Group):
                check(command, f"{prefix} {name}")

    check(cli, "migrator")
