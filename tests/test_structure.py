"""The package's shape (#14), read with ``ast`` from every module of ``migrator/``.

- No import runs from an executor or from the agent side (the code the Jobs run) up to a workflow
  or the CLI, counting imports inside functions. The agent side is derived: what the
  ``migrator agent ...`` commands (the Jobs' entry points, Containerfile ``migrator``) import,
  and all that reaches in turn; plus the agent packages ``checksum`` and ``backup``.
- No module over 600 lines without a ``# Over 600 lines: <reason>`` line near its top.

Each rule is one checker function over a module's source; the synthetic cases at the end feed
those same functions code that breaks the rule, so a checker that lets everything through fails.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "migrator"

FORBIDDEN = ("migrator.workflows", "migrator.cli")
# The agent's command modules: cli/agent.py registers the ``agent`` group on the ``migrator``
# group (migrator.cli itself, which imports no command module until one is run) and imports
# cli/backup_agent.py, whose backup commands join that group.
AGENT_CLI = {"migrator.cli.agent", "migrator.cli.backup_agent"}
ALLOWED = {(module, "migrator.cli") for module in AGENT_CLI} | {
    ("migrator.cli.agent", "migrator.cli.backup_agent"),
    ("migrator.cli.backup_agent", "migrator.cli.agent"),
}

# Packages that run inside the Jobs as a whole, reached from an agent command or not.
AGENT_PACKAGES = ("migrator.checksum", "migrator.backup")
# Modules the agent commands must reach, so that a change which empties the derivation (a renamed
# command group, say) fails here instead of checking nothing.
AGENT_ANCHORS = {
    "migrator.copier",
    "migrator.copystate",
    "migrator.sourcetree",
    "migrator.rclone",
    "migrator.verifier",
    "migrator.uploader",
    "migrator.filer",
    "migrator.events",
    "migrator.checksum",
    "migrator.backup.agent",
}

MAX_LINES = 600
REASON = "# Over 600 lines:"
REASON_WITHIN = 40


@dataclass(frozen=True)
class Import:
    """One import statement's target: ``module`` as absolute dotted names (for ``from X import
    Y`` both X and X.Y, since Y may be a submodule), at ``line``."""

    names: tuple[str, ...]
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_in(tree: ast.AST, module: str, is_package: bool) -> list[Import]:
    """Every import under ``tree`` (module level and inside functions), relative ones resolved."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import((alias.name,), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            names = (base, *(f"{base}.{alias.name}" for alias in node.names))
            found.append(Import(names, node.lineno))
    return found


def forbidden_imports(
    source: str, module: str, is_package: bool = False, known: Iterable[str] = ()
) -> list[str]:
    """One message per import of ``module`` that reaches a workflow or the CLI; ``known`` are
    the package's modules (``from X import Y`` imports X, and X.Y where that is a module)."""
    known = set(known) or set(package_modules())
    problems = []
    for found in imports_in(ast.parse(source), module, is_package):
        for name in (found.names[0], *(n for n in found.names[1:] if n in known)):
            if (module, name) in ALLOWED:
                continue
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN):
                problems.append(
                    f"{module} (line {found.line}) imports {name}: executors and agent-side "
                    "modules must not import migrator.workflows or migrator.cli"
                )
                break
    return problems


def agent_command_imports(source: str, module: str) -> set[str]:
    """What the ``migrator agent ...`` commands defined in ``source`` import (their bodies)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            call = decorator.func if isinstance(decorator, ast.Call) else decorator
            if (
                isinstance(call, ast.Attribute)
                and isinstance(call.value, ast.Name)
                and call.value.id == "agent_group"
            ):
                found |= {n for i in imports_in(node, module, False) for n in i.names}
    return found


def reach(start: Iterable[str], graph: Mapping[str, set[str]]) -> set[str]:
    """The modules of ``graph`` that importing ``start`` runs (parent packages included)."""
    seen: set[str] = set()
    todo = [name for name in start if name in graph]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        todo += [n for n in (*graph[name], *parents) if n in graph and n not in seen]
    return seen


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    graph = {}
    for name, path in modules.items():
        imports = imports_in(ast.parse(path.read_text()), name, path.name == "__init__.py")
        graph[name] = {n for i in imports for n in i.names if n in modules}
    return graph


def agent_side(modules: Mapping[str, Path]) -> set[str]:
    """The agent commands' imports and what they reach, the agent packages, and cli/agent.py
    (whose import of the ``migrator`` group is not followed: the group imports a command's module
    only when that command runs)."""
    graph = import_graph(modules)
    graph["migrator.cli"] = set()
    start = {"migrator.cli.agent"}
    for name, path in modules.items():
        if name.startswith("migrator.cli"):
            start |= agent_command_imports(path.read_text(), name)
    packages = {n for n in modules for p in AGENT_PACKAGES if n == p or n.startswith(p + ".")}
    return (reach(start, graph) | packages) - {"migrator", "migrator.cli"}


def length_problem(source: str, path: str) -> str | None:
    """Why ``source`` breaks the length rule, or None."""
    lines = source.splitlines()
    if len(lines) <= MAX_LINES:
        return None
    head = lines[:REASON_WITHIN]
    if any(line.startswith(REASON) and line[len(REASON) :].strip() for line in head):
        return None
    return (
        f"{path} has {len(lines)} lines (over {MAX_LINES}) and no '{REASON} <why>' line in its "
        f"first {REASON_WITHIN} lines: split it, or write down why it is one module"
    )


MODULES = package_modules()
AGENT_SIDE = agent_side(MODULES)
EXECUTORS = {n for n in MODULES if n.startswith("migrator.executors")}


def test_the_agent_side_is_what_the_agent_commands_reach() -> None:
    missing = AGENT_ANCHORS - AGENT_SIDE
    assert not missing, f"the agent commands no longer reach {sorted(missing)}; fix agent_side()"
    upward = {n for n in AGENT_SIDE if n.split(".")[1] in ("workflows", "cli")}
    assert upward == AGENT_CLI, f"the agent side reaches {sorted(upward)}"


@pytest.mark.parametrize("module", sorted(AGENT_SIDE | EXECUTORS))
def test_no_executor_or_agent_module_imports_a_workflow_or_the_cli(module: str) -> None:
    path = MODULES[module]
    problems = forbidden_imports(path.read_text(), module, path.name == "__init__.py")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", sorted({str(p.relative_to(ROOT)) for p in MODULES.values()}))
def test_no_module_is_over_600_lines_without_a_reason(path: str) -> None:
    problem = length_problem((ROOT / path).read_text(), path)
    assert problem is None, problem


# --- the checkers catch what they are for -----------------------------------------------------


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (
            "migrator.copier",
            "from migrator.workflows.run import RunContext\n",
            "migrator.copier (line 1) imports migrator.workflows",
        ),
        (
            "migrator.verifier",
            "import os\nimport migrator.cli.swap\n",
            "migrator.verifier (line 2) imports migrator.cli.swap",
        ),
        (
            "migrator.executors.local",
            "def run():\n    from migrator.workflows.swap.context import SwapOptions\n",
            "migrator.executors.local (line 2) imports migrator.workflows.swap.context",
        ),
        (
            "migrator.executors.local",
            "from ..workflows import run\n",
            "migrator.executors.local (line 1) imports migrator.workflows",
        ),
        (
            "migrator.checksum",
            "from ..cli import agent\n",
            "migrator.checksum (line 1) imports migrator.cli",
        ),
        (
            "migrator.events",
            "from migrator import workflows\n",
            "migrator.events (line 1) imports migrator.workflows",
        ),
        (
            "migrator.cli.agent",
            "from migrator.cli.swap import swap_command\n",
            "migrator.cli.agent (line 1) imports migrator.cli.swap",
        ),
        ("migrator.cli.agent", "from migrator.cli import cli, handle_errors\n", None),
        (
            "migrator.copier",
            "from migrator.events import json_lines\nimport migrator.clients\n",
            None,
        ),
    ],
)
def test_the_import_checker_names_the_module_and_the_import(
    module: str, source: str, expected: str | None
) -> None:
    problems = forbidden_imports(source, module, is_package=module == "migrator.checksum")
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_the_agent_side_follows_agent_commands_and_what_they_import() -> None:
    cli_source = (
        "@agent_group.command('copy')\n"
        "def agent_copy():\n    from migrator.copier import run_copy\n"
        "@cli.command('swap')\n"
        "def swap_command():\n    from migrator.workflows.swap.swap import swap\n"
    )
    start = agent_command_imports(cli_source, "migrator.cli.fake")
    assert "migrator.copier" in start and not any(n.startswith("migrator.workflows") for n in start)
    graph = {
        "migrator": set(),
        "migrator.copier": {"migrator.uploader"},
        "migrator.uploader": {"migrator.workflows.run"},
        "migrator.workflows": set(),
        "migrator.workflows.run": set(),
        "migrator.planner": set(),
    }
    assert reach(start, graph) == {
        "migrator",
        "migrator.copier",
        "migrator.uploader",
        "migrator.workflows",
        "migrator.workflows.run",
    }


@pytest.mark.parametrize(
    ("source", "broken"),
    [
        ("x = 1\n" * 600, False),
        ("x = 1\n" * 601, True),
        ('"""Doc."""\n# Over 600 lines: one parser state machine.\n' + "x = 1\n" * 600, False),
        ("# Over 600 lines:\n" + "x = 1\n" * 600, True),  # no reason given
        ("x = 1\n" * 40 + "# Over 600 lines: too late to be read.\n" + "x = 1\n" * 600, True),
    ],
)
def test_the_length_checker_wants_a_reason_at_the_top(source: str, broken: bool) -> None:
    problem = length_problem(source, "migrator/big.py")
    if broken:
        assert problem is not None and problem.startswith("migrator/big.py has "), problem
    else:
        assert problem is None
