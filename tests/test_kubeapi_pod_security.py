"""The test server refuses pods as Pod Security admission does, and pulls only the images its
registry has, with the events and pod states a real cluster shows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.kubeapi import JobController, KubeAPIServer, kube_api_server
from tests.test_kubeapi_jobs import job, pods_of

NS = "tenant-media"
PUBLISHED = "ghcr.io/example/agent:1.0"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[KubeAPIServer]:
    with kube_api_server(tmp_path / "api") as server:
        labels = {"pod-security.kubernetes.io/enforce": "baseline"}
        server.seed(
            [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS, "labels": labels}}]
        )
        server.add_controller(JobController({}, images=[PUBLISHED]))
        yield server


@pytest.fixture
def core(api: KubeAPIServer) -> Iterator[client.CoreV1Api]:
    api_client = api.api_client()
    yield client.CoreV1Api(api_client)
    api_client.close()


def events_of(api: KubeAPIServer, kind: str, name_prefix: str) -> list[tuple[str, str, str]]:
    return [
        (e["type"], e["reason"], e["message"])
        for e in api.list_objects("v1", "Event", NS)
        if e["involvedObject"]["kind"] == kind
        and e["involvedObject"]["name"].startswith(name_prefix)
    ]


SEARCHER = {"securityContext": {"capabilities": {"add": ["DAC_READ_SEARCH"]}}}


def test_a_baseline_namespace_refuses_a_pod_that_adds_dac_read_search(
    core: client.CoreV1Api,
) -> None:
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "reader"},
        "spec": {"containers": [{"name": "main", "image": PUBLISHED, **SEARCHER}]},
    }
    with pytest.raises(ApiException) as raised:
        core.create_namespaced_pod(NS, pod)
    assert raised.value.status == 403
    assert json.loads(raised.value.body)["message"] == (
        'pods "reader" is forbidden: violates PodSecurity "baseline:latest": non-default '
        'capabilities (container "main" must not include "DAC_READ_SEARCH" in '
        "securityContext.capabilities.add)"
    )
    assert core.list_namespaced_pod(NS).items == []


def test_a_job_whose_pods_are_refused_records_failed_create(api: KubeAPIServer) -> None:
    api.seed(
        [
            {
                **job("refused", "true", container=SEARCHER),
                "metadata": {"name": "refused", "namespace": NS},
            }
        ]
    )
    api.wait_for(lambda: bool(events_of(api, "Job", "refused")), timeout=30)
    api.settle()
    assert api.list_objects("v1", "Pod", NS) == []
    [(kind, reason, message)] = events_of(api, "Job", "refused")
    assert (kind, reason) == ("Warning", "FailedCreate")
    assert message.startswith('Error creating: pods "refused-" is forbidden: violates PodSecurity')


def test_an_image_the_registry_lacks_backs_off_pulling(
    api: KubeAPIServer, core: client.CoreV1Api
) -> None:
    missing = "ghcr.io/example/agent:9.9"
    api.seed(
        [
            {
                **job("unpulled", "true", container={"image": missing}),
                "metadata": {"name": "unpulled", "namespace": NS},
            }
        ]
    )

    def waiting_reason() -> str | None:
        pods = [
            p
            for p in api.list_objects("v1", "Pod", NS)
            if p["metadata"]["name"].startswith("unpulled-")
        ]
        statuses = (pods[0].get("status") or {}).get("containerStatuses") if pods else None
        return ((statuses or [{}])[0].get("state") or {}).get("waiting", {}).get("reason")

    api.wait_for(lambda: waiting_reason() == "ImagePullBackOff", timeout=30)
    [pod] = pods_of(core, "unpulled")
    assert pod.status.phase == "Pending"
    reasons = [(kind, reason) for kind, reason, _ in events_of(api, "Pod", "unpulled-")]
    assert ("Warning", "BackOff") in reasons and ("Normal", "Pulling") in reasons
    failed = [m for _, r, m in events_of(api, "Pod", "unpulled-") if r == "Failed"]
    assert f'Failed to pull image "{missing}": rpc error: code = NotFound' in failed[0]


def test_a_deployment_whose_pods_are_refused_records_failed_create_on_its_replica_set(
    api: KubeAPIServer,
) -> None:
    labels = {"app": "searcher"}
    template = {
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": "main", "image": PUBLISHED, **SEARCHER}]},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "searcher", "namespace": NS},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": template},
    }
    api.seed([deployment])
    api.settle()  # refusals are recorded once, not in a loop
    assert api.list_objects("v1", "Pod", NS) == []
    [(kind, reason, message)] = events_of(api, "ReplicaSet", "searcher-")
    assert (kind, reason) == ("Warning", "FailedCreate")
    assert 'violates PodSecurity "baseline:latest"' in message
