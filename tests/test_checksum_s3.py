"""The checksum engine against a real SeaweedFS: deep verify of a copy made by real rclone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
import xxhash

from migrator.checksum import (
    DIRECTORY,
    SYMLINK,
    ChecksumError,
    CompareResult,
    Entry,
    HashStats,
    compare,
    hash_s3_prefix,
    hash_tree,
)
from migrator.checksum import s3 as s3_module
from migrator.objectstore import S3Settings
from migrator.seaweedfs import SeaweedFS

pytestmark = pytest.mark.seaweedfs


@pytest.fixture
def settings(seaweedfs: SeaweedFS) -> S3Settings:
    return S3Settings(
        endpoint=seaweedfs.s3_endpoint,
        access_key=seaweedfs.access_key,
        secret_key=seaweedfs.secret_key,
    )


@pytest.fixture
def client(seaweedfs: SeaweedFS) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=seaweedfs.s3_endpoint,
        aws_access_key_id=seaweedfs.access_key,
        aws_secret_access_key=seaweedfs.secret_key,
        region_name="us-east-1",
    )


def rclone_copy(seaweedfs: SeaweedFS, source: Path, destination: str) -> None:
    """Copy like the migrator does: metadata (mtime, mode, owner) and symlinks as .rclonelink."""
    env = {
        **os.environ,
        "RCLONE_CONFIG": os.devnull,
        "RCLONE_CONFIG_SW_TYPE": "s3",
        "RCLONE_CONFIG_SW_PROVIDER": "SeaweedFS",
        "RCLONE_CONFIG_SW_ENDPOINT": seaweedfs.s3_endpoint,
        "RCLONE_CONFIG_SW_ACCESS_KEY_ID": seaweedfs.access_key,
        "RCLONE_CONFIG_SW_SECRET_ACCESS_KEY": seaweedfs.secret_key,
    }
    rclone = str(Path(sys.executable).parent / "rclone")
    subprocess.run(
        [rclone, "copy", "--metadata", "--links", str(source), f"sw:{destination}"],
        env=env,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def source_tree(tmp_path: Path) -> Path:
    root = tmp_path / "source"
    (root / "media" / "show s01").mkdir(parents=True)
    (root / "media" / "show s01" / "episode 1.mkv").write_bytes(os.urandom(300_000))
    (root / "media" / "ünïcødé.nfo").write_bytes(b"<xml/>")
    (root / "config").mkdir()
    (root / "config" / "config.xml").write_bytes(b"<Config><ApiKey>k</ApiKey></Config>")
    (root / "config" / "empty.log").write_bytes(b"")
    (root / "tab\tand space").write_bytes(b"odd name")
    (root / "a-c").write_bytes(b"sorts before a/ in bytes, after it in SeaweedFS listings")
    (root / "a").mkdir()
    (root / "a" / "b").write_bytes(b"b")
    (root / "latest").symlink_to("media/ünïcødé.nfo")
    (root / "emptydir").mkdir()
    return root


def verify(
    settings: S3Settings, source: Path, bucket: str, prefix: str, **options: Any
) -> CompareResult:
    return compare(
        hash_tree(source, workers=1),
        hash_s3_prefix(settings, bucket, prefix, workers=1, threads=4, **options),
        strict_metadata=True,
    )


def test_an_identical_copy_passes_except_the_empty_directory_rclone_drops(
    seaweedfs: SeaweedFS, settings: S3Settings, bucket: str, source_tree: Path
) -> None:
    rclone_copy(seaweedfs, source_tree, f"{bucket}/copy")
    remote = list(hash_s3_prefix(settings, bucket, "copy", workers=2, threads=2))
    result = compare(hash_tree(source_tree, workers=1), iter(remote), strict_metadata=True)
    # S3 has no directories and rclone does not keep empty ones: exactly what verify must catch.
    assert [(d.kind, d.name) for d in result.differences] == [("missing", "emptydir/")]
    assert result.matched == len(remote) == 8
    link = next(entry for entry in remote if entry.path == b"latest")
    assert link.type == SYMLINK and link.xxh3 == xxhash.xxh3_128_hexdigest(
        "media/ünïcødé.nfo".encode()
    )
    local = {e.path: e for e in hash_tree(source_tree, workers=1)}
    config = next(entry for entry in remote if entry.path == b"config/config.xml")
    assert config.mtime_ns == local[b"config/config.xml"].mtime_ns  # rclone metadata headers
    expected = local[b"config/config.xml"]
    assert (config.mode, config.uid, config.gid) == (expected.mode, expected.uid, expected.gid)


@pytest.mark.parametrize(
    ("damage", "kind", "name"),
    [
        ("flip", "checksum", "media/show s01/episode 1.mkv"),
        ("truncate", "size", "config/config.xml"),
        ("delete", "missing", "tab\\tand space"),
        ("add", "extra", "media/stray.tmp"),
    ],
)
def test_each_damage_is_named_with_its_kind(
    seaweedfs: SeaweedFS,
    settings: S3Settings,
    client: Any,
    bucket: str,
    source_tree: Path,
    damage: str,
    kind: str,
    name: str,
) -> None:
    (source_tree / "emptydir").rmdir()
    rclone_copy(seaweedfs, source_tree, f"{bucket}/copy")
    key = "copy/" + name.replace("\\t", "\t")
    if damage == "flip":
        body = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        body[123_456] ^= 0x01
        client.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    elif damage == "truncate":
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        client.put_object(Bucket=bucket, Key=key, Body=body[:-1])
    elif damage == "delete":
        client.delete_object(Bucket=bucket, Key=key)
    else:
        client.put_object(Bucket=bucket, Key=key, Body=b"stray")
    result = verify(settings, source_tree, bucket, "copy")
    assert [(d.kind, d.name) for d in result.differences if d.is_content] == [(kind, name)]
    assert not result.ok


def test_big_objects_are_hashed_from_ranged_gets(
    settings: S3Settings, client: Any, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(s3_module, "PART_SIZE", 64 << 10)
    monkeypatch.setattr(s3_module, "RANGED_ABOVE", 128 << 10)
    body = os.urandom((1 << 20) + 17)
    (tmp_path / "big").write_bytes(body)
    client.put_object(Bucket=bucket, Key="big", Body=body)
    client.put_object(Bucket=bucket, Key="small", Body=b"s")
    (tmp_path / "small").write_bytes(b"s")
    remote = list(hash_s3_prefix(settings, bucket, workers=1, threads=3))
    assert [(e.path, e.size, e.xxh3) for e in remote] == [
        (b"big", len(body), xxhash.xxh3_128_hexdigest(body)),
        (b"small", 1, xxhash.xxh3_128_hexdigest(b"s")),
    ]
    assert compare(hash_tree(tmp_path, workers=1), iter(remote)).ok


def test_big_objects_below_the_range_threshold_are_streamed_side_by_side(
    settings: S3Settings, client: Any, bucket: str, tmp_path: Path
) -> None:
    bodies = {f"movie {index}.mkv": os.urandom((3 << 20) + index) for index in range(5)}
    for name, body in bodies.items():
        (tmp_path / name).write_bytes(body)
        client.put_object(Bucket=bucket, Key=name, Body=body)
    remote = list(hash_s3_prefix(settings, bucket, workers=1, threads=4))
    assert [(e.path.decode(), e.size, e.xxh3) for e in remote] == [
        (name, len(body), xxhash.xxh3_128_hexdigest(body)) for name, body in sorted(bodies.items())
    ]
    assert compare(hash_tree(tmp_path, workers=1), iter(remote)).ok


def test_objects_without_rclone_metadata_have_unknown_metadata(
    settings: S3Settings, client: Any, bucket: str
) -> None:
    client.put_object(Bucket=bucket, Key="plain", Body=b"no metadata")
    client.put_object(Bucket=bucket, Key="marker/", Body=b"")
    client.put_object(Bucket=bucket, Key="full/", Body=b"")
    client.put_object(Bucket=bucket, Key="full/x", Body=b"x")
    entries = {e.path: e for e in hash_s3_prefix(settings, bucket, workers=1)}
    assert set(entries) == {b"plain", b"marker/", b"full/x"}  # a marker with children is no entry
    plain = entries[b"plain"]
    assert (plain.mtime_ns, plain.mode, plain.uid, plain.gid) == (None, None, None, None)
    assert entries[b"marker/"].type == DIRECTORY


def test_repeated_verify_uses_the_cache_until_an_object_changes(
    settings: S3Settings, client: Any, bucket: str, tmp_path: Path
) -> None:
    for index in range(10):
        client.put_object(
            Bucket=bucket, Key=f"p/f{index}", Body=b"%d" % index, Metadata={"mode": "100600"}
        )
    cache = tmp_path / "s3.cache"
    first, second, third = HashStats(), HashStats(), HashStats()
    original = list(hash_s3_prefix(settings, bucket, "p", workers=1, cache=cache, stats=first))
    again = list(hash_s3_prefix(settings, bucket, "p", workers=1, cache=cache, stats=second))
    assert first.hashed_files == 10 and second.cached_files == 10 and again == original
    assert original[0].mode == 0o600  # metadata from the GET is kept in the cache
    client.put_object(Bucket=bucket, Key="p/f3", Body=b"changed")
    changed = list(hash_s3_prefix(settings, bucket, "p", workers=1, cache=cache, stats=third))
    assert third.hashed_files == 1 and third.cached_files == 9
    assert changed[3] == Entry(
        b"f3", "f", 7, None, None, None, None, xxhash.xxh3_128_hexdigest(b"changed")
    )


def test_sample_picks_the_same_paths_on_s3_and_locally(
    seaweedfs: SeaweedFS, settings: S3Settings, bucket: str, tmp_path: Path
) -> None:
    for index in range(60):
        (tmp_path / f"f{index:02d}").write_bytes(b"%d" % index)
    rclone_copy(seaweedfs, tmp_path, f"{bucket}/s")
    local = [e.path for e in hash_tree(tmp_path, workers=1, sample=0.3)]
    remote = [e.path for e in hash_s3_prefix(settings, bucket, "s", workers=1, sample=0.3)]
    assert local == remote and 5 < len(local) < 35


def test_wrong_credentials_are_an_error(seaweedfs: SeaweedFS, bucket: str) -> None:
    wrong = S3Settings(endpoint=seaweedfs.s3_endpoint, access_key="nobody", secret_key="wrong")
    with pytest.raises(ChecksumError, match="HTTP 403"):
        list(hash_s3_prefix(wrong, bucket, workers=1))


@pytest.mark.parametrize("count", [1, 4])  # one busy answer; then three in a row on the retry
def test_pipelined_gets_answered_slow_down_are_retried_with_backoff(
    seaweedfs: SeaweedFS, bucket: str, source_tree: Path, count: int
) -> None:
    from tests.faultproxy import FaultProxy

    rclone_copy(seaweedfs, source_tree, f"{bucket}/busy")
    port = int(seaweedfs.s3_endpoint.rsplit(":", 1)[1])
    with FaultProxy("127.0.0.1", port) as proxy:
        settings = S3Settings(proxy.url, seaweedfs.access_key, seaweedfs.secret_key)
        # Object GETs only (the listing is GET /bucket?list-type=2); the first one is the first
        # request of a pipeline on its connection, so the proxy's answer overtakes nothing.
        proxy.slow_down(count, method="GET", path=f"/{bucket}/")
        remote = list(hash_s3_prefix(settings, bucket, "busy", workers=1, threads=1))
        assert proxy.answered_slow_down == count
    result = compare(hash_tree(source_tree, workers=1), iter(remote), strict_metadata=True)
    assert [(d.kind, d.name) for d in result.differences] == [("missing", "emptydir/")]
    assert result.matched == 8
