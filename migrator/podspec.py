"""What a container would see: its environment and its command with ``$(VAR)`` references expanded.

Kubernetes expands ``$(VAR)`` in command and args from the container's env (``$$`` escapes a
dollar, unknown references stay as written). The local executor does the same, so a Job runs
identically on this host.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")

SecretResolver = Callable[[str, str], str]


def expand(text: str, env: Mapping[str, str]) -> str:
    """Expand ``$(VAR)`` like the kubelet does."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REFERENCE.sub(replace, text)


def container_env(
    container: dict[str, Any], resolve_secret: SecretResolver, field_values: Mapping[str, str]
) -> dict[str, str]:
    """The container's env: values (expanded in order), Secret keys, and downward-API fields."""
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            env[name] = expand(str(item["value"]), env)
            continue
        source = item.get("valueFrom") or {}
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[name] = resolve_secret(ref["name"], ref["key"])
        elif "fieldRef" in source:
            env[name] = field_values.get(source["fieldRef"]["fieldPath"], "")
    return env


def container_command(container: dict[str, Any], env: Mapping[str, str]) -> list[str]:
    return [
        expand(part, env)
        for part in (container.get("command") or []) + (container.get("args") or [])
    ]


COMPLETION_INDEX_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
