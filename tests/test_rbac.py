"""docs/rbac.yaml on a real kube-apiserver: what the ServiceAccount may do, and what it may not.

Every cluster test runs the CLI with this ServiceAccount's token (tests/controlplane/cluster.py),
so a permission the docs forget fails those tests; this file checks the other side: the account
can never delete a user's data objects nor read Secrets beyond its own namespace.
"""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.controlplane.cluster import Cluster, rbac_objects
from tests.helpers import validate_manifest


def allowed(
    cluster: Cluster,
    verb: str,
    resource: str,
    group: str = "",
    namespace: str | None = None,
    subresource: str = "",
) -> bool:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": cluster.user,
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{cluster.namespace}",
                "system:authenticated",
            ],
            "resourceAttributes": {
                "verb": verb,
                "resource": resource,
                "group": group,
                "namespace": namespace or "",
                "subresource": subresource,
            },
        },
    }
    answer = client.AuthorizationV1Api(cluster.admin).create_subject_access_review(review)
    return bool(answer.status.allowed)


def test_every_object_of_the_doc_validates_strictly() -> None:
    for document in rbac_objects("tenant-media"):
        validate_manifest(document)


@pytest.mark.parametrize(
    ("verb", "resource", "group", "subresource"),
    [
        ("delete", "persistentvolumeclaims", "", ""),
        ("delete", "persistentvolumes", "", ""),
        ("delete", "deployments", "apps", ""),
        ("delete", "statefulsets", "apps", ""),
        ("delete", "helmreleases", "helm.toolkit.fluxcd.io", ""),
        ("delete", "configmaps", "", ""),
        ("delete", "cronjobs", "batch", ""),  # the nightly backups stay scheduled
        ("list", "secrets", "", ""),
        ("update", "secrets", "", ""),
        ("create", "pods", "", ""),
        ("create", "pods", "", "exec"),
        ("create", "rolebindings", "rbac.authorization.k8s.io", ""),
    ],
)
def test_the_account_cannot_delete_data_or_reach_beyond_what_it_needs(
    cluster: Cluster, verb: str, resource: str, group: str, subresource: str
) -> None:
    assert not allowed(cluster, verb, resource, group, cluster.namespace, subresource)


def test_secrets_of_other_namespaces_are_out_of_reach(cluster: Cluster) -> None:
    assert allowed(cluster, "get", "secrets", namespace=cluster.namespace)
    assert not allowed(cluster, "get", "secrets", namespace="kube-system")
    assert not allowed(cluster, "get", "secrets", namespace="flux-system")
    assert not allowed(cluster, "create", "jobs", "batch", namespace="kube-system")


def test_what_the_commands_need_is_granted(cluster: Cluster) -> None:
    ns = cluster.namespace
    for verb, resource, group, subresource in [
        ("create", "jobs", "batch", ""),
        ("patch", "cronjobs", "batch", ""),
        ("create", "cronjobs", "batch", ""),  # a server-side apply that creates needs it too
        ("get", "pods", "", "log"),
        ("patch", "deployments", "apps", "scale"),
        ("patch", "helmreleases", "helm.toolkit.fluxcd.io", ""),
        ("update", "leases", "coordination.k8s.io", ""),
    ]:
        assert allowed(cluster, verb, resource, group, ns, subresource), (verb, resource)
