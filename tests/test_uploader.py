"""The copy agent's own S3 uploader, against real SeaweedFS and real rclone.

The uploader may only be used where it stores exactly what ``rclone copy --metadata --links``
would, so the main test copies one tree with each and compares every object and its metadata.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest

from migrator.seaweedfs import SeaweedFS
from migrator.uploader import INLINE_MAX_BYTES, Uploader, UploadReport
from migrator.uploadtarget import native_destination
from tests.helpers import run_cli

FLAGS = [
    "--transfers",
    "4",
    "--metadata",
    "--links",
    "--s3-no-check-bucket",
    "--s3-no-head",
    "--s3-disable-checksum",
]


def remote_env(server: SeaweedFS, secret: str | None = None) -> dict[str, str]:
    """The variables a copy Job gets: an rclone remote named ``dest``."""
    return {
        "RCLONE_CONFIG_DEST_TYPE": "s3",
        "RCLONE_CONFIG_DEST_PROVIDER": "SeaweedFS",
        "RCLONE_CONFIG_DEST_ENDPOINT": server.s3_endpoint,
        "RCLONE_CONFIG_DEST_FORCE_PATH_STYLE": "true",
        "RCLONE_CONFIG_DEST_ACCESS_KEY_ID": server.access_key,
        "RCLONE_CONFIG_DEST_SECRET_ACCESS_KEY": secret or server.secret_key,
    }


def agent_copy(
    server: SeaweedFS, source: Path, dest: str, *extra: str, secret: str | None = None
) -> tuple[int, list[dict[str, Any]], str]:
    bucket_and_prefix = dest.removeprefix("dest:")
    args = [
        "agent",
        "copy",
        "--source",
        str(source),
        "--dest",
        dest,
        "--state",
        f"dest:{bucket_and_prefix}-state",
        *extra,
        "--",
        *FLAGS,
    ]
    result = run_cli(*args, env=remote_env(server, secret))
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result.exit_code, events, result.output


def s3(server: SeaweedFS) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.s3_endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
    )


def stored(server: SeaweedFS, bucket: str, prefix: str) -> dict[str, tuple[Any, ...]]:
    """key -> (content, content type, user metadata) of every object under ``prefix/``."""
    client = s3(server)
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix + "/"
    ):
        for item in page.get("Contents", []):
            got = client.get_object(Bucket=bucket, Key=item["Key"])
            objects[item["Key"][len(prefix) + 1 :]] = (
                got["Body"].read(),
                got["ContentType"],
                got["Metadata"],
            )
    return objects


def odd_tree(root: Path) -> Path:
    (root / "MediaCover" / "12").mkdir(parents=True)
    (root / "Backups").mkdir()
    (root / "config.xml").write_text("<Config><Port>7878</Port></Config>\n")
    (root / "config.xml").chmod(0o600)
    (root / "MediaCover" / "12" / "poster.jpg").write_bytes(os.urandom(40_000))
    (root / "MediaCover" / "12" / "fanart 1 (ünïcödé).png").write_bytes(os.urandom(3000))
    (root / "empty.log").write_bytes(b"")
    (root / "Backups" / "big.zip").write_bytes(os.urandom(INLINE_MAX_BYTES * 3 + 17))  # sendfile
    (root / "Backups" / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "Backups" / "script.sh").chmod(0o755)
    (root / "latest").symlink_to("Backups/big.zip")
    os.utime(root / "config.xml", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    os.utime(root / "empty.log", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    os.utime(root / "Backups" / "script.sh", ns=(1_600_000_000_500_000_000,) * 2)
    return root


def test_native_uploads_store_exactly_what_rclone_stores(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str
) -> None:
    source = odd_tree(tmp_path / "radarr")
    code, events, output = agent_copy(seaweedfs, source, f"dest:{bucket}/native")
    assert code == 0, output
    done = events[-1]
    assert done["event"] == "done" and done["copied"] == 7 and done["native"] == 7
    code, events, output = agent_copy(
        seaweedfs, source, f"dest:{bucket}/rclone", "--uploader", "rclone"
    )
    assert code == 0, output
    assert events[-1]["native"] == 0
    ours, theirs = stored(seaweedfs, bucket, "native"), stored(seaweedfs, bucket, "rclone")
    assert sorted(ours) == sorted(theirs)
    assert "latest.rclonelink" in ours and ours["latest.rclonelink"][0] == b"Backups/big.zip"
    for key, (content, ctype, meta) in theirs.items():
        our_content, our_ctype, our_meta = ours[key]
        assert our_content == content, key
        assert our_ctype == ctype, key
        for name in ("mtime", "mode", "uid", "gid"):
            assert our_meta[name] == meta[name], (key, name)
    assert ours["config.xml"][2]["mtime"] == "1600000000.123456789"
    assert ours["config.xml"][2]["mode"] == "100600"
    assert ours["empty.log"][2]["mtime"] == "1600000000"  # trailing zeros trimmed, as rclone does
    assert ours["Backups/script.sh"][2]["mtime"] == "1600000000.5"


def test_rerun_after_a_change_sends_only_the_changed_file(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str
) -> None:
    source = odd_tree(tmp_path / "radarr")
    assert agent_copy(seaweedfs, source, f"dest:{bucket}/v")[0] == 0
    (source / "config.xml").write_text("<Config><Port>7879</Port></Config>\n")
    code, events, _ = agent_copy(seaweedfs, source, f"dest:{bucket}/v")
    assert code == 0
    assert events[-1]["copied"] == 1 and events[-1]["native"] == 1
    assert (
        stored(seaweedfs, bucket, "v")["config.xml"][0] == b"<Config><Port>7879</Port></Config>\n"
    )


def test_wrong_secret_is_one_clear_error(tmp_path: Path, seaweedfs: SeaweedFS, bucket: str) -> None:
    source = odd_tree(tmp_path / "radarr")
    started = time.monotonic()
    code, _events, output = agent_copy(
        seaweedfs, source, f"dest:{bucket}/v", secret="not-the-secret"
    )
    assert code == 3
    assert "check the credentials" in output or "SignatureDoesNotMatch" in output
    assert "not-the-secret" not in output
    assert time.monotonic() - started < 30  # no retrying what cannot succeed


def test_a_file_gone_since_the_walk_is_skipped_not_failed(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str
) -> None:
    source = odd_tree(tmp_path / "radarr")
    destination = native_destination(f"dest:{bucket}/v", FLAGS, remote_env(seaweedfs))
    assert destination is not None
    signatures = {"config.xml": (36, 0), "deleted-meanwhile.txt": (5, 0)}
    copied: dict[str, tuple[int, int]] = {}
    report = Uploader(destination, str(source), threads=2).run(
        list(signatures),
        lambda path, sig: copied.__setitem__(path, sig),
        lambda r: None,
        signatures,
    )
    assert report.vanished == ["deleted-meanwhile.txt"]
    assert report.failures == []
    st = (source / "config.xml").stat()
    assert copied == {"config.xml": (st.st_size, st.st_mtime_ns)}  # what was read, not the walk's


@pytest.mark.parametrize(
    ("change", "native"),
    [
        ({}, True),
        ({"RCLONE_CONFIG_DEST_SERVER_SIDE_ENCRYPTION": "AES256"}, False),
        ({"RCLONE_CONFIG_DEST_ENV_AUTH": "true"}, False),
        ({"RCLONE_CONFIG_DEST_FORCE_PATH_STYLE": "false"}, False),
        ({"RCLONE_BWLIMIT": "10M"}, False),
        ({"HTTPS_PROXY": "http://proxy.example:3128"}, True),  # loopback is never proxied
        ({"HTTPS_PROXY": "http://p:3128", "RCLONE_CONFIG_DEST_ENDPOINT": "http://s3.lan"}, False),
        (
            {
                "HTTP_PROXY": "http://p:3128",
                "RCLONE_CONFIG_DEST_ENDPOINT": "http://s3.lan:8333",
                "NO_PROXY": ".lan",
            },
            True,
        ),
        ({"RCLONE_CONFIG_DEST_TYPE": "local"}, False),
    ],
)
def test_anything_the_uploader_does_not_reproduce_goes_to_rclone(
    seaweedfs: SeaweedFS, change: dict[str, str], native: bool
) -> None:
    env = {**remote_env(seaweedfs), "RCLONE_CONFIG_DIR": "/tmp/rclone", **change}
    assert (native_destination("dest:bucket/a/b", FLAGS, env) is not None) is native


@pytest.mark.parametrize(
    ("flags", "timeout"),
    [
        ([], 120.0),
        (["--timeout", "2s"], 2.0),
        (["--timeout=1m30s"], 90.0),
        (["--timeout", "500ms"], 0.5),
        (["--timeout", "7"], 7.0),
        (["--timeout", "0"], None),
        (["--timeout", "1d"], None),
    ],
)
def test_the_uploader_honours_rclones_idle_timeout(
    seaweedfs: SeaweedFS, flags: list[str], timeout: float | None
) -> None:
    found = native_destination("dest:bucket/a", [*FLAGS, *flags], remote_env(seaweedfs))
    assert (found.timeout if found is not None else None) == timeout


def test_unknown_flags_and_other_remotes_go_to_rclone(seaweedfs: SeaweedFS) -> None:
    env = remote_env(seaweedfs)
    found = native_destination("dest:bucket/a/b", FLAGS, env)
    assert found is not None and (found.bucket, found.prefix) == ("bucket", "a/b")
    assert native_destination("dest:bucket/a", [*FLAGS, "--bwlimit", "1M"], env) is None
    assert native_destination("dest:bucket/a", [*FLAGS, "--exclude=*.tmp"], env) is None
    assert native_destination("other:bucket/a", FLAGS, env) is None
    assert native_destination("/mnt/dest", FLAGS, env) is None


def test_a_file_rewritten_while_it_is_sent_is_recorded_with_what_was_stored(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str
) -> None:
    """Whatever the uploader records as copied must be exactly the content it stored."""
    source = tmp_path / "src"
    source.mkdir()
    target = source / "growing.bin"
    versions: dict[tuple[int, int], bytes] = {}

    block = os.urandom(32 << 20)

    def write(index: int) -> None:
        # Rewritten in place, piece by piece, so a send overlapping it reads a mix of versions.
        content = index.to_bytes(8, "big") * 1024 + block[index:]  # one size (signature) each
        with open(target, "r+b" if target.exists() else "wb") as handle:
            for start in range(0, len(content), 1 << 20):
                handle.write(content[start : start + (1 << 20)])
            handle.truncate()
        st = target.stat()
        versions[(st.st_size, st.st_mtime_ns)] = content

    write(0)
    stop = threading.Event()

    def rewrite() -> None:
        index = 1
        while not stop.is_set():
            write(index)
            index += 1

    writer = threading.Thread(target=rewrite)
    writer.start()
    destination = native_destination(f"dest:{bucket}/v", FLAGS, remote_env(seaweedfs))
    assert destination is not None
    copied: dict[str, tuple[int, int]] = {}
    timer = threading.Timer(1.0, stop.set)
    timer.start()
    walked = target.stat()
    report = Uploader(destination, str(source), threads=1).run(
        ["growing.bin"],
        lambda path, sig: copied.__setitem__(path, sig),
        lambda r: None,
        {"growing.bin": (walked.st_size, walked.st_mtime_ns)},
    )
    writer.join()
    assert report.failures == []
    assert len(versions) > 2  # the file really changed during the upload
    body = s3(seaweedfs).get_object(Bucket=bucket, Key="v/growing.bin")["Body"].read()
    assert body == versions[copied["growing.bin"]]


class FakeS3:
    """An HTTP server answering PUTs with 500 InternalError for keys ``failing(path)`` selects,
    200 otherwise; it records every request path."""

    def __init__(self, failing: Callable[[str], bool]) -> None:
        import http.server

        requests: list[str] = []
        self.requests = requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                requests.append(self.path)
                fail = failing(self.path)
                body = b"<Error><Code>InternalError</Code></Error>" if fail else b""
                self.send_response(500 if fail else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def upload(self, source: Path, names: list[str]) -> UploadReport:
        env = {
            "RCLONE_CONFIG_DEST_TYPE": "s3",
            "RCLONE_CONFIG_DEST_ENDPOINT": f"http://127.0.0.1:{self.server.server_address[1]}",
            "RCLONE_CONFIG_DEST_ACCESS_KEY_ID": "key",
            "RCLONE_CONFIG_DEST_SECRET_ACCESS_KEY": "secret",
        }
        destination = native_destination("dest:bucket/v", FLAGS, env)
        assert destination is not None
        try:
            return Uploader(destination, str(source), threads=2).run(
                names, lambda path, sig: None, lambda r: None, {n: (1, 0) for n in names}
            )
        finally:
            self.server.shutdown()


def small_files(root: Path, count: int) -> list[str]:
    root.mkdir()
    for index in range(count):
        (root / f"f{index}").write_bytes(b"x" * index)
    return [f"f{index}" for index in range(count)]


def test_an_endpoint_that_keeps_failing_stops_the_copy_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full or broken server answers every PUT with 500: give up after a few files, not all."""
    from migrator import uploader

    monkeypatch.setattr(uploader, "ATTEMPTS", 2)
    server = FakeS3(lambda path: True)
    report = server.upload(tmp_path / "src", small_files(tmp_path / "src", 60))
    assert report.uploaded == 0
    # It stopped once a file had failed all its attempts with nothing stored meanwhile: the
    # connections' first files, not all 60.
    assert 2 <= len(report.failures) <= 3
    assert len(server.requests) <= 6
    assert report.gave_up.startswith("every write to S3 at 127.0.0.1:")
    assert "HTTP 500 InternalError (SeaweedFS answers this when the bucket is over its quota" in (
        report.gave_up
    )


def test_one_file_that_keeps_failing_does_not_stop_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from migrator import uploader

    monkeypatch.setattr(uploader, "ATTEMPTS", 3)
    server = FakeS3(lambda path: path.endswith("/f20"))
    report = server.upload(tmp_path / "src", small_files(tmp_path / "src", 40))
    assert (report.uploaded, report.gave_up) == (39, "")
    [failure] = report.failures
    assert failure.path == "f20" and "failed 3 times: HTTP 500 InternalError" in failure.message


def test_names_the_uploader_leaves_alone_go_through_rclone_in_the_same_copy(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str
) -> None:
    source = odd_tree(tmp_path / "radarr")
    (Path(os.fsdecode(bytes(source) + b"/latin1-\xe9t\xe9.txt"))).write_bytes(b"not utf-8")
    code, events, output = agent_copy(seaweedfs, source, f"dest:{bucket}/mixed")
    assert code == 0, output
    done = events[-1]
    assert (done["copied"], done["native"]) == (8, 7)  # the Latin-1 name went to rclone
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["totalFiles"] == 8  # one progress for both stages
    code, events, _ = agent_copy(seaweedfs, source, f"dest:{bucket}/mixed")
    assert code == 0 and events[-1]["copied"] == 0  # both stages recorded their files


def test_an_rclone_session_token_is_sent_by_the_native_uploader(seaweedfs: SeaweedFS) -> None:
    env = {**remote_env(seaweedfs), "RCLONE_CONFIG_DEST_SESSION_TOKEN": "FwoGZXIvtoken"}
    found = native_destination("dest:bucket/a", FLAGS, env)
    assert found is not None and found.endpoint.session_token == "FwoGZXIvtoken"
    assert "FwoGZXIvtoken" not in repr(found)
