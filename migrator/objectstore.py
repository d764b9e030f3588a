"""The one place that talks S3 (boto3): locations, clients, probes."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from migrator.errors import InvalidTargetError, StorageError

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class S3Location:
    """``s3://BUCKET[/PREFIX]``: a bucket and a key prefix without leading/trailing slashes."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """Parse ``s3://BUCKET[/PREFIX]``; raises InvalidTargetError on anything else."""
        if not url.startswith("s3://"):
            raise InvalidTargetError(f"target {url!r} must look like s3://BUCKET[/PREFIX]")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not _BUCKET_RE.match(bucket):
            raise InvalidTargetError(
                f"target {url!r}: {bucket!r} is not a valid bucket name "
                "(3-63 lowercase letters, digits, dots and hyphens)"
            )
        return cls(bucket=bucket, prefix=prefix.strip("/"))

    def key(self, *parts: str) -> str:
        """Join the prefix and ``parts`` into an object key (or key prefix)."""
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


@dataclass(frozen=True)
class S3Settings:
    """How to reach an S3 endpoint. Secret values live here only in memory, never in a plan."""

    endpoint: str | None
    access_key: str | None = None
    secret_key: str | None = None
    region: str = "us-east-1"
    ca_bundle: str | None = None
    verify_tls: bool = True

    @classmethod
    def from_environment(cls, endpoint: str | None) -> S3Settings:
        """Settings from the standard AWS_* variables (AWS_ENDPOINT_URL as a fallback endpoint)."""
        return cls(
            endpoint=endpoint
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL"),
            access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            region=os.environ.get("AWS_DEFAULT_REGION")
            or os.environ.get("AWS_REGION")
            or "us-east-1",
            ca_bundle=os.environ.get("AWS_CA_BUNDLE"),
        )

    def __repr__(self) -> str:  # never print secrets, even by accident
        return f"S3Settings(endpoint={self.endpoint!r}, region={self.region!r})"


def make_client(settings: S3Settings, max_connections: int = 32, quick: bool = False) -> Any:
    """A boto3 S3 client for ``settings`` with path-style addressing (SeaweedFS needs it).

    ``quick`` makes a probing client: one attempt, short timeouts. Without credentials the
    client sends unsigned requests.
    """
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    signed = bool(settings.access_key and settings.secret_key)
    options: dict[str, Any] = {
        "s3": {"addressing_style": "path"},
        "max_pool_connections": max_connections,
        "retries": {"max_attempts": 1 if quick else 5, "mode": "standard"},
        "connect_timeout": 3 if quick else 10,
        "read_timeout": 5 if quick else 60,
    }
    if not signed:
        options["signature_version"] = UNSIGNED
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.endpoint,
        aws_access_key_id=settings.access_key if signed else None,
        aws_secret_access_key=settings.secret_key if signed else None,
        region_name=settings.region,
        verify=settings.ca_bundle or settings.verify_tls,
        config=Config(**options),
    )


def probe_bucket(settings: S3Settings, bucket: str) -> str:
    """HEAD the bucket and say what was found, in words for the plan; never raises.

    Without credentials the request is unsigned: a 403 then only proves the endpoint answers.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    signed = bool(settings.access_key and settings.secret_key)
    try:
        make_client(settings, quick=True).head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("403", "AccessDenied", "Forbidden") and not signed:
            return "reachable; bucket not checked (no credentials here)"
        if code in ("404", "NoSuchBucket", "NotFound"):
            return f"bucket {bucket} does not exist"
        if code in (
            "403",
            "AccessDenied",
            "Forbidden",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
        ):
            return f"access to bucket {bucket} denied: check the credentials"
        return f"bucket {bucket}: error {code}"
    except (BotoCoreError, OSError, ValueError) as exc:
        return f"unreachable from here ({type(exc).__name__})"
    return "bucket exists"


def describe_client_error(exc: Exception, what: str) -> StorageError:
    """Turn a boto3/botocore exception into a one-line StorageError that says what to do."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return StorageError(
            f"{what}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    if isinstance(exc, EndpointConnectionError):
        return StorageError(f"{what}: S3 endpoint unreachable ({exc})")
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StorageError(f"{what}: access denied ({code}); check the S3 credentials")
        if code in ("404", "NoSuchBucket"):
            return StorageError(f"{what}: bucket not found; create it or fix the target")
        if code in ("QuotaExceeded", "EntityTooLarge", "InsufficientStorage", "507"):
            return StorageError(
                f"{what}: the bucket is full ({code}); free space or raise its quota"
            )
        return StorageError(f"{what}: {code} {error.get('Message', '')}".strip())
    return StorageError(f"{what}: {exc}")
