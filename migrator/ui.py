"""Rich rendering for humans (tables to stdout, progress and notes to stderr) and JSON twins."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from migrator.quantity import human_bytes

# Off a terminal (pipes, CI logs) rich assumes 80 columns; tables of paths need more.
_WIDTH = None if sys.stdout.isatty() else 160
out = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err = Console(
    stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 160
)


def print_json(data: Any) -> None:
    """One JSON document on stdout (stable key order as built)."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def error(message: str) -> None:
    """The one-line error every failure ends with."""
    err.print(f"[bold red]Error:[/] {escape(message)}", markup=True, highlight=False)


def plan_table(document: dict[str, Any]) -> Table:
    spec = document["spec"]
    table = Table(title=f"Plan {document['metadata']['name']}", title_justify="left")
    for column in ("volume", "role", "action", "size", "workloads", "source", "target", "shards"):
        table.add_column(column, overflow="fold")
    for volume in spec["volumes"]:
        source = volume["source"]
        size = source.get("usedBytes") or source.get("capacityBytes")
        workloads = ", ".join(
            f"{w['kind']}/{w['name']}:{w['mountPath']}" for w in volume.get("workloads", [])
        )
        target = volume["target"].get("url") or volume["target"].get("pvc", "")
        where = source.get("pvc") or source.get("path", "")
        if source.get("storageClass"):
            where += f" ({source['storageClass']})"
        table.add_row(
            volume["name"],
            volume["role"],
            volume["action"],
            human_bytes(size),
            workloads or "-",
            where,
            target,
            str(volume["copy"]["shards"]),
        )
    return table


def show_plan(document: dict[str, Any], plan_path: str, jobs_dir: str) -> None:
    out.print(plan_table(document))
    for finding in document["spec"].get("warnings", []):
        style = "yellow" if finding["severity"] == "warning" else "cyan"
        label = finding["severity"].upper()
        code = escape(f"[{finding['code']}]")
        out.print(f"[{style}]{label}[/] {code} {escape(finding['message'])}", markup=True)
    out.print(f"Plan written to {plan_path}; Job manifests in {jobs_dir}/")
