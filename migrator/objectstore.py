"""The one place that talks S3 (boto3): locations, clients, probes, streaming uploads/downloads."""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import io
import os
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from migrator.errors import BadInputError, InvalidTargetError, StorageError

T = TypeVar("T")

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def prefix_problem(prefix: str) -> str | None:
    """Why a key prefix cannot be used, or None. S3 keeps ``a//b`` and ``..`` literally, but
    rclone, SeaweedFS's filer and a CSI mount read them as paths: the copy would land elsewhere
    than where verify and the swap look."""
    if not prefix:
        return None
    for segment in prefix.split("/"):
        if not segment:
            return f"prefix {prefix!r} has an empty path segment ('//')"
        if segment in (".", ".."):
            return f"prefix {prefix!r}: {segment!r} is not allowed as a path segment"
    return None


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
        prefix = prefix.strip("/")
        problem = prefix_problem(prefix)
        if problem:
            raise InvalidTargetError(f"target {url!r}: {problem}")
        return cls(bucket=bucket, prefix=prefix)

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
    # Temporary credentials (STS, IRSA): sent as X-Amz-Security-Token with every signed request.
    session_token: str | None = None

    @classmethod
    def from_environment(cls, endpoint: str | None, prefix: str = "") -> S3Settings:
        """Settings from the standard AWS_* variables (AWS_ENDPOINT_URL as a fallback endpoint),
        each read as ``prefix + name`` (``MIGRATOR_BACKUP_``: the off-site backups' S3)."""

        def env(name: str) -> str | None:
            return os.environ.get(prefix + name)

        return cls(
            endpoint=endpoint or env("AWS_ENDPOINT_URL_S3") or env("AWS_ENDPOINT_URL"),
            access_key=env("AWS_ACCESS_KEY_ID"),
            secret_key=env("AWS_SECRET_ACCESS_KEY"),
            region=env("AWS_DEFAULT_REGION") or env("AWS_REGION") or "us-east-1",
            ca_bundle=env("AWS_CA_BUNDLE"),
            session_token=env("AWS_SESSION_TOKEN"),
        )

    def __repr__(self) -> str:  # never print secrets, even by accident
        return f"S3Settings(endpoint={self.endpoint!r}, region={self.region!r})"


BACKUP_ENV_PREFIX = "MIGRATOR_BACKUP_"  # MIGRATOR_BACKUP_AWS_*: keys of off-site backups


def make_client(
    settings: S3Settings,
    max_connections: int = 32,
    quick: bool = False,
    flexible_checksums: bool = True,
) -> Any:
    """A boto3 S3 client for ``settings`` with path-style addressing (SeaweedFS needs it).

    ``quick`` makes a probing client: one attempt, short timeouts. Without credentials the
    client sends unsigned requests. ``flexible_checksums=False`` stops botocore from adding a
    CRC32 to every upload and checking one on downloads, for callers that send Content-MD5 and
    verify content themselves (backups: about a fifth more upload throughput to SeaweedFS).
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
    if not flexible_checksums:
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.endpoint,
        aws_access_key_id=settings.access_key if signed else None,
        aws_secret_access_key=settings.secret_key if signed else None,
        aws_session_token=settings.session_token if signed else None,
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


# SeaweedFS answers a write it cannot place with a bare 500 InternalError (its log says why).
REFUSED_HINT = (
    "SeaweedFS answers this when the bucket is over its quota or its volumes are full or "
    "read-only; its log says which"
)


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
        if code == "InternalError" and what.startswith(("uploading", "storing", "writing")):
            return StorageError(f"{what}: HTTP 500 InternalError ({REFUSED_HINT})")
        return StorageError(f"{what}: {code} {error.get('Message', '')}".strip())
    return StorageError(f"{what}: {exc}")


# --- streaming uploads and resumable downloads (backups) --------------------------------------

MIN_PART_SIZE = 5 * 2**20  # S3 and SeaweedFS refuse smaller parts (except the last one)
_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART_ETAG = re.compile(r"^[0-9a-f]{32}-[0-9]+$")


def s3_call(what: str, fn: Callable[[], T]) -> T:
    """Run one S3 call, turning botocore errors into a one-line StorageError about ``what``."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn()
    except (BotoCoreError, ClientError) as exc:
        raise describe_client_error(exc, what) from None


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError (``""`` for anything else)."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


@dataclass(frozen=True)
class UploadResult:
    """What S3 confirmed about an uploaded object: its size and ETag, and the parts sent."""

    key: str
    size: int
    etag: str
    parts: int


class MultipartWriter:
    """A write-only stream into one S3 object, uploaded in parts while the writer keeps writing.

    Memory stays bounded: at most ``in_flight`` parts upload while one fills. Each part carries
    its Content-MD5, so S3 refuses a part that arrived damaged, and the ETag it returns is
    compared with that MD5. :meth:`close` completes the upload and checks with a HEAD that the
    object has exactly the bytes written and the multipart ETag of those parts (MD5 of the part
    MD5s). A stream smaller than one part becomes a single PUT. Any failure aborts the upload,
    so no partial object is left behind. Raises StorageError (one line) on S3 errors.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        part_size: int = 16 * 2**20,
        in_flight: int = 2,
        content_type: str = "application/octet-stream",
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise BadInputError(f"the part size must be at least {MIN_PART_SIZE // 2**20} MiB")
        self.client, self.bucket, self.key = client, bucket, key
        self.part_size, self.content_type = part_size, content_type
        self.size = 0
        self._buffer = bytearray()
        self._pool = ThreadPoolExecutor(max(1, in_flight), thread_name_prefix="s3-part")
        self._slots = threading.Semaphore(max(1, in_flight))
        self._parts: list[Future[tuple[int, str, bytes]]] = []
        self._upload_id: str | None = None
        self._closed = False

    @property
    def what(self) -> str:
        return f"uploading s3://{self.bucket}/{self.key}"

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Buffer ``data``; every full part goes to the uploaders (blocks while they are busy)."""
        self._buffer += data
        self.size += len(data)
        if len(self._buffer) >= self.part_size:
            whole, self._buffer = self._buffer, bytearray()
            view = memoryview(whole)
            start = 0
            while len(whole) - start >= self.part_size:
                self._submit(bytes(view[start : start + self.part_size]))
                start += self.part_size
            self._buffer += view[start:]
            view.release()
        return len(data)

    def _submit(self, part: bytes) -> None:
        if self._upload_id is None:
            created = s3_call(
                self.what,
                lambda: self.client.create_multipart_upload(
                    Bucket=self.bucket, Key=self.key, ContentType=self.content_type
                ),
            )
            self._upload_id = str(created["UploadId"])
        for done in self._parts:
            if done.done():
                done.result()  # raise a failed part's error now rather than at close
        self._slots.acquire()
        future = self._pool.submit(self._upload_part, len(self._parts) + 1, part)
        future.add_done_callback(lambda _f: self._slots.release())
        self._parts.append(future)

    def _upload_part(self, number: int, data: bytes) -> tuple[int, str, bytes]:
        digest = hashlib.md5(data).digest()
        response = s3_call(
            f"{self.what} (part {number})",
            lambda: self.client.upload_part(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=data,
                ContentMD5=base64.b64encode(digest).decode(),
            ),
        )
        etag = str(response["ETag"])
        if _MD5_HEX.match(etag.strip('"')) and etag.strip('"') != digest.hex():
            raise StorageError(
                f"{self.what}: S3 stored part {number} with MD5 {etag.strip(chr(34))}, "
                f"sent {digest.hex()}"
            )
        return number, etag, digest

    def close(self) -> UploadResult:
        """Send what is left, complete the upload and verify the object; returns what S3 holds."""
        if self._closed:
            raise StorageError(f"{self.what}: the upload is already closed")
        self._closed = True
        try:
            if self._upload_id is None:
                expected, parts = self._put_whole(), 1
            else:
                if self._buffer:
                    self._submit(bytes(self._buffer))
                    self._buffer.clear()
                expected, parts = self._complete(), len(self._parts)
            result = self._check(expected, parts)
        except BaseException:
            self.abort()
            raise
        self._pool.shutdown()
        return result

    def _put_whole(self) -> str:
        data = bytes(self._buffer)
        digest = hashlib.md5(data).digest()
        s3_call(
            self.what,
            lambda: self.client.put_object(
                Bucket=self.bucket,
                Key=self.key,
                Body=data,
                ContentType=self.content_type,
                ContentMD5=base64.b64encode(digest).decode(),
            ),
        )
        return digest.hex()

    def _complete(self) -> str:
        results = [future.result() for future in self._parts]
        listing = [{"PartNumber": number, "ETag": etag} for number, etag, _ in results]
        s3_call(
            self.what,
            lambda: self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": listing},
            ),
        )
        self._upload_id = None  # completed: nothing to abort any more
        combined = hashlib.md5(b"".join(digest for _, _, digest in results)).hexdigest()
        return f"{combined}-{len(results)}"

    def _check(self, expected_etag: str, parts: int) -> UploadResult:
        head = s3_call(self.what, lambda: self.client.head_object(Bucket=self.bucket, Key=self.key))
        size, etag = int(head["ContentLength"]), str(head.get("ETag", "")).strip('"')
        problem = ""
        if size != self.size:
            problem = f"S3 holds {size} bytes, {self.size} were sent"
        elif (_MD5_HEX.match(etag) or _MULTIPART_ETAG.match(etag)) and etag != expected_etag:
            problem = f"S3 reports ETag {etag}, the parts sent make {expected_etag}"
        if problem:
            self._delete_quietly()
            raise StorageError(f"{self.what}: the upload did not verify: {problem}")
        return UploadResult(self.key, size, etag, parts)

    def _delete_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self.client.delete_object(Bucket=self.bucket, Key=self.key)

    def abort(self) -> None:
        """Stop uploading and abort the multipart upload (never raises)."""
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.key, UploadId=upload_id
                )

    def __enter__(self) -> MultipartWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is not None:
            self.abort()
        elif not self._closed:
            self.close()


class RangedReader(io.RawIOBase):
    """A read-only stream of one S3 object that survives dropped connections.

    A broken or timed-out response is re-requested from the current offset with a ranged GET
    (``If-Match`` the first ETag, so a replaced object is never spliced into the stream), up to
    ``retries`` times in a row. Raises StorageError when the object cannot be read.
    """

    def __init__(self, client: Any, bucket: str, key: str, retries: int = 5) -> None:
        super().__init__()
        self.client, self.bucket, self.key, self.retries = client, bucket, key, retries
        self.position = 0
        self.size: int | None = None
        self.etag: str | None = None
        self._body: Any = None

    def readable(self) -> bool:
        return True

    def _open(self) -> None:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key}
        if self.position:
            params["Range"] = f"bytes={self.position}-"
        if self.etag:
            params["IfMatch"] = self.etag
        response = s3_call(
            f"reading s3://{self.bucket}/{self.key}", lambda: self.client.get_object(**params)
        )
        if self.etag is None:
            self.etag = str(response.get("ETag", "")) or None
            self.size = int(response["ContentLength"])
        self._body = response["Body"]

    def readinto(self, buffer: Any) -> int:
        from botocore.exceptions import BotoCoreError
        from urllib3.exceptions import HTTPError as Urllib3Error

        if self.size is not None and self.position >= self.size:
            return 0
        for attempt in range(self.retries + 1):
            try:
                if self._body is None:
                    self._open()
                data = self._body.read(len(buffer))
                if not data and self.size is not None and self.position < self.size:
                    raise OSError("the connection closed early")
                break
            except (BotoCoreError, Urllib3Error, OSError) as exc:
                self._drop_body()
                if attempt == self.retries:
                    raise StorageError(
                        f"reading s3://{self.bucket}/{self.key} at byte {self.position}: {exc}"
                    ) from None
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def _drop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            with contextlib.suppress(Exception):
                body.close()

    def close(self) -> None:
        self._drop_body()
        super().close()


def open_object(client: Any, bucket: str, key: str, buffer_size: int = 2**20) -> io.BufferedReader:
    """A buffered, resumable read stream of one object (see :class:`RangedReader`)."""
    return io.BufferedReader(RangedReader(client, bucket, key), buffer_size=buffer_size)


def get_bytes(client: Any, bucket: str, key: str) -> bytes:
    """The whole body of a small object; raises StorageError (NoSuchKey included)."""
    with open_object(client, bucket, key) as stream:
        return stream.read()


def put_bytes(
    client: Any, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
) -> UploadResult:
    """PUT a small object with its Content-MD5 and verify what S3 stored."""
    writer = MultipartWriter(client, bucket, key, content_type=content_type)
    writer.write(data)
    return writer.close()


def list_objects(client: Any, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    """Every object under ``prefix`` (``Key``, ``Size``, ``LastModified``, ``ETag``), by key."""
    paginator = client.get_paginator("list_objects_v2")
    pages = paginator.paginate(Bucket=bucket, Prefix=prefix)
    what = f"listing s3://{bucket}/{prefix}"
    iterator = iter(pages)
    while True:
        page = s3_call(what, lambda: next(iterator, None))
        if page is None:
            return
        yield from page.get("Contents") or []


def delete_objects(client: Any, bucket: str, keys: list[str]) -> None:
    """Delete ``keys`` (1000 per request); raises StorageError naming the first failure."""
    for start in range(0, len(keys), 1000):
        delete = {"Objects": [{"Key": key} for key in keys[start : start + 1000]], "Quiet": True}
        response = s3_call(
            f"deleting from s3://{bucket}",
            functools.partial(client.delete_objects, Bucket=bucket, Delete=delete),
        )
        errors = response.get("Errors") or []
        if errors:
            first = errors[0]
            raise StorageError(
                f"deleting s3://{bucket}/{first.get('Key')}: {first.get('Code')} "
                f"{first.get('Message', '')}".strip()
            )


def abort_stale_uploads(client: Any, bucket: str, prefix: str, older_than: float) -> list[str]:
    """Abort multipart uploads under ``prefix`` started more than ``older_than`` seconds ago.

    What a killed writer leaves behind: invisible, but billed. Returns the keys aborted.
    """
    import time

    listing = s3_call(
        f"listing uploads in s3://{bucket}/{prefix}",
        lambda: client.list_multipart_uploads(Bucket=bucket, Prefix=prefix),
    )
    aborted = []
    for upload in listing.get("Uploads") or []:
        started = upload.get("Initiated")
        if started is not None and time.time() - started.timestamp() > older_than:
            s3_call(
                f"aborting the upload of {upload['Key']}",
                functools.partial(
                    client.abort_multipart_upload,
                    Bucket=bucket,
                    Key=upload["Key"],
                    UploadId=upload["UploadId"],
                ),
            )
            aborted.append(str(upload["Key"]))
    return aborted
