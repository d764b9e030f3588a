"""Generate the reference docs from the code: the CLI from ``--help``, the plan from its schema.

Run ``python -m migrator.docgen`` after changing a command or the schema; a test fails when the
committed docs drift from what this produces.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from migrator.cli import load_commands
from migrator.plan import schema


def _commands(group: click.Group, prefix: str) -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name in sorted(group.commands):
        command = group.commands[name]
        path = f"{prefix} {name}"
        found.append((path, command))
        if isinstance(command, click.Group):
            found.extend(_commands(command, path))
    return found


def cli_reference() -> str:
    """Markdown with the ``--help`` text of every command."""
    lines = ["# CLI reference", "", "Generated from `--help` by `python -m migrator.docgen`.", ""]
    lines += [
        "Exit codes: 0 success; 1 verification found differences; 2 bad input; 3 an operation failed.",
        "",
    ]
    cli = load_commands()
    for path, command in [("migrator", cli), *_commands(cli, "migrator")]:
        with click.Context(
            command,
            info_name=path,
            terminal_width=100,
            max_content_width=100,
            help_option_names=["-h", "--help"],  # as the real CLI; click caches the option
        ) as ctx:
            text = command.get_help(ctx)
        lines += [
            f"## `{path}`",
            "",
            "```text",
            text.replace(f"Usage: {path}", f"Usage: {path}", 1),
            "```",
            "",
        ]
    return "\n".join(lines)


def _describe(
    name: str, node: dict[str, Any], depth: int, lines: list[str], defs: dict[str, Any]
) -> None:
    if "$ref" in node:
        node = defs[node["$ref"].split("/")[-1]]
    kind = node.get("type") or ("enum" if "enum" in node else "const" if "const" in node else "")
    if "enum" in node:
        kind = " | ".join(map(str, node["enum"]))
    example = node.get("examples", [None])[0]
    example_text = f" Example: `{example}`." if example is not None else ""
    if "default" in node:  # filled in when a plan is loaded; never written into the file
        example_text = f" Default: `{json.dumps(node['default'])}`.{example_text}"
    lines.append(f"{'  ' * depth}- `{name}` ({kind}): {node.get('description', '')}{example_text}")
    for child, sub in (node.get("properties") or {}).items():
        _describe(child, sub, depth + 1, lines, defs)
    items = node.get("items")
    if isinstance(items, dict) and ("properties" in items or "$ref" in items):
        _describe("[]", items, depth + 1, lines, defs)


def plan_reference() -> str:
    """Markdown describing every field of the plan file, from the schema."""
    doc = schema()
    lines = [
        "# Plan file reference",
        "",
        "Generated from `migrator/schemas/plan.schema.json` by",
        "`python -m migrator.docgen`.",
        "",
    ]
    lines += [doc["description"], "", "Validate a plan with `migrator plan --check PLAN`.", ""]
    lines += [
        "A field with a default may be left out: loading the plan fills the default in (the file",
        "itself is never rewritten with it).",
        "",
    ]
    for name, sub in doc["properties"].items():
        _describe(name, sub, 0, lines, doc["$defs"])
    return "\n".join(lines) + "\n"


def generated_docs(root: Path) -> dict[Path, str]:
    return {
        root / "docs" / "reference" / "cli.md": cli_reference(),
        root / "docs" / "reference" / "plan.md": plan_reference(),
    }


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()
    for path, text in generated_docs(root).items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
