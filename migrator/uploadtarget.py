"""When the copy agent's own uploader (:mod:`migrator.uploader`) may stand in for rclone, and
where it uploads to: a destination remote configured by ``RCLONE_CONFIG_<REMOTE>_*`` variables as a
plain S3 endpoint with keys, the rclone flags whose effect it reproduces, and the files it takes
(valid UTF-8 names up to :data:`NATIVE_MAX_BYTES`). Everything else goes through rclone."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from migrator.objectstore import S3Settings
from migrator.rclone_names import key_path
from migrator.s3wire import Client, Endpoint

# Larger files go to rclone, which splits them into parallel multipart uploads (and a single PUT
# is limited to 5 GiB anyway).
NATIVE_MAX_BYTES = 2**30
# Variables of an rclone S3 remote that this uploader honours; any other one (a CA, SSE, ACL,
# storage class, env_auth, ...) means rclone does the upload.
KNOWN_REMOTE_KEYS = frozenset(
    {
        "TYPE",
        "PROVIDER",
        "ENDPOINT",
        "ACCESS_KEY_ID",
        "SECRET_ACCESS_KEY",
        "SESSION_TOKEN",
        "REGION",
        "FORCE_PATH_STYLE",
        "NO_CHECK_BUCKET",
    }
)
# rclone flags whose effect on a plain copy this uploader reproduces (or that do not apply to
# single PUTs); with any other flag rclone does the upload. Value-taking ones list their arity.
KNOWN_FLAGS = {
    "--metadata": 0,
    "--links": 0,
    "--fast-list": 0,
    "--s3-no-check-bucket": 0,
    "--s3-no-head": 0,
    "--s3-disable-checksum": 0,
    "--transfers": 1,
    "--checkers": 1,
    "--retries": 1,
    "--low-level-retries": 1,
    "--s3-chunk-size": 1,
    "--s3-upload-concurrency": 1,
    "--timeout": 1,
}
# How long a request may go without a byte moving (rclone's --timeout, which the uploader
# honours); a completing PUT of a large file can keep SeaweedFS quiet for a while.
IDLE_TIMEOUT = 120.0


@dataclass(frozen=True)
class Destination:
    """A bucket and key prefix on an endpoint the uploader can write to itself."""

    endpoint: Endpoint
    bucket: str
    prefix: str  # without a trailing "/"
    timeout: float = IDLE_TIMEOUT  # seconds a request may go without a byte moving

    def key(self, relpath: str) -> str:
        """The object key of a file, spelled as rclone (with rclone_names.ENCODING_FLAG) would."""
        relpath = key_path(relpath)
        return f"{self.prefix}/{relpath}" if self.prefix else relpath


def native_destination(
    dest: str, flags: list[str], environ: Mapping[str, str] | None = None
) -> Destination | None:
    """The destination if ``rclone copy ... DEST FLAGS`` can be done natively, else None."""
    environ = os.environ if environ is None else environ
    config, path = _remote_config(dest, environ)
    if config.get("TYPE") != "s3" or not config.get("ENDPOINT"):
        return None
    if set(config) - KNOWN_REMOTE_KEYS or not config.get("ACCESS_KEY_ID"):
        return None
    if config.get("FORCE_PATH_STYLE", "true").lower() not in ("true", "1"):
        return None
    if any(
        name.startswith("RCLONE_")
        and name not in _BENIGN_ENV
        and not name.startswith("RCLONE_CONFIG_")
        for name in environ
    ):
        return None  # a global rclone option (bwlimit, filters, ...) set by the environment
    if not _known_flags(flags):
        return None
    bucket, _, prefix = path.strip("/").partition("/")
    if not bucket:
        return None
    settings = S3Settings(
        endpoint=config["ENDPOINT"],
        access_key=config["ACCESS_KEY_ID"],
        secret_key=config.get("SECRET_ACCESS_KEY", ""),
        region=config.get("REGION") or "us-east-1",
        ca_bundle=environ.get("RCLONE_CA_CERT") or None,  # rclone's --ca-cert
        session_token=config.get("SESSION_TOKEN") or None,  # rclone's --s3-session-token
    )
    endpoint = Endpoint.from_settings(settings)
    if _proxied(endpoint, environ):
        return None  # rclone honours HTTP(S)_PROXY; these sockets connect directly
    timeout = flag_text(flags, "--timeout")
    seconds = rclone_duration(timeout) if timeout else IDLE_TIMEOUT
    if seconds is None or seconds <= 0:
        return None  # a spelling (or "0", no timeout) rclone knows and this does not
    return Destination(endpoint, bucket, prefix.strip("/"), seconds)


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?)(ms|s|m|h)")


def rclone_duration(text: str) -> float | None:
    """Seconds of an rclone/Go duration (``2s``, ``1m30s``, ``500ms``; a bare number is
    seconds); None when it is spelled otherwise."""
    if re.fullmatch(r"\d+(?:\.\d*)?", text):
        return float(text)
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(number) * scale[unit] for number, unit in parts)


def flag_text(flags: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` among rclone flags (the last one)."""
    value = None
    for index, flag in enumerate(flags):
        if flag == name and index + 1 < len(flags):
            value = flags[index + 1]
        elif flag.startswith(name + "="):
            value = flag[len(name) + 1 :]
    return value


def _remote_config(dest: str, environ: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """The ``RCLONE_CONFIG_<REMOTE>_*`` settings of ``REMOTE:path`` (without the prefix) and
    the path; no settings for a local path or an inline ``:backend:`` remote."""
    remote, sep, path = dest.partition(":")
    if not sep or not remote.isidentifier():
        return {}, dest
    var = f"RCLONE_CONFIG_{remote.upper()}_"
    return {
        name[len(var) :]: value for name, value in environ.items() if name.startswith(var)
    }, path


def check_remote_trust(dest: str, environ: Mapping[str, str] | None = None) -> None:
    """Fail at once, in one line, when ``dest`` is an rclone S3 remote over HTTPS whose
    certificate is not trusted (rclone would retry that for minutes, silently)."""
    environ = os.environ if environ is None else environ
    config, _ = _remote_config(dest, environ)
    if config.get("TYPE") != "s3" or not config.get("ENDPOINT", "").startswith("https://"):
        return
    settings = S3Settings(
        endpoint=config["ENDPOINT"], ca_bundle=environ.get("RCLONE_CA_CERT") or None
    )
    endpoint = Endpoint.from_settings(settings)
    if not _proxied(endpoint, environ):  # through a proxy, the proxy's answer is what we'd see
        Client(endpoint, timeout=15.0).check_trust()


def _proxied(endpoint: Endpoint, environ: Mapping[str, str]) -> bool:
    """Whether rclone would reach ``endpoint`` through a proxy from the environment (as Go's
    ProxyFromEnvironment decides: never for loopback, not for hosts in NO_PROXY)."""
    if not any(environ.get(name) for name in _PROXY_ENV):
        return False
    host = endpoint.host.lower()
    if host.startswith("["):
        host = host[1 : host.index("]")]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host == "localhost":
        return False
    try:
        if ipaddress.ip_address(host).is_loopback:
            return False
    except ValueError:
        pass
    for entry in (environ.get("NO_PROXY") or environ.get("no_proxy") or "").split(","):
        entry = entry.strip().lower()
        if entry.count(":") == 1:
            entry = entry.partition(":")[0]  # a port in NO_PROXY applies to every port here
        domain = entry.lstrip("*").lstrip(".")
        if entry == "*" or (domain and (host == domain or host.endswith("." + domain))):
            return False
    return True


_BENIGN_ENV = frozenset(
    {"RCLONE_CONFIG_DIR", "RCLONE_CACHE_DIR", "RCLONE_CONFIG", "RCLONE_CA_CERT"}
)
_PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _known_flags(flags: list[str]) -> bool:
    index = 0
    while index < len(flags):
        name, has_value, _ = flags[index].partition("=")
        arity = KNOWN_FLAGS.get(name)
        if arity is None:
            return False
        index += 1 if has_value else 1 + arity
    return True


def flag_value(flags: list[str], name: str, default: int) -> int:
    """The integer value of ``--name N`` or ``--name=N`` among rclone flags."""
    for index, flag in enumerate(flags):
        if flag == name and index + 1 < len(flags) and flags[index + 1].isdigit():
            return int(flags[index + 1])
        if flag.startswith(name + "=") and flag[len(name) + 1 :].isdigit():
            return int(flag[len(name) + 1 :])
    return default


def can_upload(relpath: str, size: int) -> bool:
    """Whether this file goes through the native uploader (else rclone)."""
    if size > NATIVE_MAX_BYTES:
        return False
    try:
        relpath.encode("utf-8")  # rclone encodes invalid UTF-8 in its own way: leave it those
    except UnicodeEncodeError:
        return False
    return not any(part in (".", "..") for part in relpath.split("/"))
