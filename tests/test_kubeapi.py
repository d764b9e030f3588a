"""The Kubernetes API test server, driven through the official client (and kubectl)."""

from __future__ import annotations

import functools
import itertools
import json
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes import client, watch
from kubernetes.client import ApiClient
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from tests.kubeapi import KUBE_VERSION, Controller, KubeAPIServer, ObjectStore, kube_api_server
from tests.kubeapi.errors import ApiError
from tests.kubeapi.resources import ResourceRegistry, ResourceType
from tests.kubeapi.validation import schema_causes

NS = "apps"
Obj = dict[str, Any]
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"


# --- builders ------------------------------------------------------------------------------------

def namespace(name: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def config_map(name: str, data: dict[str, str] | None = None, **metadata: Any) -> Obj:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": NS, **metadata}, "data": data or {}}


def container(name: str = "app", **fields: Any) -> Obj:
    return {"name": name, "image": "ghcr.io/example/app:1.0", **fields}


def pod(name: str, labels: dict[str, str] | None = None, **spec: Any) -> Obj:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": labels or {}},
            "spec": {"containers": [container()], **spec}}


def deployment(name: str, replicas: int) -> Obj:
    labels = {"app.kubernetes.io/name": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [container()]}}}}


def job(name: str, restart_policy: str = "Never") -> Obj:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"template": {"spec": {"restartPolicy": restart_policy, "containers": [
                container(command=["sh", "-c", "true"])]}}}}


def helm_release(name: str, **spec: Any) -> Obj:
    return {"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"interval": "10m", "chart": {"spec": {
                "chart": "app-template", "version": "3.7.3",
                "sourceRef": {"kind": "HelmRepository", "name": "bjw-s", "namespace": "flux"}}},
                "values": {"persistence": {"config": {"existingClaim": f"{name}-config"}}},
                **spec}}


def status_of(error: pytest.ExceptionInfo[ApiException]) -> Obj:
    body: Obj = json.loads(error.value.body)
    assert body["kind"] == "Status" and body["status"] == "Failure"
    assert body["code"] == error.value.status
    return body


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture
def api(tmp_path: Path) -> Iterator[KubeAPIServer]:
    with kube_api_server(tmp_path) as server:
        server.seed([namespace(NS), {"apiVersion": "v1", "kind": "Node",
                                     "metadata": {"name": "worker-1"}}])
        yield server


@pytest.fixture
def k8s(api: KubeAPIServer) -> Iterator[ApiClient]:
    api_client = api.api_client()
    yield api_client
    api_client.close()


@pytest.fixture
def core(k8s: ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(k8s)


@pytest.fixture
def apps(k8s: ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(k8s)


@pytest.fixture
def custom(k8s: ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(k8s)


# --- server basics -------------------------------------------------------------------------------

def test_kubeconfig_points_at_the_server(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    assert api.url == f"http://127.0.0.1:{api.port}"
    assert api.kubeconfig()["current-context"] == api.context
    assert [n.metadata.name for n in core.list_namespace().items] == [NS]
    with urllib.request.urlopen(f"{api.url}/version") as response:
        assert json.load(response)["gitVersion"] == f"v{KUBE_VERSION}"


def test_discovery_lists_groups_and_subresources(api: KubeAPIServer, k8s: ApiClient) -> None:
    groups = client.ApisApi(k8s).get_api_versions().groups
    assert {"apps", "batch", "helm.toolkit.fluxcd.io", "source.toolkit.fluxcd.io"} <= {
        g.name for g in groups}
    resources = client.AppsV1Api(k8s).get_api_resources().resources
    scale = next(r for r in resources if r.name == "deployments/scale")
    assert (scale.group, scale.version, scale.kind) == ("autoscaling", "v1", "Scale")


def test_crud_roundtrip(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_config_map(NS, config_map("settings", {"a": "1"}))
    assert created.metadata.uid and created.metadata.creation_timestamp
    fetched = core.read_namespaced_config_map("settings", NS)
    fetched.data["b"] = "2"
    replaced = core.replace_namespaced_config_map("settings", NS, fetched)
    assert replaced.data == {"a": "1", "b": "2"}
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)
    core.delete_namespaced_config_map("settings", NS)
    with pytest.raises(ApiException) as error:
        core.read_namespaced_config_map("settings", NS)
    assert status_of(error)["message"] == 'configmaps "settings" not found'


def test_generation_moves_only_with_spec(apps: client.AppsV1Api) -> None:
    created = apps.create_namespaced_deployment(NS, deployment("web", 0))
    labelled = apps.patch_namespaced_deployment("web", NS, {"metadata": {"labels": {"x": "y"}}})
    scaled = apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": 0,
                                                                   "paused": True}})
    assert (created.metadata.generation, labelled.metadata.generation,
            scaled.metadata.generation) == (1, 1, 2)


def test_create_twice_is_409_already_exists(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map(NS, config_map("twice"))
    with pytest.raises(ApiException) as error:
        core.create_namespaced_config_map(NS, config_map("twice"))
    assert error.value.status == 409
    assert status_of(error)["reason"] == "AlreadyExists"


def test_replace_with_stale_resource_version_is_409_conflict(core: client.CoreV1Api) -> None:
    stale = core.create_namespaced_config_map(NS, config_map("race"))
    core.patch_namespaced_config_map("race", NS, {"data": {"winner": "other"}})
    stale.data = {"winner": "me"}
    with pytest.raises(ApiException) as error:
        core.replace_namespaced_config_map("race", NS, stale)
    body = status_of(error)
    assert (error.value.status, body["reason"]) == (409, "Conflict")
    assert "the object has been modified" in body["message"]


def test_unknown_field_is_422_under_strict_validation(k8s: ApiClient) -> None:
    bad = pod("typo")
    bad["spec"]["containers"][0]["volumeMount"] = []
    pods = DynamicClient(k8s).resources.get(api_version="v1", kind="Pod")  # typed API refuses
    with pytest.raises(ApiException) as error:
        pods.create(body=bad, namespace=NS)
    body = status_of(error)
    assert (error.value.status, body["reason"]) == (422, "Invalid")
    assert body["details"]["causes"] == [{
        "reason": "FieldValueInvalid", "field": "spec.containers[0].volumeMount",
        "message": "field not declared in schema"}]
    assert body["message"] == ('Pod "typo" is invalid: spec.containers[0].volumeMount: '
                               "field not declared in schema")


def test_job_with_bad_restart_policy_is_422(k8s: ApiClient) -> None:
    with pytest.raises(ApiException) as error:
        client.BatchV1Api(k8s).create_namespaced_job(NS, job("copy", restart_policy="Always"))
    cause = status_of(error)["details"]["causes"][0]
    assert cause["field"] == "spec.template.spec.restartPolicy"
    assert cause["message"] == 'Unsupported value: "Always": supported values: "OnFailure", "Never"'


def test_job_template_is_immutable(k8s: ApiClient) -> None:
    batch = client.BatchV1Api(k8s)
    batch.create_namespaced_job(NS, job("copy"))
    with pytest.raises(ApiException) as error:
        batch.patch_namespaced_job("copy", NS, {"spec": {"template": {"spec": {
            "containers": [{"name": "app", "image": "other:2"}]}}}})
    assert status_of(error)["details"]["causes"][0]["field"] == "spec.template"


def test_job_gets_selector_and_orphans_pods_by_default(api: KubeAPIServer,
                                                       k8s: ApiClient) -> None:
    batch = client.BatchV1Api(k8s)
    created = batch.create_namespaced_job(NS, job("copy"))
    uid = created.metadata.uid
    assert created.spec.selector.match_labels == {"batch.kubernetes.io/controller-uid": uid}
    assert created.spec.template.metadata.labels["job-name"] == "copy"
    worker = pod("copy-x1", labels={"job-name": "copy"}, restartPolicy="Never")
    worker["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job",
                                              "name": "copy", "uid": uid, "controller": True}]
    api.seed([worker])
    _, _, headers = batch.delete_namespaced_job_with_http_info("copy", NS)
    assert "child pods are preserved by default" in headers["Warning"]
    orphan = api.get_object("v1", "Pod", NS, "copy-x1")
    assert orphan is not None and orphan["metadata"]["ownerReferences"] == []


def test_create_in_missing_namespace_is_404(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as error:
        core.create_namespaced_config_map("nowhere", {"metadata": {"name": "x"}})
    body = status_of(error)
    assert (error.value.status, body["reason"]) == (404, "NotFound")
    assert body["message"] == 'namespaces "nowhere" not found'


def test_list_in_missing_namespace_is_empty(core: client.CoreV1Api) -> None:
    assert core.list_namespaced_pod("nowhere").items == []


def test_dry_run_validates_without_storing(core: client.CoreV1Api) -> None:
    result = core.create_namespaced_config_map(NS, config_map("dry"), dry_run="All")
    assert result.metadata.name == "dry"
    assert core.list_namespaced_config_map(NS).items == []
    with pytest.raises(ApiException) as error:
        core.create_namespaced_pod(NS, pod("Bad_Name"), dry_run="All")
    assert error.value.status == 422


def test_secret_string_data_is_stored_as_data(core: client.CoreV1Api) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"},
              "stringData": {"accessKey": "AK"}}
    created = core.create_namespaced_secret(NS, secret)
    assert (created.data, created.string_data, created.type) == ({"accessKey": "QUs="}, None,
                                                                 "Opaque")


# --- patches -------------------------------------------------------------------------------------

def test_json_patch(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map(NS, config_map("cfg", {"a": "1", "b": "2"}))
    patched = core.patch_namespaced_config_map("cfg", NS, [
        {"op": "test", "path": "/data/a", "value": "1"},
        {"op": "replace", "path": "/data/a", "value": "10"},
        {"op": "remove", "path": "/data/b"},
        {"op": "add", "path": "/metadata/labels", "value": {"k": "v"}}])
    assert (patched.data, patched.metadata.labels) == ({"a": "10"}, {"k": "v"})
    with pytest.raises(ApiException) as error:
        core.patch_namespaced_config_map("cfg", NS, [{"op": "test", "path": "/data/a",
                                                      "value": "1"}])
    assert error.value.status == 422


def test_merge_patch_replaces_lists(apps: client.AppsV1Api) -> None:
    apps.create_namespaced_deployment(NS, deployment("web", 0))
    patch = {"spec": {"template": {"spec": {"containers": [
        {"name": "sidecar", "image": "busybox:1.36"}]}}}}
    patched = apps.patch_namespaced_deployment("web", NS, patch, _content_type=MERGE)
    assert [c.name for c in patched.spec.template.spec.containers] == ["sidecar"]


def test_strategic_merge_patch_merges_by_merge_key(apps: client.AppsV1Api) -> None:
    web = deployment("web", 0)
    web["spec"]["template"]["spec"]["containers"][0].update(
        env=[{"name": "TZ", "value": "UTC"}], ports=[{"containerPort": 8989}],
        volumeMounts=[{"name": "config", "mountPath": "/config"}])
    web["spec"]["template"]["spec"]["volumes"] = [{"name": "config", "emptyDir": {}}]
    apps.create_namespaced_deployment(NS, web)
    patch = {"spec": {"template": {"spec": {
        "containers": [{"name": "app", "env": [{"name": "PUID", "value": "911"}],
                        "volumeMounts": [{"name": "config", "mountPath": "/config",
                                          "readOnly": True}]},
                       {"name": "sidecar", "image": "busybox:1.36"}],
        "volumes": [{"name": "media", "persistentVolumeClaim": {"claimName": "media"}}]}}}}
    spec = apps.patch_namespaced_deployment("web", NS, patch,
                                            _content_type=STRATEGIC).spec.template.spec
    app = spec.containers[0]
    assert [c.name for c in spec.containers] == ["app", "sidecar"]
    assert [(e.name, e.value) for e in app.env] == [("TZ", "UTC"), ("PUID", "911")]
    assert [(m.mount_path, m.read_only) for m in app.volume_mounts] == [("/config", True)]
    assert app.ports[0].container_port == 8989
    assert [v.name for v in spec.volumes] == ["config", "media"]


def test_strategic_merge_patch_delete_directive(apps: client.AppsV1Api) -> None:
    web = deployment("web", 0)
    web["spec"]["template"]["spec"]["containers"].append(container("sidecar"))
    apps.create_namespaced_deployment(NS, web)
    patch = {"spec": {"template": {"spec": {"containers": [
        {"name": "sidecar", "$patch": "delete"}]}}}}
    patched = apps.patch_namespaced_deployment("web", NS, patch, _content_type=STRATEGIC)
    assert [c.name for c in patched.spec.template.spec.containers] == ["app"]


def test_custom_resources_refuse_strategic_merge(api: KubeAPIServer,
                                                 custom: client.CustomObjectsApi) -> None:
    api.seed([helm_release("sonarr")])
    args = ("helm.toolkit.fluxcd.io", "v2", NS, "helmreleases", "sonarr")
    with pytest.raises(ApiException) as error:
        custom.patch_namespaced_custom_object(*args, {"spec": {"suspend": True}},
                                              _content_type=STRATEGIC)
    assert error.value.status == 415
    patched = custom.patch_namespaced_custom_object(*args, {"spec": {"suspend": True}})
    assert patched["spec"]["suspend"] is True
    assert patched["spec"]["values"]["persistence"]["config"]["existingClaim"] == "sonarr-config"


def test_scale_subresource(api: KubeAPIServer, apps: client.AppsV1Api) -> None:
    apps.create_namespaced_deployment(NS, deployment("web", 1))
    api.settle()  # the controller writes status, which moves the resourceVersion
    scale = apps.read_namespaced_deployment_scale("web", NS)
    assert (scale.spec.replicas, scale.status.selector) == (1, "app.kubernetes.io/name=web")
    scale.spec.replicas = 3
    assert apps.replace_namespaced_deployment_scale("web", NS, scale).spec.replicas == 3
    assert apps.read_namespaced_deployment("web", NS).spec.replicas == 3


# --- server-side apply ---------------------------------------------------------------------------

def test_server_side_apply_creates_merges_and_prunes(core: client.CoreV1Api) -> None:
    def apply(data: dict[str, str], manager: str = "migrator", **kwargs: Any) -> Any:
        return core.patch_namespaced_config_map("applied", NS, config_map("applied", data),
                                                field_manager=manager, _content_type=APPLY,
                                                **kwargs)

    created = apply({"a": "1", "b": "2"})
    assert created.data == {"a": "1", "b": "2"}
    entry = created.metadata.managed_fields[0]
    assert (entry.manager, entry.operation) == ("migrator", "Apply")
    assert entry.fields_v1 == {"f:data": {"f:a": {}, "f:b": {}}}
    core.patch_namespaced_config_map("applied", NS, {"data": {"c": "3"}})
    assert apply({"a": "1"}).data == {"a": "1", "c": "3"}  # b pruned, c not ours
    apply({"z": "9"}, manager="someone-else")
    with pytest.raises(ApiException) as error:
        apply({"z": "0"})
    assert status_of(error)["message"] == (
        'Apply failed with 1 conflict: conflict with "someone-else": .data.z')
    assert apply({"z": "0"}, force=True).data["z"] == "0"


def test_server_side_apply_requires_field_manager(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as error:
        core.patch_namespaced_config_map("x", NS, config_map("x"), _content_type=APPLY)
    assert error.value.status == 400


def test_server_side_apply_merges_containers(apps: client.AppsV1Api) -> None:
    apps.create_namespaced_deployment(NS, deployment("web", 0))
    applied = deployment("web", 0)
    applied["spec"]["template"]["spec"]["containers"].append(container("sidecar"))
    merged = apps.patch_namespaced_deployment("web", NS, applied, field_manager="migrator",
                                              _content_type=APPLY)
    assert [c.name for c in merged.spec.template.spec.containers] == ["app", "sidecar"]


# --- selectors, pagination ------------------------------------------------------------------------

def test_label_selectors(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    api.seed([pod("a", {"app": "sonarr", "tier": "web"}), pod("b", {"app": "radarr"}),
              pod("c", {"app": "prowlarr", "tier": "db"})])

    def names(selector: str) -> list[str]:
        return [p.metadata.name for p in core.list_namespaced_pod(
            NS, label_selector=selector).items]

    assert names("app=sonarr") == ["a"]
    assert names("app!=sonarr") == ["b", "c"]
    assert names("app in (sonarr, radarr),tier") == ["a"]
    assert names("app notin (sonarr),!tier") == ["b"]
    with pytest.raises(ApiException) as error:
        names("app in sonarr")
    assert error.value.status == 400


def test_field_selectors(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    running = pod("running", nodeName="worker-1")
    running["status"] = {"phase": "Running"}
    api.seed([running, pod("pending")])

    def names(selector: str) -> list[str]:
        return [p.metadata.name for p in core.list_namespaced_pod(
            NS, field_selector=selector).items]

    assert names("status.phase=Running") == ["running"]
    assert names("status.phase!=Running") == ["pending"]
    assert names("spec.nodeName=worker-1,metadata.namespace=apps") == ["running"]
    assert names("metadata.name==pending") == ["pending"]
    with pytest.raises(ApiException) as error:
        names("spec.image=x")
    assert "field label not supported" in status_of(error)["message"]


def test_pagination_with_limit_and_continue(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    api.seed([config_map(f"cm-{n}") for n in range(5)])
    first = core.list_namespaced_config_map(NS, limit=2)
    assert first.metadata.remaining_item_count == 3
    rest = core.list_namespaced_config_map(NS, limit=10, _continue=first.metadata._continue)
    assert [c.metadata.name for c in first.items + rest.items] == [f"cm-{n}" for n in range(5)]
    assert rest.metadata._continue is None


# --- watch ---------------------------------------------------------------------------------------

def test_watch_streams_live_modified_events(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map(NS, config_map("watched", {"v": "0"}))
    seen = []
    stream = watch.Watch()
    for event in stream.stream(core.list_namespaced_config_map, NS, timeout_seconds=5):
        seen.append((event["type"], event["object"].data["v"]))
        if event["type"] == "ADDED":  # the stream is open: change the object now
            core.patch_namespaced_config_map("watched", NS, {"data": {"v": "1"}})
        else:
            stream.stop()
    assert seen == [("ADDED", "0"), ("MODIFIED", "1")]


def test_watch_from_resource_version_replays_history(core: client.CoreV1Api) -> None:
    listed = core.list_namespaced_config_map(NS)
    core.create_namespaced_config_map(NS, config_map("late"))
    core.delete_namespaced_config_map("late", NS)
    events = [(e["type"], e["object"].metadata.name) for e in itertools.islice(
        watch.Watch().stream(core.list_namespaced_config_map, NS, timeout_seconds=5,
                             resource_version=listed.metadata.resource_version), 2)]
    assert events == [("ADDED", "late"), ("DELETED", "late")]


def test_watch_with_selector_sees_objects_leave(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map(NS, config_map("tagged", labels={"role": "config"}))
    rv = core.list_namespaced_config_map(NS).metadata.resource_version
    core.patch_namespaced_config_map("tagged", NS, {"metadata": {"labels": {"role": None}}})
    core.create_namespaced_config_map(NS, config_map("untagged"))
    core.patch_namespaced_config_map("untagged", NS, {"metadata": {"labels": {"role": "config"}}})
    events = [(e["type"], e["object"].metadata.name) for e in itertools.islice(
        watch.Watch().stream(core.list_namespaced_config_map, NS, label_selector="role=config",
                             resource_version=rv, timeout_seconds=5), 2)]
    assert events == [("DELETED", "tagged"), ("ADDED", "untagged")]


# --- controllers and garbage collection ----------------------------------------------------------

def wait_until(check: Callable[[], bool], api: KubeAPIServer) -> None:
    api.wait_for(check, timeout=5)


def test_deployment_runs_pods_and_scaling_to_zero_removes_them(
        api: KubeAPIServer, apps: client.AppsV1Api, core: client.CoreV1Api) -> None:
    apps.create_namespaced_deployment(NS, deployment("sonarr", 2))
    selector = "app.kubernetes.io/name=sonarr"
    wait_until(lambda: len(api.list_objects("v1", "Pod", NS)) == 2, api)
    api.settle()
    pods = core.list_namespaced_pod(NS, label_selector=selector).items
    assert {(p.status.phase, p.spec.node_name) for p in pods} == {("Running", "worker-1")}
    assert all(c.type != "Ready" or c.status == "True" for p in pods for c in p.status.conditions)
    status = apps.read_namespaced_deployment_status("sonarr", NS).status
    assert (status.replicas, status.ready_replicas, status.available_replicas,
            status.updated_replicas, status.observed_generation) == (2, 2, 2, 2, 1)
    apps.patch_namespaced_deployment_scale("sonarr", NS, {"spec": {"replicas": 0}})
    deleted = []
    for event in watch.Watch().stream(core.list_namespaced_pod, NS, label_selector=selector,
                                      resource_version=pods[-1].metadata.resource_version,
                                      timeout_seconds=5):
        deleted += [event["object"].metadata.name] if event["type"] == "DELETED" else []
        if len(deleted) == 2:
            break
    assert sorted(deleted) == sorted(p.metadata.name for p in pods)
    api.settle()
    status = apps.read_namespaced_deployment("sonarr", NS).status
    assert (status.replicas, status.ready_replicas, status.observed_generation) == (None, None, 2)


def test_statefulset_pods_and_claims(api: KubeAPIServer, apps: client.AppsV1Api) -> None:
    sts = deployment("radarr", 1) | {"kind": "StatefulSet"}
    sts["spec"]["volumeClaimTemplates"] = [{"metadata": {"name": "config"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "storageClassName": "local",
        "resources": {"requests": {"storage": "1Gi"}}}}]
    apps.create_namespaced_stateful_set(NS, sts)
    api.settle()
    claim = api.get_object("v1", "PersistentVolumeClaim", NS, "config-radarr-0")
    member = api.get_object("v1", "Pod", NS, "radarr-0")
    assert claim is not None and member is not None
    assert {"name": "config", "persistentVolumeClaim": {"claimName": "config-radarr-0"}} in (
        member["spec"]["volumes"])
    assert apps.read_namespaced_stateful_set("radarr", NS).status.ready_replicas == 1


def test_owner_reference_garbage_collection(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    owner = core.create_namespaced_config_map(NS, config_map("owner"))
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                 "uid": owner.metadata.uid}
    core.create_namespaced_config_map(NS, config_map("child", ownerReferences=[reference]))
    core.create_namespaced_secret(NS, {"metadata": {"name": "kept"}})
    core.delete_namespaced_config_map("owner", NS, propagation_policy="Foreground")
    assert api.list_objects("v1", "ConfigMap", NS) == []
    assert api.get_object("v1", "Secret", NS, "kept") is not None


def test_orphan_propagation_keeps_dependents(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    owner = core.create_namespaced_config_map(NS, config_map("owner"))
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                 "uid": owner.metadata.uid}
    core.create_namespaced_config_map(NS, config_map("child", ownerReferences=[reference]))
    core.delete_namespaced_config_map("owner", NS, propagation_policy="Orphan")
    child = api.get_object("v1", "ConfigMap", NS, "child")
    assert child is not None and child["metadata"]["ownerReferences"] == []


class CompleteJobsLater(Controller):
    """Finishes every Job from a background thread: the shape of a local Job runner."""

    name = "complete-jobs-later"

    def __init__(self) -> None:
        super().__init__()
        self.started: set[str] = set()

    def reconcile(self, store: ObjectStore) -> None:
        jobs = store.registry.by_kind("batch/v1", "Job")
        for job_object in store.list_objects(jobs)[0]:
            if job_object["metadata"]["uid"] not in self.started:
                self.started.add(job_object["metadata"]["uid"])
                self.spawn(functools.partial(self.finish, store, jobs, job_object["metadata"]))

    @staticmethod
    def finish(store: ObjectStore, jobs: ResourceType, metadata: Obj) -> None:
        status = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
        store.update(jobs, metadata["namespace"], metadata["name"],
                     lambda current: {**(current or {}), "status": status},
                     subresource="status")


def test_background_controller_reports_through_watch(api: KubeAPIServer,
                                                     k8s: ApiClient) -> None:
    api.add_controller(CompleteJobsLater())
    batch = client.BatchV1Api(k8s)
    batch.create_namespaced_job(NS, job("copy-config"))
    for event in watch.Watch().stream(batch.list_namespaced_job, NS, timeout_seconds=5,
                                      field_selector="metadata.name=copy-config"):
        conditions = event["object"].status.conditions or []
        if any(c.type == "Complete" and c.status == "True" for c in conditions):
            break
    else:
        pytest.fail("the Job never completed")
    assert batch.read_namespaced_job_status("copy-config", NS).status.succeeded == 1


class Broken(Controller):
    name = "broken"

    def reconcile(self, store: ObjectStore) -> None:
        raise ValueError("bug in a controller")


def test_settle_reports_controller_failures(api: KubeAPIServer) -> None:
    api.add_controller(Broken())
    with pytest.raises(RuntimeError, match="bug in a controller"):
        api.settle()


def test_watch_from_a_version_older_than_history_is_410() -> None:
    store = ObjectStore(ResourceRegistry(), history_limit=4)
    namespaces = store.registry.by_kind("v1", "Namespace")
    for n in range(6):
        store.create(namespaces, namespace(f"ns-{n}"))
    with pytest.raises(ApiError) as error:
        store.events_after(1)
    assert (error.value.code, error.value.reason) == (410, "Expired")
    assert [e.resource_version for e in store.events_after(4)] == [5, 6]


def test_deleting_a_namespace_deletes_its_objects(api: KubeAPIServer,
                                                  core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map(NS, config_map("doomed"))
    core.delete_namespace(NS)
    assert api.list_objects("v1", "ConfigMap") == []
    assert core.list_namespace().items == []


# --- permissions, logs, flux, kubectl ------------------------------------------------------------

def test_deny_makes_requests_forbidden(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    rule = api.deny("list", "secrets", namespace=NS)
    with pytest.raises(ApiException) as error:
        core.list_namespaced_secret(NS)
    assert (error.value.status, status_of(error)["reason"]) == (403, "Forbidden")
    assert 'cannot list resource "secrets"' in status_of(error)["message"]
    assert core.list_namespaced_config_map(NS).items == []
    api.allow(rule)
    assert core.list_namespaced_secret(NS).items == []
    assert [r.verb for r in api.requests if r.resource == "secrets"] == ["list", "list"]


def test_pod_log_read_and_follow(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    worker = pod("copy")
    worker["status"] = {"phase": "Running"}
    api.seed([worker])
    api.set_pod_log(NS, "copy", "line 1\nline 2\n")
    assert core.read_namespaced_pod_log("copy", NS, tail_lines=1) == "line 2\n"
    lines = []
    for line in watch.Watch().stream(core.read_namespaced_pod_log, "copy", NS):
        lines.append(line)
        if line == "line 2":
            api.append_pod_log(NS, "copy", "done\n")
            api.store.update(api.resource_for("v1", "Pod"), NS, "copy",
                             lambda p: {**(p or {}), "status": {"phase": "Succeeded"}},
                             subresource="status")
    assert lines == ["line 1", "line 2", "done"]


def test_pod_log_of_pending_pod_is_400(api: KubeAPIServer, core: client.CoreV1Api) -> None:
    api.seed([pod("starting")])
    with pytest.raises(ApiException) as error:
        core.read_namespaced_pod_log("starting", NS)
    assert "is waiting to start" in status_of(error)["message"]


def test_helmrelease_schema(api: KubeAPIServer, custom: client.CustomObjectsApi) -> None:
    args = ("helm.toolkit.fluxcd.io", "v2", NS, "helmreleases")
    custom.create_namespaced_custom_object(*args, helm_release("sonarr", suspend=True))
    bad = helm_release("radarr", driftDetection={"mode": "sometimes"}, suspend="yes")
    with pytest.raises(ApiException) as error:
        custom.create_namespaced_custom_object(*args, bad)
    fields = [c["field"] for c in status_of(error)["details"]["causes"]]
    assert fields == ["spec.driftDetection.mode", "spec.suspend"]
    assert api.get_object("helm.toolkit.fluxcd.io/v2", "HelmRelease", NS, "sonarr") is not None


def test_flux_sources_are_served_in_v1_and_v1beta2(custom: client.CustomObjectsApi) -> None:
    repo = {"apiVersion": "source.toolkit.fluxcd.io/v1beta2", "kind": "OCIRepository",
            "metadata": {"name": "charts"},
            "spec": {"interval": "1h", "url": "oci://ghcr.io/bjw-s/helm/app-template"}}
    custom.create_namespaced_custom_object("source.toolkit.fluxcd.io", "v1beta2", NS,
                                           "ocirepositories", repo)
    stored = custom.get_namespaced_custom_object("source.toolkit.fluxcd.io", "v1", NS,
                                                 "ocirepositories", "charts")
    assert stored["apiVersion"] == "source.toolkit.fluxcd.io/v1"


def test_kubectl(api: KubeAPIServer, tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which(
        "kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    api.seed([pod("sonarr-0"), helm_release("sonarr")])
    manifest = tmp_path / "cm.yaml"
    manifest.write_text(json.dumps(config_map("from-kubectl", {"a": "1"})))

    def run(*args: str) -> str:
        result = subprocess.run(
            [kubectl, "--kubeconfig", str(api.kubeconfig_path), "--cache-dir",
             str(tmp_path / "cache"), *args], capture_output=True, text=True, timeout=30,
            check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert run("get", "pods", "-n", NS).split("\n")[1].split()[:3] == ["sonarr-0", "0/1",
                                                                         "Pending"]
    assert "sonarr" in run("get", "helmreleases", "-n", NS)
    assert json.loads(run("get", "hr", "sonarr", "-n", NS, "-o", "json"))["kind"] == (
        "HelmRelease")
    assert "serverside-applied" in run("apply", "--server-side", "-f", str(manifest))
    stored = api.get_object("v1", "ConfigMap", NS, "from-kubectl")
    assert stored is not None and stored["metadata"]["managedFields"][0]["manager"] == "kubectl"


# --- validation library agreement ----------------------------------------------------------------

@pytest.mark.parametrize("obj", [
    pod("ok"),
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": [
        {"name": "a", "image": "b", "bogus": 1}]}},
    {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
     "spec": {"replicas": "two"}},
    job("ok"),
])
def test_cached_validation_agrees_with_kubernetes_validate(obj: Obj) -> None:
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        library_valid = True
    except kubernetes_validate.ValidationError:
        library_valid = False
    assert library_valid == (schema_causes(obj) == [])
    assert kubernetes_validate.latest_version() == KUBE_VERSION


def test_every_served_builtin_kind_has_a_schema() -> None:
    for resource in ResourceRegistry():
        obj = {"apiVersion": resource.api_version(), "kind": resource.kind,
               "metadata": {"name": "x"}}
        schema_causes(obj)  # raises LookupError without a schema


def test_concurrent_writers_get_distinct_resource_versions(api: KubeAPIServer,
                                                           k8s: ApiClient) -> None:
    core = client.CoreV1Api(k8s)
    versions: list[str] = []

    def create(n: int) -> None:
        versions.append(core.create_namespaced_config_map(
            NS, config_map(f"cm-{n}")).metadata.resource_version)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(versions)) == 8
