"""A Kubernetes API test server: real HTTP, official schemas, pluggable controllers.

Tests only; the product never knows it exists. See ``KubeAPIServer`` and ``kube_api_server``.
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
