"""The one place that talks to the Kubernetes API (official client).

Everything it returns is a plain dict in the API's own camelCase shape, so the rest of migrator
works on data, not on client models.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import parse_qs, urlsplit

from migrator.errors import (
    BadInputError,
    ClusterUnreachableError,
    ConflictError,
    OperationFailedError,
    UnknownNamespaceError,
    UnknownSecretError,
)

T = TypeVar("T")

FIELD_MANAGER = "migrator"  # server-side apply's field manager for everything migrator writes
FLUX_HELM_GROUP = "helm.toolkit.fluxcd.io"
FLUX_HELM_VERSION = "v2"
NON_SECRET_KEYS = ("endpoint", "bucketName", "region")
# Every request is bounded: an API server that accepts and never answers (or a half-open
# connection after a laptop slept) fails the command instead of hanging it. Seconds.
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 20
# A watch or a followed log may be silent for as long as it was asked to last: its read timeout
# is that (timeoutSeconds) plus this grace; with no timeoutSeconds only connecting is bounded.
STREAM_GRACE = 30


def request_timeout(url: str) -> tuple[float, float | None]:
    """The (connect, read) timeout of a request to ``url``, a path with its query string."""
    query = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
    if query.get("watch") in ("true", "1") or query.get("follow") in ("true", "1"):
        seconds = query.get("timeoutSeconds")
        return CONNECT_TIMEOUT, float(seconds) + STREAM_GRACE if seconds else None
    return CONNECT_TIMEOUT, READ_TIMEOUT


def _api_client(configuration: Any) -> Any:
    """An ApiClient that gives every request without an explicit timeout the default one, and
    does not repeat a request whose answer timed out (that would multiply the wait)."""
    import urllib3
    from kubernetes import client
    from urllib3.exceptions import MaxRetryError, ReadTimeoutError

    class _Retry(urllib3.Retry):
        def increment(
            self,
            method: str | None = None,
            url: str | None = None,
            response: Any = None,
            error: Exception | None = None,
            _pool: Any = None,
            _stacktrace: Any = None,
        ) -> Self:
            if isinstance(error, ReadTimeoutError):  # repeating it multiplies the wait
                raise error
            # A certificate that is not trusted stays so: give up as when the retries are used
            # up (urllib3 counts it an "other" error and tried it 4 times).
            if error is not None and _untrusted_certificate(error):
                raise MaxRetryError(_pool, url or "", error) from error
            return super().increment(method, url, response, error, _pool, _stacktrace)

    class _BoundedApiClient(client.ApiClient):  # type: ignore[misc]
        def call_api(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            if not kwargs.get("_request_timeout"):
                kwargs["_request_timeout"] = request_timeout(url)
            return super().call_api(method, url, *args, **kwargs)

    if configuration.retries is None:
        configuration.retries = _Retry(total=3, connect=1)
    return _BoundedApiClient(configuration=configuration)


class KubeClient:
    """A thin, error-translating wrapper over the official client for one kubeconfig/context."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.storage = client.StorageV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    @classmethod
    def from_kubeconfig(
        cls, kubeconfig: str | None = None, context: str | None = None
    ) -> KubeClient:
        """Load a kubeconfig (default: $KUBECONFIG or ~/.kube/config, or in-cluster config).

        Raises BadInputError when the file or context does not exist.
        """
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        if kubeconfig and not Path(kubeconfig).exists():
            raise BadInputError(f"kubeconfig {kubeconfig!r} does not exist")
        configuration = client.Configuration()
        try:
            config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
        except ConfigException as exc:
            if kubeconfig or context:
                raise BadInputError(f"cannot load kubeconfig: {exc}") from None
            configuration = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=configuration)
            except ConfigException:
                raise BadInputError(
                    "no Kubernetes configuration found; pass --kubeconfig or set KUBECONFIG"
                ) from None
        return cls(_api_client(configuration))

    def _dict(self, obj: Any) -> Any:
        return self.api_client.sanitize_for_serialization(obj)

    def call(self, what: str, fn: Callable[[], T], missing_ok: bool = False) -> T | None:
        """Run one API call, turning client errors into migrator errors that say what to do.

        With ``missing_ok`` a 404 returns None instead of raising.
        """
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError as Urllib3Error

        try:
            return fn()
        except ApiException as exc:
            if missing_ok and exc.status == 404:
                return None
            raise self._refused(what, exc) from None
        except (Urllib3Error, OSError) as exc:
            raise ClusterUnreachableError(f"{what}: {self._unreachable(exc)}") from None

    def send(
        self,
        what: str,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        missing_ok: bool = False,
    ) -> dict[str, Any] | None:
        """One request whose JSON body goes out exactly as given; its answer as a dict.

        The typed client turns a body into its model first, and the model writes a MicroTime
        (a Lease's ``renewTime``) with ``isoformat()``: without the fraction when it is zero,
        which the API server refuses (400). ``path`` is the API path, such as
        ``/apis/coordination.k8s.io/v1/namespaces/NS/leases/NAME``. Errors as :meth:`call`;
        with ``missing_ok`` a 404 returns None.
        """
        from kubernetes.client.exceptions import ApiException

        client = self.api_client
        headers = {"Accept": "application/json", "Content-Type": "application/json"}

        def request() -> dict[str, Any]:
            serialized = client.param_serialize(
                method=method,
                resource_path=path,
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            answer = client.call_api(*serialized)
            answer.read()
            text = (answer.data or b"").decode("utf-8", "replace")
            if not 200 <= answer.status <= 299:
                raise ApiException.from_response(http_resp=answer, body=text, data=None)
            loaded: dict[str, Any] = json.loads(text) if text.strip() else {}
            return loaded

        return self.call(what, request, missing_ok=missing_ok)

    def wait_for(
        self,
        what: str,
        read: Callable[[], dict[str, Any] | None],
        done: Callable[[dict[str, Any]], bool],
        deadline: float,
        watch: Callable[..., Any],
        *args: Any,
        wake: Callable[[str, dict[str, Any]], bool] | None = None,
        slice_seconds: int = 60,
        **kwargs: Any,
    ) -> dict[str, Any] | None:
        """``what`` (say, "watching Job x") until ``done(it)``: read an object (or a list) until
        ``done(it)``, it is gone (None) or ``deadline``
        (``time.monotonic()``) has passed; return what was read last.

        Between two reads it watches ``watch(*args, **kwargs)`` from the read's resourceVersion
        for at most ``slice_seconds``, bounded on this side (:func:`bounded_watch`); an event for
        which ``wake(type, object)`` holds (by default: ``done(object)``) ends the slice at once.
        No sleeping: an object that does not change costs one watch request per slice.
        """
        woken = wake or (lambda _kind, obj: done(obj))
        while True:
            current = read()
            remaining = deadline - time.monotonic()
            if current is None or done(current) or remaining <= 0:
                return current

            def watch_slice(
                version: str = current["metadata"]["resourceVersion"],
                seconds: int = max(1, int(min(remaining, slice_seconds))),
            ) -> None:
                bounded_watch(
                    watch,
                    seconds,
                    lambda event: woken(str(event.get("type")), self._dict(event["object"])),
                    *args,
                    resource_version=version,
                    **kwargs,
                )

            self.call(what, watch_slice)

    def _refused(self, what: str, exc: Any) -> OperationFailedError:
        """The error for an answer other than 2xx, with the API server's own words."""
        said = _status_message(exc.body)
        if exc.status == 401:
            server = self.api_client.configuration.host
            return OperationFailedError(
                f"{what}: the Kubernetes API server {server} did not accept the credentials "
                "(401 Unauthorized); the token may have expired or been revoked: get a new one "
                "(kubectl -n NAMESPACE create token SERVICEACCOUNT) and put it in the kubeconfig"
            )
        if exc.status == 403:
            return OperationFailedError(
                f"{what}: permission denied ({said or '403 Forbidden'}); grant it to the "
                "kubeconfig's user with RBAC (docs/rbac.yaml lists what migrator needs)"
            )
        if exc.status == 409:
            return ConflictError(f"{what}: {exc.reason}; it changed since it was read")
        detail = f": {said}" if said else ""
        return OperationFailedError(f"{what}: API error {exc.status} {exc.reason}{detail}")

    def _unreachable(self, exc: BaseException) -> str:
        """Why the API server could not be used, naming it (never its credentials)."""
        from urllib3.exceptions import (
            ConnectTimeoutError,
            MaxRetryError,
            NewConnectionError,
            ReadTimeoutError,
        )

        server = self.api_client.configuration.host
        reason = exc.reason if isinstance(exc, MaxRetryError) and exc.reason else exc
        hint = "check --kubeconfig/--context and the network"
        if _untrusted_certificate(reason):
            return (
                f"the TLS certificate of the Kubernetes API server {server} is not trusted "
                f"({_certificate_problem(reason)}); give its CA in the kubeconfig "
                "(certificate-authority-data, or certificate-authority: FILE)"
            )
        if isinstance(reason, ReadTimeoutError):
            return (
                f"the Kubernetes API server {server} did not answer within {READ_TIMEOUT}s; {hint}"
            )
        # urllib3 makes a refused connection a kind of connect timeout; it is not one.
        if isinstance(reason, ConnectTimeoutError) and not isinstance(reason, NewConnectionError):
            return (
                f"could not connect to the Kubernetes API server {server} "
                f"within {CONNECT_TIMEOUT}s; {hint}"
            )
        return (
            f"the Kubernetes API server {server} is unreachable ({type(reason).__name__}); {hint}"
        )

    def _get_or_none(self, what: str, fn: Callable[[], Any]) -> Any:
        found = self.call(what, fn, missing_ok=True)
        return None if found is None else self._dict(found)

    def require_namespace(self, namespace: str) -> dict[str, Any]:
        """Return the Namespace object; raises UnknownNamespaceError when it does not exist.

        Listing in a missing namespace returns an empty list, so the check must be explicit.
        """
        found = self._get_or_none(
            f"reading namespace {namespace}", lambda: self.core.read_namespace(namespace)
        )
        if found is None:
            raise UnknownNamespaceError(namespace)
        return dict(found)

    def _items(self, what: str, fn: Callable[[], Any]) -> list[dict[str, Any]]:
        result = self.call(what, fn)
        items: list[dict[str, Any]] = (self._dict(result) or {}).get("items") or []
        return items

    def list_pvcs(self, namespace: str) -> list[dict[str, Any]]:
        return self._items(
            "listing PVCs", lambda: self.core.list_namespaced_persistent_volume_claim(namespace)
        )

    def list_pvs(self) -> list[dict[str, Any]]:
        return self._items("listing PVs", lambda: self.core.list_persistent_volume())

    def list_storage_classes(self) -> list[dict[str, Any]]:
        return self._items("listing StorageClasses", lambda: self.storage.list_storage_class())

    def list_csi_drivers(self) -> list[dict[str, Any]]:
        return self._items("listing CSIDrivers", lambda: self.storage.list_csi_driver())

    def list_nodes(self) -> list[dict[str, Any]]:
        return self._items("listing nodes", lambda: self.core.list_node())

    def list_pods(self, namespace: str) -> list[dict[str, Any]]:
        return self._items("listing pods", lambda: self.core.list_namespaced_pod(namespace))

    def list_deployments(self, namespace: str) -> list[dict[str, Any]]:
        return self._items(
            "listing Deployments", lambda: self.apps.list_namespaced_deployment(namespace)
        )

    def list_statefulsets(self, namespace: str) -> list[dict[str, Any]]:
        return self._items(
            "listing StatefulSets", lambda: self.apps.list_namespaced_stateful_set(namespace)
        )

    def list_helmreleases(self, namespace: str) -> list[dict[str, Any]]:
        """Flux HelmReleases; an empty list when the CRD is not installed."""
        result = self.call(
            "listing HelmReleases",
            lambda: self.custom.list_namespaced_custom_object(
                FLUX_HELM_GROUP, FLUX_HELM_VERSION, namespace, "helmreleases"
            ),
            missing_ok=True,
        )
        items: list[dict[str, Any]] = (result or {}).get("items") or []
        return items

    def read_config_map_key(self, namespace: str, name: str, key: str) -> str:
        """The text of one key of a ConfigMap; BadInputError naming what is missing."""
        found = self._get_or_none(
            f"reading ConfigMap {name}",
            lambda: self.core.read_namespaced_config_map(name, namespace),
        )
        if found is None:
            raise BadInputError(f"ConfigMap {name!r} not found in namespace {namespace}")
        data = found.get("data") or {}
        if key not in data:
            keys = ", ".join(sorted(data)) or "none"
            raise BadInputError(f"ConfigMap {name!r} has no key {key!r} (keys: {keys})")
        return str(data[key])

    def read_secret_public_fields(self, namespace: str, name: str) -> dict[str, str]:
        """Read only the non-secret fields of an S3 credentials Secret.

        Understands the Cozystack COSI form (``accessKey``/``secretKey``/``endpoint``/
        ``bucketName`` keys), with the COSI ``BucketInfo`` JSON beside them. Secret values are
        never returned. Raises UnknownSecretError when the Secret does not exist, and
        BadInputError when it lacks ``accessKey``/``secretKey`` (the Jobs read them by
        ``secretKeyRef``): a raw COSI Secret (only ``BucketInfo``) names the ``-credentials``
        Secret that Cozystack's bucket app makes from it.
        """
        secret = self._get_or_none(
            f"reading Secret {name}", lambda: self.core.read_namespaced_secret(name, namespace)
        )
        if secret is None:
            raise UnknownSecretError(namespace, name)
        data: dict[str, str] = secret.get("data") or {}
        fields = {
            key: base64.b64decode(data[key]).decode().strip()
            for key in NON_SECRET_KEYS
            if key in data
        }
        if "accessKey" not in data or "secretKey" not in data:
            raise BadInputError(_missing_keys_message(namespace, name, sorted(data)))
        if "BucketInfo" in data:
            fields.update(_bucket_info_public_fields(base64.b64decode(data["BucketInfo"])))
        return fields


def _missing_keys_message(namespace: str, name: str, keys: list[str]) -> str:
    if keys == ["BucketInfo"]:
        return (
            f"Secret {name!r} holds only COSI BucketInfo JSON, which Jobs cannot read key by "
            f"key; use {name + '-credentials'!r} (accessKey, secretKey, endpoint, bucketName), "
            "which Cozystack's bucket app makes once the Bucket lists the user under 'users:' "
            f"(kubectl -n {namespace} get secrets)"
        )
    return f"Secret {name!r} has no accessKey/secretKey (keys: {', '.join(keys) or 'none'})"


def _bucket_info_public_fields(raw: bytes) -> dict[str, str]:
    try:
        info = json.loads(raw)
    except ValueError:
        return {}
    spec = info.get("spec") or {}
    s3 = spec.get("secretS3") or {}
    fields = {"bucketName": spec.get("bucketName"), "endpoint": s3.get("endpoint")}
    if s3.get("region"):
        fields["region"] = s3["region"]
    return {k: str(v) for k, v in fields.items() if v}


def _status_message(body: Any) -> str:
    """The ``message`` of the Status an API server answers an error with, on one line; empty
    when the body is not one."""
    try:
        status = json.loads(body) if isinstance(body, (str, bytes)) else None
    except ValueError:
        return ""
    message = status.get("message") if isinstance(status, dict) else None
    return " ".join(str(message).split()) if message else ""


def _causes(error: BaseException) -> list[BaseException]:
    """``error`` and what it wraps (urllib3 nests the ssl error in its own, in args)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        nested = current.args[0] if current.args else None
        if isinstance(nested, BaseException):
            current = nested
        else:
            current = current.__cause__ or current.__context__
    return chain


def _untrusted_certificate(error: BaseException) -> bool:
    import ssl

    return any(
        isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(cause)
        for cause in _causes(error)
    )


def _certificate_problem(error: BaseException) -> str:
    """What the TLS library said about the certificate, e.g. 'self-signed certificate'."""
    import ssl

    for cause in _causes(error):
        if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_message:
            return str(cause.verify_message)
    return "certificate verify failed"


def bounded_watch(list_function: Any, seconds: int, stop: Any, *args: Any, **kwargs: Any) -> None:
    """Watch ``list_function(*args, **kwargs)`` for ``seconds``, or until ``stop(event)``.

    The waiting is bounded here, not by the connection: a silent half-open one (which urllib3
    would also retry on its read timeouts, 4 times over) is abandoned after ``seconds`` + 5 s.
    A dropped or expired watch (410 Gone) just ends early: the caller reads the state again. An
    API refusal (401, 403, 404...) is raised here, so that the caller does not re-read in a loop.
    """
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    ended = threading.Event()
    refused: list[BaseException] = []

    def consume() -> None:
        try:
            stream = watch.Watch().stream(
                list_function,
                *args,
                timeout_seconds=seconds,
                _request_timeout=(10, seconds + 10),
                **kwargs,
            )
            for event in stream:
                if stop(event):
                    break
        except ApiException as error:
            if error.status != 410:
                refused.append(error)
        except Exception:  # a dropped or stalled watch: the caller reads the state again
            pass
        finally:
            ended.set()

    threading.Thread(target=consume, daemon=True, name="bounded-watch").start()
    ended.wait(seconds + 5)
    if refused:
        raise refused[0]
