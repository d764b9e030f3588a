"""SigV4 vectors: migrator.s3wire's Signer against botocore's S3SigV4Auth on the same requests.

Each case signs one request with both at the same instant and compares the Authorization header
(and the headers it covers); botocore is told not to sign the payload, as s3wire never does.
"""

from __future__ import annotations

import datetime
import time
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from migrator.objectstore import S3Settings
from migrator.s3wire import Endpoint, Signer, object_path

NOW = datetime.datetime(2026, 3, 14, 15, 9, 26, tzinfo=datetime.UTC)
KEY, SECRET, TOKEN = (
    "AKIDEXAMPLE",
    "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    "FwoGZXIvYXdzE//tok==",
)


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    frozen = NOW.timetuple()
    monkeypatch.setattr(time, "gmtime", lambda *_: time.struct_time(frozen))
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: NOW.replace(tzinfo=None))


def endpoint(url: str, token: str | None = None, region: str = "us-east-1") -> Endpoint:
    settings = S3Settings(url, KEY, SECRET, region=region, session_token=token)
    return Endpoint.from_settings(settings)


def botocore_headers(
    point: Endpoint, method: str, path: str, query: str, amz: dict[str, str], token: str | None
) -> dict[str, str]:
    url = f"{point.scheme}://{point.host}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, headers=dict(amz))
    request.context["client_config"] = SimpleNamespace(s3={"payload_signing_enabled": False})
    S3SigV4Auth(Credentials(KEY, SECRET, token), "s3", point.region).add_auth(request)
    return {name.lower(): value for name, value in request.headers.items()}


CASES = {
    "GET an object": ("GET", "media", "tv/Show (2024)/S01E01.mkv", {}, {}),
    "GET a key needing escapes": ("GET", "media", "a b/ü+%=&?#~.jpg", {}, {}),
    "ListObjectsV2 page": (
        "GET",
        "media",
        "",
        {
            "list-type": "2",
            "prefix": "tv/a b+c/",
            "max-keys": "1000",
            "continuation-token": "1/xyz=+AB//==",
        },
        {},
    ),
    "PUT with rclone metadata": (
        "PUT",
        "media",
        "config/app.db",
        {},
        {
            "x-amz-meta-mtime": "1700000000.5",
            "x-amz-meta-mode": "100644",
            "x-amz-meta-uid": "911",
            "x-amz-meta-gid": "911",
        },
    ),
}


@pytest.mark.parametrize("token", [None, TOKEN], ids=["keys", "session-token"])
@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8333", "https://s3.example.com", "https://s3.example.com:9000"]
)
@pytest.mark.parametrize("case", list(CASES))
def test_signature_matches_botocore(case: str, url: str, token: str | None) -> None:
    method, bucket, key, query, amz = CASES[case]
    point = endpoint(url, token, region="eu-central-1")
    path = object_path(bucket, key) if key else "/" + bucket
    # What Client.get sends: the query canonically encoded and sorted.
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items())
    )
    ours = {
        name.lower(): value
        for name, value in Signer(point).headers(path, canonical_query, method, amz).items()
    }
    theirs = botocore_headers(point, method, path, canonical_query, amz, token)
    assert ours["authorization"] == theirs["authorization"]
    signed = theirs["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    for name in signed:
        if name != "host":  # botocore derives Host from the URL when it sends
            assert ours[name] == theirs[name], name
    assert ("x-amz-security-token" in signed) == (token is not None)
    assert ours.get("x-amz-security-token") == token


def test_anonymous_requests_carry_no_signature_nor_token() -> None:
    point = Endpoint.from_settings(S3Settings("http://127.0.0.1:8333", session_token=TOKEN))
    headers = Signer(point).headers("/media/a")
    assert "Authorization" not in headers and "x-amz-security-token" not in headers


def test_session_token_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    settings = S3Settings.from_environment("http://127.0.0.1:8333")
    assert settings.session_token == TOKEN
    assert TOKEN not in repr(settings) and TOKEN not in repr(Endpoint.from_settings(settings))
    monkeypatch.setenv("MIGRATOR_BACKUP_AWS_SESSION_TOKEN", "backup-token")
    backup = S3Settings.from_environment(None, prefix="MIGRATOR_BACKUP_")
    assert backup.session_token == "backup-token"
