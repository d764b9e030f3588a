"""A Kubernetes API test server: real HTTP, official schemas, pluggable controllers.

Tests only; the product never knows it exists. The product talks to it through a kubeconfig,
exactly as it would to a cluster::

    @pytest.fixture
    def kube_api(tmp_path):
        with kube_api_server(tmp_path) as api:      # free port on 127.0.0.1
            api.seed([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "media"}}])
            yield api                                # api.kubeconfig_path, api.context

Where it is deliberately different from a real apiserver:

- Unknown fields are 422 Invalid (the apiserver's default is to drop them with a warning).
- Deletion is immediate (no deletionTimestamp, finalizers or grace periods) and garbage
  collection of dependents is synchronous.
- Only Deployment, ReplicaSet and StatefulSet have controllers by default: their pods are Running
  and Ready at once; other pods stay Pending, PVCs stay Pending (no binder), DaemonSets do
  nothing. Jobs run for real once a test adds ``JobController`` (``jobs.py``): it executes each
  pod's command on this host with PVCs mapped to directories.
- Server-side apply records Apply managers only; conflicts are detected between appliers.
- No RBAC or admission webhooks: ``deny()`` rules and Pod Security admission (a namespace's
  ``pod-security.kubernetes.io/enforce`` label, checked by ``pod_security.py``) are the only
  ways to get a 403.
"""

from .controllers import (
    Controller,
    ControllerManager,
    DeploymentController,
    ReplicaSetController,
    StatefulSetController,
    default_controllers,
)
from .errors import ApiError
from .jobs import JobController
from .resources import ResourceType
from .server import DenyRule, KubeAPIServer, RequestRecord, kube_api_server
from .store import DeleteOptions, ObjectStore, WatchEvent
from .validation import KUBE_VERSION

__all__ = [
    "KUBE_VERSION",
    "ApiError",
    "Controller",
    "ControllerManager",
    "DeleteOptions",
    "DenyRule",
    "DeploymentController",
    "JobController",
    "KubeAPIServer",
    "ObjectStore",
    "ReplicaSetController",
    "RequestRecord",
    "ResourceType",
    "StatefulSetController",
    "WatchEvent",
    "default_controllers",
    "kube_api_server",
]
