"""The :class:`RunContext` of a cluster run: executor, ConfigMap journal, Lease, quiesce and
bringing the apps back."""

from __future__ import annotations

from typing import Any, cast

from migrator.errors import BadInputError
from migrator.executors.kubernetes import KubernetesExecutor
from migrator.journal import Journal
from migrator.kube import KubeClient
from migrator.plan import Plan
from migrator.planmodel import PlanVolume
from migrator.workflows.run import RunContext
from migrator.workflows.runtime.journal_store import ConfigMapStore
from migrator.workflows.runtime.lease import LeaseLock
from migrator.workflows.runtime.quiesce import Quiescer


def kubernetes_context(plan: Plan, options: dict[str, Any]) -> RunContext:
    """RunContext for the cluster: executor, ConfigMap journal, Lease lock, quiesce hook."""
    namespace = plan.namespace
    if not namespace:
        raise BadInputError(
            "this plan has no namespace: it was made from --source-dir; use --executor local"
        )
    kube = KubeClient.from_kubeconfig(
        options.get("kubeconfig"),
        options.get("context") or plan.model["spec"]["source"].get("context"),
    )
    kube.require_namespace(namespace)
    timeout = float(options.get("timeout") or 24 * 3600)
    lock = LeaseLock(kube, namespace, plan.name)
    journal = Journal(ConfigMapStore(kube, namespace, plan.name, lock.ensure_held), plan.name)

    def bring_back(volumes: list[PlanVolume], observer: Any) -> list[str]:
        from migrator.workflows.swap.bring_back import bring_back_after_cutover
        from migrator.workflows.swap.cluster import Cluster

        cluster = Cluster(kube, namespace)
        # workflows/swap.py takes plain dicts until it is converted to the plan model (#14)
        untyped = cast(list[dict[str, Any]], volumes)
        return bring_back_after_cutover(
            plan, untyped, journal, cluster, min(timeout, 600), observer
        )

    return RunContext(
        executor=KubernetesExecutor(kube, timeout, options.get("parallel")),
        executor_name="kubernetes",
        journal=journal,
        lock=lock,
        quiesce=Quiescer(kube, namespace, plan, journal, min(timeout, 600)),
        bring_back=bring_back,
    )
