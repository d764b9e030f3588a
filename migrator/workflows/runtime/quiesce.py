"""The cutover's quiesce: suspend the Flux releases, scale the workloads to 0, wait for their
pods to go, remembering in the journal what to bring back."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from migrator.errors import OperationFailedError
from migrator.journal import Journal
from migrator.kube import KubeClient
from migrator.plan import Plan
from migrator.planmodel import PlanVolume
from migrator.workflows.runtime.workloads import (
    patch_release,
    read_release,
    read_workload,
    replicas_of,
    scale,
    selector_of,
    wait_for_no_pods,
)


class Quiescer:
    """Cutover: suspend the Flux releases, scale the workloads to 0, wait for their pods to go."""

    def __init__(
        self, kube: KubeClient, namespace: str, plan: Plan, journal: Journal, timeout: float
    ) -> None:
        self.kube, self.namespace, self.plan, self.journal, self.timeout = (
            kube,
            namespace,
            plan,
            journal,
            timeout,
        )

    def __call__(self, volumes: list[PlanVolume], dry_run: bool) -> list[str]:
        workloads = sorted(
            {(w["kind"], w["name"]) for v in volumes for w in v["workloads"] if w["kind"] != "Pod"}
        )
        releases = self._releases_of(workloads)
        prefix = "(dry run) " if dry_run else ""
        notes = [f"{prefix}suspended HelmRelease {r}" for r in releases]
        notes += [f"{prefix}scaled {kind}/{name} to 0" for kind, name in workloads]
        if dry_run:
            return notes
        for release in releases:
            self._suspend(release)
        for kind, name in workloads:
            self._scale_to_zero(kind, name)
        for kind, name in workloads:
            self._wait_for_no_pods(kind, name)
        return notes

    def _releases_of(self, workloads: Sequence[tuple[str, str]]) -> list[str]:
        wanted = {f"{kind}/{name}" for kind, name in workloads}
        return sorted(
            r["name"] for r in self.plan.model["spec"]["releases"] if wanted & set(r["workloads"])
        )

    def _suspend(self, release: str) -> None:
        current = read_release(self.kube, self.namespace, release)
        was = bool(((current or {}).get("spec") or {}).get("suspend", False))

        def remember(document: dict[str, Any]) -> None:
            document["releases"].setdefault(release, {"previousSuspend": was})
            document["releases"][release]["suspendedByMigrator"] = True

        self.journal.update(remember)
        patch_release(self.kube, self.namespace, release, {"spec": {"suspend": True}}, "suspending")

    def _scale_to_zero(self, kind: str, name: str) -> None:
        replicas = replicas_of(self.kube, self.namespace, kind, name)

        def remember(document: dict[str, Any]) -> None:
            document.setdefault("workloads", {}).setdefault(
                f"{kind}/{name}", {"previousReplicas": replicas}
            )

        self.journal.update(remember)
        scale(self.kube, self.namespace, kind, name, 0)

    def _wait_for_no_pods(self, kind: str, name: str) -> None:
        selector = selector_of(read_workload(self.kube, self.namespace, kind, name))
        deadline = time.monotonic() + self.timeout
        if not wait_for_no_pods(self.kube, self.namespace, selector, deadline):
            raise OperationFailedError(
                f"the pods of {kind}/{name} did not stop within {self.timeout:.0f}s"
            )
