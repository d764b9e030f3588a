"""`migrator backup` against a real SeaweedFS: snapshots of a live WAL database, list, restore,
verify, prune, and every error path a user can meet."""

from __future__ import annotations

import functools
import json
import os
import random
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from migrator.backup.repository import BackupRepository
from migrator.backup.snapshot import SnapshotOptions, create_snapshot
from migrator.checksum import compare, hash_tree
from migrator.objectstore import S3Location, S3Settings, make_client
from migrator.samples import DatabaseWriter, SampleSizes, make_config_dir
from migrator.seaweedfs import SeaweedFS
from tests.helpers import run_cli, unavailable

SIZES = SampleSizes(covers=60, db_rows=400, cover_bytes=(512, 8 * 1024))
VOLUME = "sonarr-config"


@dataclass
class Project:
    root: Path
    plan: Path
    config: Path
    bucket: str
    server: SeaweedFS

    def s3(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.server.s3_endpoint,
            aws_access_key_id=self.server.access_key,
            aws_secret_access_key=self.server.secret_key,
            region_name="us-east-1",
        )

    def repository(self) -> BackupRepository:
        settings = S3Settings(
            self.server.s3_endpoint, self.server.access_key, self.server.secret_key
        )
        return BackupRepository(make_client(settings), S3Location(self.bucket, "backups"))

    def keys(self) -> list[str]:
        listing = self.s3().list_objects_v2(Bucket=self.bucket, Prefix="backups/")
        return sorted(o["Key"] for o in listing.get("Contents", []))


def make_source(path: Path) -> Path:
    """A Sonarr /config plus the awkward cases: symlink, odd modes, unicode, a stale WAL."""
    make_config_dir(path, "sonarr", SIZES, random.Random(7))
    (path / "MediaCover" / "latest").symlink_to("1/poster-0.jpg")
    secret = path / "config.xml"
    secret.chmod(0o600)
    (path / "Backups" / "scheduled" / "sonarr_backup_v4 «nightly».zip").write_bytes(
        os.urandom(3000)
    )
    os.utime(secret, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    return path


@pytest.fixture
def project(tmp_path: Path, s3_env: SeaweedFS, bucket: str) -> Project:
    config = make_source(tmp_path / "src" / "sonarr")
    result = run_cli(
        "plan",
        "--source-dir",
        f"{VOLUME}={config}",
        "--target",
        f"s3://{bucket}/migrated",
        "--backup-target",
        f"s3://{bucket}/backups",
        "--s3-endpoint",
        s3_env.s3_endpoint,
        "--no-probe",
        cwd=tmp_path,
    )
    assert result.exit_code == 0, result.output
    return Project(tmp_path, tmp_path / "plans" / "local.yaml", config, bucket, s3_env)


def cli_json(*args: str) -> tuple[int, Any]:
    result = run_cli(*args, "--json")
    text = result.stdout.strip()
    return result.exit_code, json.loads(text) if text.startswith(("{", "[")) else result.output


def only_error_line(result: Any) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return str(lines[0])


def rows(path: Path, table: str = "Writes") -> dict[int, bytes]:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(connection.execute(f"select Id, Data from {table}"))
    finally:
        connection.close()


def committed_rows(path: Path) -> int:
    """Rows the app has committed so far (0 until it created its table)."""
    connection = sqlite3.connect(path, timeout=30)
    try:
        return int(connection.execute("select count(*) from Writes").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        connection.close()


def assert_same_tree(source: Path, restored: Path, skip: set[bytes]) -> None:
    """Every file, link and empty directory with content, mode, owner and mtime (databases aside)."""
    left = [e for e in hash_tree(source, workers=1) if e.path not in skip]
    right = [e for e in hash_tree(restored, workers=1) if e.path not in skip]
    result = compare(left, right, strict_metadata=True)
    assert result.ok, [d.describe() for d in result.differences]


DATABASES = {b"sonarr.db", b"logs.db"} | {
    name + suffix for name in (b"sonarr.db", b"logs.db") for suffix in (b"-wal", b"-shm")
}


def test_backup_while_the_app_writes_then_list_and_restore(project: Project) -> None:
    database = project.config / "sonarr.db"
    with DatabaseWriter(database) as writer:
        while committed_rows(database) < 20:  # the app is up and committing
            pass
        before = committed_rows(database)
        code, summary = cli_json("backup", "run", "--plan", str(project.plan))
        written_during = writer.rows_written
    assert code == 0, summary
    [volume] = summary["volumes"]
    assert volume["status"] == "done" and volume["databases"] == ["logs.db", "sonarr.db"]
    assert written_during > before  # the writer kept going while the snapshot ran

    code, listing = cli_json("backup", "list", "--plan", str(project.plan))
    assert code == 0
    [snapshot] = listing["snapshots"]
    assert snapshot["id"] == volume["snapshot"] and snapshot["files"] == volume["files"]
    assert snapshot["archiveBytes"] > 0 and snapshot["app"] == "sonarr"
    stem = f"backups/{VOLUME}/{snapshot['id']}"
    assert project.keys() == [f"{stem}.json", f"{stem}.manifest.gz", f"{stem}.tar.zst"]

    target = project.root / "restored"
    code, report = cli_json(
        "backup",
        "restore",
        "latest",
        "--plan",
        str(project.plan),
        "--volume",
        VOLUME,
        "--to",
        str(target),
    )
    assert code == 0, report
    assert report["ok"] and report["databases"] == ["logs.db", "sonarr.db"]
    assert not any(target.glob("*.db-wal")) and not any(target.glob("*.db-shm"))
    restored = rows(target / "sonarr.db")
    assert len(restored) >= before  # everything committed before the snapshot began
    assert sorted(restored) == list(range(1, len(restored) + 1))  # and a prefix, no gaps
    source = rows(database)
    assert all(source[key] == value for key, value in restored.items())
    assert rows(target / "logs.db", "History") == rows(project.config / "logs.db", "History")
    assert_same_tree(project.config, target, DATABASES)
    assert (target / "config.xml").stat().st_mtime_ns == 1_700_000_000_123_456_789


def test_restore_refuses_a_non_empty_target_and_force_replaces_it(project: Project) -> None:
    before = sorted(p.name for p in project.config.iterdir())
    record = create_snapshot(project.repository(), VOLUME, project.config)
    # Closed databases are read without creating -wal/-shm beside them: the source is untouched.
    assert sorted(p.name for p in project.config.iterdir()) == before
    assert {d["method"] for d in record["databases"]} == {"immutable"}
    target = project.root / "restored"
    target.mkdir()
    (target / "sonarr.db-wal").write_bytes(b"stale WAL of another database")
    result = run_cli(
        "backup",
        "restore",
        "latest",
        "--plan",
        str(project.plan),
        "--volume",
        VOLUME,
        "--to",
        str(target),
    )
    assert result.exit_code == 2
    assert "is not empty (1 entries)" in only_error_line(result)
    assert (target / "sonarr.db-wal").exists()
    result = run_cli(
        "backup",
        "restore",
        "latest",
        "--plan",
        str(project.plan),
        "--volume",
        VOLUME,
        "--to",
        str(target),
        "--force",
    )
    assert result.exit_code == 0, result.output
    assert not (target / "sonarr.db-wal").exists()  # a stale WAL would corrupt the restore
    assert_same_tree(project.config, target, DATABASES)


def test_verify_passes_then_catches_a_corrupted_archive(project: Project) -> None:
    record = create_snapshot(project.repository(), VOLUME, project.config)
    args = ("backup", "verify", record["id"], "--plan", str(project.plan), "--volume", VOLUME)
    code, report = cli_json(*args)
    assert code == 0 and report["ok"] and report["databases"] == ["logs.db", "sonarr.db"]
    key = record["archive"]["key"]
    s3 = project.s3()
    data = bytearray(s3.get_object(Bucket=project.bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    s3.put_object(Bucket=project.bucket, Key=key, Body=bytes(data))
    result = run_cli(*args)
    assert result.exit_code == 1
    *problems, last = result.output.strip().splitlines()
    assert problems == [
        "problem: the archive is damaged: zstd decompress error: Restored data doesn't match checksum"
    ]
    assert last.startswith(f"Error: snapshot {record['id']} of {VOLUME}: 1 problem(s), first: ")
    code, report = cli_json(*args)
    assert code == 1 and not report["ok"]
    assert any("damaged" in p or "differs" in p for p in report["problems"]), report


def test_verify_names_a_database_that_fails_its_integrity_check(
    project: Project, tmp_path: Path
) -> None:
    """A damaged database in the source is refused at backup time, naming it."""
    broken = project.config / "broken.db"
    make_damaged_database(broken)
    with pytest.raises(Exception, match=r"broken.db: the snapshot fails PRAGMA integrity_check"):
        create_snapshot(project.repository(), VOLUME, project.config)
    assert project.keys() == []  # nothing half-written is left


def make_damaged_database(path: Path) -> None:
    connection = sqlite3.connect(path)
    connection.execute("create table t (x integer primary key, y text)")
    connection.execute("create index ty on t (y)")
    connection.executemany(
        "insert into t (y) values (?)", [(f"row {i}" * 20,) for i in range(2000)]
    )
    connection.commit()
    connection.close()
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(3 * page + 100, 3 * page + 400):  # scribble over an index page
        data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def test_a_file_larger_than_the_part_size_round_trips(project: Project) -> None:
    big = project.config / "Backups" / "scheduled" / "big.zip"
    big.write_bytes(os.urandom(11 * 2**20 + 12345))  # incompressible: three 5 MiB parts
    repository = project.repository()
    record = create_snapshot(
        repository, VOLUME, project.config, SnapshotOptions(part_size=5 * 2**20)
    )
    assert record["archive"]["parts"] == 3
    head = project.s3().head_object(Bucket=project.bucket, Key=record["archive"]["key"])
    assert head["ContentLength"] == record["archive"]["bytes"]
    assert head["ETag"].strip('"').endswith("-3")
    target = project.root / "restored"
    code, report = cli_json(
        "backup",
        "restore",
        record["id"],
        "--plan",
        str(project.plan),
        "--volume",
        VOLUME,
        "--to",
        str(target),
    )
    assert code == 0, report
    assert (target / "Backups" / "scheduled" / "big.zip").read_bytes() == big.read_bytes()


def test_prune_keeps_what_the_policy_asks_and_never_the_newest(project: Project) -> None:
    repository = project.repository()
    nights = [datetime(2025, 1, 1, 3, tzinfo=UTC) + timedelta(days=d) for d in range(0, 40, 3)]
    for night in nights:
        create_snapshot(
            repository, VOLUME, project.config, clock=functools.partial(lambda n: n, night)
        )
    # A run that died long ago: an archive without its record.
    orphan = f"backups/{VOLUME}/20240101T030000Z.tar.zst"
    project.s3().put_object(Bucket=project.bucket, Key=orphan, Body=b"partial")
    base = ("backup", "prune", "--plan", str(project.plan), "--keep-daily", "2")
    code, dry = cli_json(*base, "--keep-weekly", "1", "--keep-monthly", "0", "--dry-run")
    assert code == 0
    [volume] = dry["volumes"]
    kept = [k["id"] for k in volume["kept"]]
    assert kept == ["20250209T030000Z", "20250206T030000Z"]  # newest two days (newest 3 rules)
    assert len(volume["deleted"]) == len(nights) - 2 and volume["incompleteDeleted"] == []
    assert len(project.keys()) == 3 * len(nights) + 1  # dry run: nothing deleted

    code, _ = cli_json(*base, "--keep-weekly", "0", "--keep-monthly", "2")
    assert code == 0
    code, listing = cli_json("backup", "list", "--plan", str(project.plan))
    ids = [s["id"] for s in listing["snapshots"]]
    assert ids == ["20250131T030000Z", "20250206T030000Z", "20250209T030000Z"]
    # The orphan's LastModified is now: younger than the grace period, so it stays.
    assert orphan in list(project.keys()) and listing["incomplete"] == {
        VOLUME: ["20240101T030000Z"]
    }
    code, again = cli_json(*base, "--keep-weekly", "0", "--keep-monthly", "2")
    assert again["volumes"][0]["deleted"] == []  # idempotent
    code, zero = cli_json(
        *base[:-2], "--keep-daily", "0", "--keep-weekly", "0", "--keep-monthly", "0"
    )
    assert [k["id"] for k in zero["volumes"][0]["kept"]] == ["20250209T030000Z"]


def test_error_paths_are_one_line_with_the_right_exit_code(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_snapshot(project.repository(), VOLUME, project.config)
    plan = str(project.plan)
    result = run_cli(
        "backup",
        "restore",
        "20200101T000000Z",
        "--plan",
        plan,
        "--volume",
        VOLUME,
        "--to",
        str(project.root / "x"),
    )
    assert result.exit_code == 2
    assert "no snapshot '20200101T000000Z' of volume 'sonarr-config'" in only_error_line(result)
    result = run_cli("backup", "verify", "latest", "--plan", plan, "--volume", "nope")
    assert result.exit_code == 2 and "no volume named 'nope'" in only_error_line(result)

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    result = run_cli("backup", "list", "--plan", plan)
    assert result.exit_code == 3
    assert "access denied (SignatureDoesNotMatch); check the S3 credentials" in only_error_line(
        result
    )
    result = run_cli("backup", "run", "--plan", plan)  # through the agent, as the CronJob runs it
    assert result.exit_code == 3
    line = result.output.strip().splitlines()[-1]
    assert (
        line.startswith("Error: backup failed for sonarr-config: ")
        and "check the S3 credentials" in line
    )
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", project.server.secret_key)

    missing = project.plan.read_text().replace(
        f"bucket: {project.bucket}\n    prefix: backups",
        "bucket: no-such-bucket\n    prefix: backups",
    )
    other = project.root / "plans" / "missing.yaml"
    other.write_text(missing)
    result = run_cli("backup", "list", "--plan", str(other))
    assert result.exit_code == 3 and "bucket not found" in only_error_line(result)

    no_backup = project.root / "plans" / "nobackup.yaml"
    text = project.plan.read_text()
    start = text.index("  backup:")
    end = text.index("  image:")
    no_backup.write_text(text[:start] + text[end:])
    result = run_cli("backup", "list", "--plan", str(no_backup))
    assert result.exit_code == 2 and "--backup-target" in only_error_line(result)


class _FullBucket:
    """A client whose uploads fail like a bucket over its quota."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def upload_part(self, **kwargs: Any) -> Any:
        from botocore.exceptions import ClientError

        error = {"Error": {"Code": "QuotaExceeded", "Message": "Bucket quota exceeded"}}
        raise ClientError(error, "UploadPart")  # type: ignore[arg-type]


def test_a_full_bucket_is_one_line_and_leaves_no_upload(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project.config / "big.bin").write_bytes(os.urandom(6 * 2**20))
    import migrator.objectstore

    real = migrator.objectstore.make_client
    monkeypatch.setattr(
        migrator.objectstore, "make_client", lambda *a, **k: _FullBucket(real(*a, **k))
    )
    result = run_cli(
        "agent",
        "backup",
        "--to",
        f"s3://{project.bucket}/backups",
        "--volume",
        VOLUME,
        str(project.config),
        "--part-size",
        "5",
        env={"AWS_ENDPOINT_URL": project.server.s3_endpoint},
    )
    assert result.exit_code == 3
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error: backup failed for sonarr-config: uploading s3://")
    assert line.endswith("the bucket is full (QuotaExceeded); free space or raise its quota")
    assert project.s3().list_multipart_uploads(Bucket=project.bucket).get("Uploads") is None
    assert project.keys() == []


def _can_mount_read_only(tmp_path: Path) -> list[str] | None:
    prefix = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    probe = tmp_path / "probe"
    probe.mkdir()
    script = f"mount --bind {probe} {probe} && mount -o remount,bind,ro {probe}"
    try:
        done = subprocess.run([*prefix, "sh", "-c", script], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return prefix if done.returncode == 0 else None


def test_snapshot_of_a_live_database_on_a_read_only_mount(project: Project, tmp_path: Path) -> None:
    """What the CronJob meets: the PVC mounted read-only while the app writes through its own
    read-write mount of the same file system (same kernel, so SQLite's locks are shared)."""
    prefix = _can_mount_read_only(tmp_path)
    if prefix is None:
        unavailable("cannot make a read-only bind mount here (needs unshare and mount)")
    mount = tmp_path / "mnt" / VOLUME
    mount.mkdir(parents=True)
    migrator_bin = str(Path(sys.executable).parent / "migrator")
    script = 'mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" && shift 2 && exec "$@"'
    command = [
        *prefix,
        "sh",
        "-c",
        script,
        "sh",
        str(project.config),
        str(mount),
        migrator_bin,
        "agent",
        "backup",
        "--to",
        f"s3://{project.bucket}/backups",
        "--volume",
        VOLUME,
        str(mount),
        "--tmp-dir",
        str(tmp_path),
    ]
    env = {**os.environ, "AWS_ENDPOINT_URL": project.server.s3_endpoint}
    database = project.config / "sonarr.db"
    with DatabaseWriter(database):
        while committed_rows(database) < 20:
            pass
        before = committed_rows(database)
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[-1]["ok"] is True
    repository = project.repository()
    snapshot = repository.resolve(VOLUME, "latest")
    methods = {d["path"]: d["method"] for d in snapshot.record["databases"]}  # type: ignore[index]
    assert methods["sonarr.db"] == "read-only"  # the live one, through its -shm, read-only
    target = tmp_path / "restored"
    code, report = cli_json(
        "backup",
        "restore",
        "latest",
        "--plan",
        str(project.plan),
        "--volume",
        VOLUME,
        "--to",
        str(target),
    )
    assert code == 0, report
    assert len(rows(target / "sonarr.db")) >= before


def test_restore_drill_passes_and_fails_on_damage_or_stale_backups(project: Project) -> None:
    record = create_snapshot(project.repository(), VOLUME, project.config)
    scratch = project.root / "scratch"
    base = (
        "agent",
        "backup-drill",
        "--from",
        f"s3://{project.bucket}/backups",
        "--volume",
        VOLUME,
        "--scratch",
        str(scratch),
    )
    env = {"AWS_ENDPOINT_URL": project.server.s3_endpoint}
    result = run_cli(*base, "--max-age-hours", "48", env=env)
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert events[-1]["ok"] and events[-1]["volumes"][0]["databases"] == ["logs.db", "sonarr.db"]
    assert not (scratch / VOLUME).exists()  # cleaned up

    result = run_cli(*base, "--max-age-hours", "0", env=env)  # backups that stopped running
    assert result.exit_code == 1
    assert "are the nightly backups failing?" in result.output.strip().splitlines()[-1]

    project.s3().put_object(Bucket=project.bucket, Key=record["archive"]["key"], Body=b"garbage")
    result = run_cli(*base, env=env)
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: restore drill failed for sonarr-config: the archive is damaged")


def test_offsite_backups_go_to_another_s3_with_their_own_keys(
    tmp_path: Path,
    s3_env: SeaweedFS,
    bucket: str,
    offsite_seaweedfs: SeaweedFS,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The off-site copy of 3-2-1: copies on one S3, backups on another, keys of each apart."""
    from tests.conftest import make_bucket

    offsite_bucket = make_bucket(offsite_seaweedfs)
    config = make_source(tmp_path / "src" / "sonarr")
    result = run_cli(
        "plan",
        "--source-dir",
        f"{VOLUME}={config}",
        "--target",
        f"s3://{bucket}/migrated",
        "--s3-endpoint",
        s3_env.s3_endpoint,
        "--no-probe",
        "--backup-target",
        f"s3://{offsite_bucket}/arr",
        "--backup-endpoint",
        offsite_seaweedfs.s3_endpoint,
        cwd=tmp_path,
    )
    assert result.exit_code == 0, result.output
    plan = str(tmp_path / "plans" / "local.yaml")
    backup = yaml.safe_load(Path(plan).read_text())["spec"]["backup"]
    assert backup == {
        "url": f"s3://{offsite_bucket}/arr",
        "bucket": offsite_bucket,
        "prefix": "arr",
        "endpoint": offsite_seaweedfs.s3_endpoint,
    }

    # Without the off-site keys: one line saying which variables to set, nothing uploaded.
    for command in (["backup", "run"], ["backup", "list"]):
        result = run_cli(*command, "--plan", plan)
        assert result.exit_code == 2, result.output
        assert "MIGRATOR_BACKUP_AWS_ACCESS_KEY_ID" in only_error_line(result)

    monkeypatch.setenv("MIGRATOR_BACKUP_AWS_ACCESS_KEY_ID", offsite_seaweedfs.access_key)
    monkeypatch.setenv("MIGRATOR_BACKUP_AWS_SECRET_ACCESS_KEY", offsite_seaweedfs.secret_key)
    code, outcome = cli_json("backup", "run", "--plan", plan)
    assert code == 0, outcome
    [volume] = outcome["volumes"]
    offsite = boto3.client(
        "s3",
        endpoint_url=offsite_seaweedfs.s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=offsite_seaweedfs.access_key,
        aws_secret_access_key=offsite_seaweedfs.secret_key,
    )
    keys = [o["Key"] for o in offsite.list_objects_v2(Bucket=offsite_bucket)["Contents"]]
    assert any(k.startswith(f"arr/{VOLUME}/") and volume["snapshot"] in k for k in keys)
    home = boto3.client(
        "s3",
        endpoint_url=s3_env.s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=s3_env.access_key,
        aws_secret_access_key=s3_env.secret_key,
    )
    assert home.list_objects_v2(Bucket=bucket).get("KeyCount") == 0  # nothing on the copies' S3

    code, listing = cli_json("backup", "list", "--plan", plan)
    assert code == 0 and [s["id"] for s in listing["snapshots"]] == [volume["snapshot"]]
    restored = tmp_path / "restored"
    code, report = cli_json(
        "backup", "restore", "latest", "--plan", plan, "--volume", VOLUME, "--to", str(restored)
    )
    assert code == 0 and report["ok"], report
    assert (restored / "config.xml").read_bytes() == (config / "config.xml").read_bytes()
    for key in (offsite_seaweedfs.secret_key, s3_env.secret_key):
        assert key not in Path(plan).read_text()
