"""The journal of a cluster plan, kept in a ConfigMap in the plan's namespace."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from migrator.kube import FIELD_MANAGER, KubeClient


class ConfigMapStore:
    """The journal as a ConfigMap ``migrator-<plan>`` (key ``journal.json``).

    ``guard`` runs before every write (a run passes :meth:`LeaseLock.ensure_held`): a run that
    lost its Lease raises instead of overwriting the journal of the run that holds it now.
    """

    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        plan: str,
        guard: Callable[[], None] | None = None,
    ) -> None:
        self.kube, self.namespace, self.name = kube, namespace, f"migrator-{plan}"
        self.guard = guard

    def load(self) -> dict[str, Any]:
        found = self.kube.call(
            "reading the journal ConfigMap",
            lambda: self.kube.core.read_namespaced_config_map(self.name, self.namespace),
            missing_ok=True,
        )
        if found is None:
            return {}
        loaded: dict[str, Any] = json.loads((found.data or {}).get("journal.json") or "{}")
        return loaded

    def save(self, document: dict[str, Any]) -> None:
        if self.guard is not None:
            self.guard()
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "migrator"},
            },
            "data": {"journal.json": json.dumps(document, indent=2, sort_keys=True)},
        }
        self.kube.call(
            "writing the journal ConfigMap",
            lambda: self.kube.core.patch_namespaced_config_map(
                self.name,
                self.namespace,
                body,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type="application/apply-patch+yaml",
            ),
        )
