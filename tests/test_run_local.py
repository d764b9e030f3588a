"""`migrator run` with the local executor: the rendered Jobs run on this host against real SeaweedFS."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from migrator.rclone import find_rclone
from migrator.samples import DatabaseWriter, SampleSizes, make_config_dir, make_sample_tree
from migrator.seaweedfs import SeaweedFS
from tests.helpers import run_cli

SMALL = SampleSizes(
    covers=150, db_rows=500, episodes=3, episode_bytes=256 * 1024, movies=1, movie_bytes=512 * 1024
)


def rclone_env(server: SeaweedFS) -> dict[str, str]:
    return {
        **os.environ,
        "RCLONE_CONFIG_S3_TYPE": "s3",
        "RCLONE_CONFIG_S3_PROVIDER": "SeaweedFS",
        "RCLONE_CONFIG_S3_ENDPOINT": server.s3_endpoint,
        "RCLONE_CONFIG_S3_ACCESS_KEY_ID": server.access_key,
        "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": server.secret_key,
    }


def rclone(server: SeaweedFS, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_rclone(), *args], env=rclone_env(server), capture_output=True, text=True
    )


def assert_identical(server: SeaweedFS, source: Path, remote: str) -> None:
    """Independent proof: rclone reads every byte back and compares, symlinks included."""
    result = rclone(server, "check", "--download", "--links", "--one-way", str(source), remote)
    assert result.returncode == 0, result.stderr[-2000:]
    extra = rclone(server, "check", "--download", "--links", str(source), remote)
    assert extra.returncode == 0, extra.stderr[-2000:]


def make_plan(tmp_path: Path, server: SeaweedFS, bucket: str, *extra: str) -> tuple[Path, Any]:
    tree = make_sample_tree(tmp_path / "src", SMALL)
    args = ["plan", "--target", f"s3://{bucket}/arr", "--s3-endpoint", server.s3_endpoint]
    for name, path in tree.source_dirs().items():
        args += ["--source-dir", f"{name}={path}"]
    result = run_cli(*args, *extra, cwd=tmp_path)
    assert result.exit_code == 0, result.output
    return tmp_path / "plans" / "local.yaml", tree


def run(plan: Path, *args: str) -> dict[str, Any]:
    result = run_cli("run", "--plan", str(plan), "--json", *args)
    summary: dict[str, Any] = json.loads(result.stdout)
    summary["exit_code"] = result.exit_code
    return summary


def by_volume(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["volume"]: v for v in summary["volumes"]}


def test_preseed_change_cutover_and_verify(tmp_path: Path, s3_env: SeaweedFS, bucket: str) -> None:
    plan, tree = make_plan(tmp_path, s3_env, bucket)
    sonarr = tree.config_dirs["sonarr"]
    with DatabaseWriter(sonarr / "sonarr.db") as writer:
        first = run(plan, "--phase", "all")
        assert first["ok"] and first["exit_code"] == 0
        assert writer.rows_written > 0
    volumes = by_volume(first)
    assert volumes["media"]["copied"] == volumes["media"]["files"] > 0
    # live databases were left for the cutover: the pre-seed copied everything else
    listing = rclone(s3_env, "lsf", "-R", f"s3:{bucket}/arr/sonarr-config").stdout.split()
    assert "config.xml" in listing and "sonarr.db" not in listing and "logs.db" not in listing

    # a change at source: same size new mtime, a new file, a deleted file
    poster = sonarr / "MediaCover" / "1" / "poster-0.jpg"
    data = bytearray(poster.read_bytes())
    data[-1] ^= 0xFF
    poster.write_bytes(bytes(data))
    (sonarr / "MediaCover" / "1" / "fanart.jpg").write_bytes(b"new")
    (tree.media_dir / "movies" / "Movie's Name 0 (1980)" / "movie.nfo").unlink()

    again = by_volume(run(plan, "--phase", "all"))
    assert (
        again["sonarr-config"]["copied"] == 2
    )  # the changed poster and the new fanart, nothing else
    assert (
        again["media"]["copied"] == 0 and again["media"]["deleted"] == 0
    )  # pre-seed never deletes

    cutover = run(plan, "--phase", "all", "--cutover")
    assert cutover["ok"], cutover
    assert by_volume(cutover)["media"]["deleted"] == 1
    for name, path in tree.source_dirs().items():
        assert_identical(s3_env, path, f"s3:{bucket}/arr/{name}")
    # metadata travels with the objects
    meta = json.loads(
        rclone(s3_env, "lsjson", "--metadata", f"s3:{bucket}/arr/sonarr-config/config.xml").stdout
    )[0]
    st = (sonarr / "config.xml").stat()
    assert meta["Metadata"]["mode"] == oct(st.st_mode)[2:] and meta["Metadata"]["uid"] == str(
        st.st_uid
    )
    # the copied database is consistent
    restored = tmp_path / "restored.db"
    db = subprocess.run(
        [find_rclone(), "cat", f"s3:{bucket}/arr/sonarr-config/sonarr.db"],
        env=rclone_env(s3_env),
        capture_output=True,
    )
    restored.write_bytes(db.stdout)
    connection = sqlite3.connect(restored)
    assert connection.execute("pragma integrity_check").fetchone() == ("ok",)
    assert connection.execute("select count(*) from Writes").fetchone()[0] == writer.rows_written
    connection.close()

    status = json.loads((plan.parent / "local.state.json").read_text())
    assert status["volumes"]["media"]["cutover"]["status"] == "done"
    skipped = run(plan, "--phase", "media", "--cutover")
    assert by_volume(skipped)["media"]["status"] == "skipped"


def test_a_replanned_target_is_cut_over_and_verified_again(
    tmp_path: Path, s3_env: SeaweedFS, bucket: str
) -> None:
    """A plan re-written under the same name with another target keeps its journal: the old
    target's cutover must not make run skip the new one (it would copy nothing), and the old
    target's verify must not count for it."""
    plan, tree = make_plan(tmp_path, s3_env, bucket)
    assert run(plan, "--phase", "media", "--cutover")["ok"]
    assert run_cli("verify", "--plan", str(plan), "--volume", "media").exit_code == 0

    args = ["plan", "--target", f"s3://{bucket}/moved", "--s3-endpoint", s3_env.s3_endpoint]
    for name, path in tree.source_dirs().items():
        args += ["--source-dir", f"{name}={path}"]
    assert run_cli(*args, cwd=tmp_path).exit_code == 0
    status = json.loads(run_cli("status", "--plan", str(plan), "--json").stdout)
    media = next(v for v in status["volumes"] if v["volume"] == "media")
    assert media["state"] == "planned" and "route changed" in media["detail"]

    cutover = run(plan, "--phase", "media", "--cutover")
    assert cutover["ok"], cutover
    volume = by_volume(cutover)["media"]
    assert volume["status"] == "done" and volume["copied"] == volume["files"] > 0
    assert any(f"s3://{bucket}/arr/media" in note for note in cutover["notes"]), cutover["notes"]
    assert_identical(s3_env, tree.media_dir, f"s3:{bucket}/moved/media")
    assert run_cli("verify", "--plan", str(plan), "--volume", "media").exit_code == 0
    journal = json.loads((plan.parent / "local.state.json").read_text())["volumes"]["media"]
    assert {journal[step]["route"] for step in ("cutover", "verify")} == {
        f"{tree.media_dir} -> s3://{bucket}/moved/media at {s3_env.s3_endpoint}"
    }
    assert by_volume(run(plan, "--phase", "media", "--cutover"))["media"]["status"] == "skipped"


def test_noop_rerun_copies_nothing(tmp_path: Path, s3_env: SeaweedFS, bucket: str) -> None:
    # How fast it is, is bench/copy.py's no-op re-run row (a wall-clock bound here would break
    # on a busy machine).
    plan, _tree = make_plan(tmp_path, s3_env, bucket)
    assert run(plan, "--phase", "config")["ok"]
    second = run(plan, "--phase", "config")
    assert second["ok"]
    assert second["volumes"] and all(v["copied"] == 0 for v in second["volumes"])


def test_dry_run_changes_nothing(tmp_path: Path, s3_env: SeaweedFS, bucket: str) -> None:
    plan, _tree = make_plan(tmp_path, s3_env, bucket)
    result = run_cli("run", "--plan", str(plan), "--phase", "all", "--dry-run")
    assert result.exit_code == 0
    assert "(dry run) would run Job migrator-copy-media" in result.output
    assert rclone(s3_env, "lsf", "-R", f"s3:{bucket}").stdout == ""


def test_wrong_credentials_fail_with_exit_3(
    tmp_path: Path, s3_env: SeaweedFS, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan, _tree = make_plan(tmp_path, s3_env, bucket, "--volume", "prowlarr-config")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    result = run_cli("run", "--plan", str(plan), "--phase", "config")
    assert result.exit_code == 3
    assert "copy failed for prowlarr-config" in result.output
    assert "not-the-secret" not in result.output


def test_missing_credentials_are_bad_input(
    tmp_path: Path, s3_env: SeaweedFS, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan, _tree = make_plan(tmp_path, s3_env, bucket, "--volume", "prowlarr-config")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    result = run_cli("run", "--plan", str(plan), "--phase", "config")
    assert result.exit_code == 2
    assert "set AWS_ACCESS_KEY_ID" in result.output


def _many_small_files(tmp_path: Path, count: int = 4000) -> Path:
    """One app's config directory with ``count`` small MediaCover files."""
    sizes = SampleSizes(covers=count, cover_bytes=(1024, 2048), db_rows=10)
    return make_config_dir(tmp_path / "src" / "radarr-config", "radarr", sizes, random.Random(7))


def _start_run(plan: Path, server: SeaweedFS, *args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "migrator", "run", "--plan", str(plan), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for_copied_objects(
    server: SeaweedFS, remote: str, count: int, timeout: float = 60
) -> None:
    """Wait until ``remote`` (s3:BUCKET/PREFIX) holds more than ``count`` objects."""
    import boto3

    bucket, _, prefix = remote.removeprefix("s3:").partition("/")
    client = boto3.client(
        "s3",
        endpoint_url=server.s3_endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (
            client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/", MaxKeys=count + 1)[
                "KeyCount"
            ]
            > count
        ):
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} objects appeared in {remote}")


def test_interrupted_run_resumes_without_redoing_work(
    tmp_path: Path, s3_env: SeaweedFS, bucket: str
) -> None:
    radarr = _many_small_files(tmp_path)
    result = run_cli(
        "plan",
        "--source-dir",
        f"radarr-config={radarr}",
        "--target",
        f"s3://{bucket}",
        "--s3-endpoint",
        s3_env.s3_endpoint,
        cwd=tmp_path,
    )
    assert result.exit_code == 0
    plan = tmp_path / "plans" / "local.yaml"
    process = _start_run(plan, s3_env, "--phase", "config", "--json")
    _wait_for_copied_objects(s3_env, f"s3:{bucket}/radarr-config", 200)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    process.wait(timeout=60)
    assert process.returncode != 0
    done_before = len(
        rclone(s3_env, "lsf", "-R", "--files-only", f"s3:{bucket}/radarr-config").stdout.split()
    )
    assert 0 < done_before < 4001
    resumed = run(plan, "--phase", "config")
    assert resumed["ok"]
    volume = by_volume(resumed)["radarr-config"]
    assert volume["copied"] <= volume["files"] - done_before + 50  # at most a few in flight redone
    assert run(plan, "--phase", "config", "--cutover")["ok"]  # the databases come at cutover
    assert_identical(s3_env, radarr, f"s3:{bucket}/radarr-config")


def test_two_concurrent_runs_are_refused(tmp_path: Path, s3_env: SeaweedFS, bucket: str) -> None:
    radarr = _many_small_files(tmp_path)
    assert (
        run_cli(
            "plan",
            "--source-dir",
            f"radarr-config={radarr}",
            "--target",
            f"s3://{bucket}",
            "--s3-endpoint",
            s3_env.s3_endpoint,
            cwd=tmp_path,
        ).exit_code
        == 0
    )
    plan = tmp_path / "plans" / "local.yaml"
    first = _start_run(plan, s3_env, "--phase", "config")
    try:
        _wait_for_copied_objects(s3_env, f"s3:{bucket}/radarr-config", 10)
        second = run_cli("run", "--plan", str(plan), "--phase", "config")
        assert second.exit_code == 3
        assert "another migrator run of this plan is in progress (pid" in second.output
    finally:
        first.wait(timeout=120)
    assert first.returncode == 0


def test_seaweedfs_restart_mid_run_still_completes(tmp_path: Path, bucket: str) -> None:
    server = SeaweedFS(tmp_path / "weed").start()
    try:
        client_env = {
            "AWS_ACCESS_KEY_ID": server.access_key,
            "AWS_SECRET_ACCESS_KEY": server.secret_key,
        }
        rclone(server, "mkdir", "s3:restart")
        radarr = _many_small_files(tmp_path, 2500)
        assert (
            run_cli(
                "plan",
                "--source-dir",
                f"radarr-config={radarr}",
                "--target",
                "s3://restart",
                "--s3-endpoint",
                server.s3_endpoint,
                cwd=tmp_path,
                env=client_env,
            ).exit_code
            == 0
        )
        plan = tmp_path / "plans" / "local.yaml"
        process = _start_run(plan, server, "--phase", "config", "--json")
        _wait_for_copied_objects(server, "s3:restart/radarr-config", 100)
        server.stop(timeout=2)
        server.start()
        _out, err = process.communicate(timeout=300)
        if process.returncode != 0:  # rclone gave up during the outage: a re-run resumes
            assert "re-run" in err
            assert (
                run_cli("run", "--plan", str(plan), "--phase", "config", env=client_env).exit_code
                == 0
            )
        assert (
            run_cli(
                "run", "--plan", str(plan), "--phase", "config", "--cutover", env=client_env
            ).exit_code
            == 0
        )
        assert_identical(server, radarr, "s3:restart/radarr-config")
    finally:
        server.stop()


# Names rclone spells differently from the file system (invalid UTF-8 as U+201B and hex digits in
# keys; control characters as symbols and its quote rune doubled in listings) next to ordinary odd
# ones. Each must copy, re-run as a no-op, survive the cutover's deletion pass and verify clean.
EXOTIC_NAMES = [
    b"caf\xe9 (latin-1).nfo",
    "quote \u201b here.txt".encode(),
    "full\uff0fwidth slash.txt".encode(),
    "\uff0e".encode(),
    "symbol \u2400 null.txt".encode(),
    b"tab\there.txt",
    "ünïcødé 名前.txt".encode(),
    b"trailing space ",
]


def test_names_rclone_encodes_copy_rerun_cutover_and_verify(
    tmp_path: Path, s3_env: SeaweedFS, bucket: str
) -> None:
    source = tmp_path / "src"
    (source / "dir").mkdir(parents=True)
    for index, name in enumerate(EXOTIC_NAMES):
        (Path(os.fsdecode(bytes(source / "dir") + b"/" + name))).write_bytes(b"x" * index)
    result = run_cli(
        "plan",
        "--source-dir",
        f"media={source}",
        "--target",
        f"s3://{bucket}/odd",
        "--s3-endpoint",
        s3_env.s3_endpoint,
        cwd=tmp_path,
    )
    assert result.exit_code == 0, result.output
    plan = tmp_path / "plans" / "local.yaml"
    first = run(plan, "--phase", "media")
    assert first["exit_code"] == 0, first
    assert by_volume(first)["media"]["copied"] == len(EXOTIC_NAMES)
    again = run(plan, "--phase", "media")
    assert by_volume(again)["media"]["copied"] == 0
    cutover = run(plan, "--phase", "media", "--cutover")
    assert cutover["exit_code"] == 0, cutover
    assert by_volume(cutover)["media"]["deleted"] == 0
    # rclone itself cannot read a local name holding its quote rune (it looks for the name with
    # the rune doubled): it checks the others, and migrator's verify checks them all.
    remote = f"s3:{bucket}/odd/media"
    checked = rclone(s3_env, "check", "--download", str(source), remote, "--exclude", "*\u201b*")
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert "7 matching files" in checked.stderr
    result = run_cli("verify", "--plan", str(plan), "--json", "--no-cache")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["volumes"][0]["files"] == len(EXOTIC_NAMES)


def agent_copy(server: SeaweedFS, source: Path, dest: str, *args: str) -> dict[str, Any]:
    """``migrator agent copy`` as a Job runs it; its ``done`` event."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "migrator",
            "agent",
            "copy",
            "--source",
            str(source),
            "--dest",
            dest,
            *args,
        ],
        env=rclone_env(server),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    done: dict[str, Any] = events[-1]
    assert done["event"] == "done"
    return done


def test_the_deletion_pass_never_deletes_snapshots(
    tmp_path: Path, s3_env: SeaweedFS, bucket: str
) -> None:
    """Issue #12 item 1: backups sharing a volume's prefix (an older plan, or one that bypassed
    the plan's check) were deleted by the cutover as extras. Snapshot-shaped keys now stay."""
    from migrator.objectstore import S3Settings, make_client

    source = tmp_path / "src"
    source.mkdir()
    (source / "config.xml").write_text("<Config/>")
    (source / "gone.txt").write_text("deleted from the source before the cutover")
    dest, state = f"s3:{bucket}/mig/sonarr-config", f"s3:{bucket}/mig/.migrator/sonarr-config"
    assert agent_copy(s3_env, source, dest, "--state", state)["copied"] == 2
    client = make_client(S3Settings.from_environment(s3_env.s3_endpoint))
    snapshots = [  # what 'backup run' writes with --backup-target s3://BUCKET/mig, and .../mig/X
        f"mig/sonarr-config/20250114T030000Z{suffix}"
        for suffix in (".tar.zst", ".manifest.gz", ".json")
    ] + ["mig/sonarr-config/sonarr-config/20250115T030000Z.json"]
    for key in snapshots:
        client.put_object(Bucket=bucket, Key=key, Body=b"snapshot")
    client.put_object(Bucket=bucket, Key="mig/sonarr-config/20250114T030000Z.txt", Body=b"x")
    (source / "gone.txt").unlink()
    done = agent_copy(s3_env, source, dest, "--state", state, "--delete")
    assert done["deleted"] == 2  # gone.txt, and the extra that only looks like an id
    listed = client.list_objects_v2(Bucket=bucket, Prefix="mig/")
    keys = sorted(obj["Key"] for obj in listed.get("Contents", []))
    assert keys == sorted(
        [
            *snapshots,
            "mig/sonarr-config/config.xml",
            "mig/.migrator/sonarr-config/copy-state.tsv.gz",
        ]
    )


# SeaweedFS stores a key's backslash as a slash: without rclone's BackSlash encoding these were
# stored under other names, deleted by the cutover, and reported missing by verify forever.
BACKSLASH_NAMES = [
    "win\\path.txt",
    "ends with\\",
    "dir\\with\\backslashes/inner.txt",
    "full\uff3cwidth reverse solidus.txt",
    "both \\ and \uff3c.txt",
]


def _backslash_tree(source: Path) -> None:
    source.mkdir()
    for index, name in enumerate(BACKSLASH_NAMES):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(b"b" * (index + 1))
    (source / "empty\\dir").mkdir()


def _backslash_plan(tmp_path: Path, server: SeaweedFS, bucket: str) -> Path:
    result = run_cli(
        "plan",
        "--source-dir",
        f"media={tmp_path / 'src'}",
        "--target",
        f"s3://{bucket}/bs",
        "--s3-endpoint",
        server.s3_endpoint,
        cwd=tmp_path,
    )
    assert result.exit_code == 0, result.output
    return tmp_path / "plans" / "local.yaml"


def _assert_backslash_keys(server: SeaweedFS, bucket: str) -> None:
    from migrator.objectstore import S3Settings, make_client

    client = make_client(S3Settings.from_environment(server.s3_endpoint))
    listed = client.list_objects_v2(Bucket=bucket, Prefix="bs/media/")
    keys = sorted(obj["Key"][len("bs/media/") :] for obj in listed.get("Contents", []))
    assert keys == sorted(
        [  # as rclone --s3-encoding ...,BackSlash names them
            "win\uff3cpath.txt",
            "ends with\uff3c",
            "dir\uff3cwith\uff3cbackslashes/inner.txt",
            "full\u201b\uff3cwidth reverse solidus.txt",
            "both \uff3c and \u201b\uff3c.txt",
            "empty\uff3cdir/",
        ]
    )


def test_backslash_names_copy_rerun_cutover_and_verify(
    tmp_path: Path, s3_env: SeaweedFS, bucket: str
) -> None:
    """Issue #12 item 6, with the copy agent's own uploader (what `run` uses)."""
    _backslash_tree(tmp_path / "src")
    plan = _backslash_plan(tmp_path, s3_env, bucket)
    first = run(plan, "--phase", "media")
    assert first["exit_code"] == 0, first
    assert by_volume(first)["media"]["copied"] == len(BACKSLASH_NAMES)
    assert by_volume(run(plan, "--phase", "media"))["media"]["copied"] == 0
    cutover = run(plan, "--phase", "media", "--cutover")
    assert cutover["exit_code"] == 0, cutover
    assert by_volume(cutover)["media"]["deleted"] == 0
    _assert_backslash_keys(s3_env, bucket)
    remote = f"s3:{bucket}/bs/media"
    checked = rclone(
        s3_env,
        "check",
        "--download",
        "--s3-encoding",
        "Slash,InvalidUtf8,Dot,BackSlash",
        str(tmp_path / "src"),
        remote,
    )
    assert checked.returncode == 0, checked.stderr[-2000:]
    result = run_cli("verify", "--plan", str(plan), "--json", "--no-cache")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["volumes"][0]["files"] == len(BACKSLASH_NAMES) + 1


def test_backslash_names_with_rclone_moving_every_file(
    tmp_path: Path, s3_env: SeaweedFS, bucket: str
) -> None:
    """Issue #12 item 6 with `--uploader rclone`: the same keys, so verify and the sync agree."""
    _backslash_tree(tmp_path / "src")
    plan = _backslash_plan(tmp_path, s3_env, bucket)
    dest, state = f"s3:{bucket}/bs/media", f"s3:{bucket}/bs/.migrator/media"
    args = ["--state", state, "--uploader", "rclone"]
    assert agent_copy(s3_env, tmp_path / "src", dest, *args)["copied"] == len(BACKSLASH_NAMES)
    assert agent_copy(s3_env, tmp_path / "src", dest, *args)["copied"] == 0
    assert agent_copy(s3_env, tmp_path / "src", dest, *args, "--delete")["deleted"] == 0
    _assert_backslash_keys(s3_env, bucket)
    result = run_cli("verify", "--plan", str(plan), "--json", "--no-cache")
    assert result.exit_code == 0, result.output
