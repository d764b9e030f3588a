"""Every error a user can meet, and the one place that maps outcomes to exit codes.

The contract for the whole tool: 0 success; 1 verification found differences; 2 bad input (usage,
unknown namespace / PVC / role name / Secret, malformed target URL, invalid plan file); 3 an
operation failed (cluster or storage unreachable, permission denied).
"""

from __future__ import annotations

import enum


class Outcome(enum.IntEnum):
    """How a command ended; its value is the process exit code."""

    SUCCESS = 0
    DIFFERENCES = 1
    BAD_INPUT = 2
    FAILED = 3
    INTERRUPTED = 130  # the shell's code for Ctrl-C; what a stopped pod exits with


class MigratorError(Exception):
    """Base of all domain errors: a one-line message that says what to do."""

    outcome = Outcome.FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInputError(MigratorError):
    """The user asked for something that cannot be: fix the command line or the file."""

    outcome = Outcome.BAD_INPUT


class UnknownNamespaceError(BadInputError):
    def __init__(self, namespace: str) -> None:
        super().__init__(
            f"namespace {namespace!r} does not exist; check the name with 'kubectl get namespaces'"
        )


class UnknownVolumeError(BadInputError):
    def __init__(self, name: str, known: list[str]) -> None:
        hint = ", ".join(known) if known else "none"
        super().__init__(f"no volume named {name!r}; known volumes: {hint}")


class UnknownSecretError(BadInputError):
    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(
            f"Secret {name!r} not found in namespace {namespace!r}; "
            f"list them with 'kubectl -n {namespace} get secrets'"
        )


class InvalidTargetError(BadInputError):
    pass


class InvalidPlanError(BadInputError):
    """A plan file that does not match the schema; carries every problem found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        first = problems[0] if problems else "invalid"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{source} is not a valid plan: {first}{more}")


class OperationFailedError(MigratorError):
    """Something outside the user's input failed: cluster, storage, permissions."""

    outcome = Outcome.FAILED


class ClusterUnreachableError(OperationFailedError):
    pass


class ConflictError(OperationFailedError):
    """The object changed since it was read (HTTP 409): someone else wrote it in between."""


class LeaseLostError(OperationFailedError):
    """Another run took this run's Lease (or it could not be renewed in time): stop writing."""


class StorageError(OperationFailedError):
    pass


class InterruptedRunError(MigratorError):
    """Stopped by SIGINT/SIGTERM after saving progress: re-running resumes."""

    outcome = Outcome.INTERRUPTED


class VerificationFailedError(MigratorError):
    outcome = Outcome.DIFFERENCES
