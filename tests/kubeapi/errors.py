"""API errors rendered as real ``meta/v1 Status`` objects, with the apiserver's messages."""

from __future__ import annotations

from typing import Any

from .resources import ResourceType


class ApiError(Exception):
    """An error the server answers with a ``Status`` object and HTTP ``code``."""

    def __init__(self, code: int, reason: str, message: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    def status(self) -> dict[str, Any]:
        """The ``Status`` body for this error."""
        body: dict[str, Any] = {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _details(resource: ResourceType, name: str, **extra: Any) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": resource.plural, **extra}
    if resource.group:
        details["group"] = resource.group
    return details


def not_found(resource: ResourceType, name: str) -> ApiError:
    """404 ``<plural.group> "<name>" not found``."""
    return ApiError(404, "NotFound", f'{resource.qualified_name} "{name}" not found',
                    _details(resource, name))


def already_exists(resource: ResourceType, name: str) -> ApiError:
    """409 AlreadyExists on create."""
    return ApiError(409, "AlreadyExists", f'{resource.qualified_name} "{name}" already exists',
                    _details(resource, name))


def conflict(resource: ResourceType, name: str, why: str | None = None) -> ApiError:
    """409 Conflict: stale resourceVersion (or a failed precondition, given as ``why``)."""
    why = why or ("the object has been modified; please apply your changes to the latest "
                  "version and try again")
    message = f'Operation cannot be fulfilled on {resource.qualified_name} "{name}": {why}'
    return ApiError(409, "Conflict", message, _details(resource, name))


def invalid(resource: ResourceType, name: str, causes: list[dict[str, str]]) -> ApiError:
    """422 Invalid with one cause per problem: ``{"reason", "message", "field"}``."""
    rendered = [f"{c['field']}: {c['message']}" if c.get("field") else c["message"]
                for c in causes]
    joined = rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"
    message = f'{resource.qualified_kind} "{name}" is invalid: {joined}'
    details = _details(resource, name, causes=causes)
    details["kind"] = resource.kind
    return ApiError(422, "Invalid", message, details)


def forbidden(user: str, verb: str, resource: ResourceType, subresource: str | None,
              namespace: str | None, name: str | None) -> ApiError:
    """403 in the words RBAC uses."""
    full = f"{resource.plural}/{subresource}" if subresource else resource.plural
    subject = f'{resource.qualified_name} "{name}"' if name else resource.qualified_name
    scope = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    message = (f'{subject} is forbidden: User "{user}" cannot {verb} resource "{full}" '
               f'in API group "{resource.group}"{scope}')
    return ApiError(403, "Forbidden", message, _details(resource, name or ""))


def bad_request(message: str) -> ApiError:
    """400 BadRequest."""
    return ApiError(400, "BadRequest", message)


def method_not_allowed(method: str) -> ApiError:
    """405 MethodNotAllowed."""
    return ApiError(405, "MethodNotAllowed",
                    f"the server does not allow this method on the requested resource ({method})")


def unsupported_media_type(content_type: str, accepted: list[str]) -> ApiError:
    """415 for a patch type the resource does not support (strategic merge on CRs)."""
    message = (f"the body of the request was in an unknown format - accepted media types "
               f"include: {', '.join(accepted)}")
    return ApiError(415, "UnsupportedMediaType", message, {"causes": [
        {"reason": "UnexpectedServerResponse", "message": f"unsupported: {content_type}"}]})


def route_not_found() -> ApiError:
    """404 for a path that names no resource."""
    return ApiError(404, "NotFound", "the server could not find the requested resource")


def gone(message: str) -> ApiError:
    """410 Expired: a watch asked for a resourceVersion older than the kept history."""
    return ApiError(410, "Expired", message)


def namespace_not_found(namespace: str) -> ApiError:
    """404 ``namespaces "<ns>" not found`` when creating into a missing namespace."""
    return ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                    {"name": namespace, "kind": "namespaces"})
