"""Owner, mode and mtime as a real ``weed mount`` of the migrated bucket shows them (issue #11).

The bucket is mounted with the real FUSE client (what seaweedfs-csi-driver runs) and read as each
app's uid/gid with ``setpriv``, after copies by both upload paths (native uploader and rclone).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from migrator import filer
from migrator.seaweedfs import SeaweedFS, find_weed, free_port_pairs
from tests.helpers import run_cli, unavailable

SONARR, RADARR = 1000, 911
# (relative path, uid, gid, mode); directories end with "/"
TREE = [
    ("shows/", SONARR, SONARR, 0o2750),  # setgid: new files inherit the group
    ("shows/Show/", SONARR, SONARR, 0o750),
    ("shows/Show/ep1.mkv", SONARR, SONARR, 0o640),
    ("shows/Show/ep1.nfo", SONARR, SONARR, 0o640),
    ("movies/", RADARR, RADARR, 0o750),
    ("movies/Movie/", RADARR, RADARR, 0o750),
    ("movies/Movie/movie.mkv", RADARR, RADARR, 0o640),
    ("private/", 0, 0, 0o700),
    ("private/notes.txt", 0, 0, 0o600),
    ("shared.txt", SONARR, RADARR, 0o644),
]
LINKS = [("shows/Show/latest.mkv", "ep1.mkv", SONARR, SONARR)]
BASE_MTIME_NS = 1_500_000_000_123_456_789


def grpc(server: SeaweedFS) -> str:
    return server.filer_grpc


def make_tree(root: Path) -> Path:
    """A media tree with three owners, 0640/0750/0700 modes, a setgid directory and a symlink."""
    root.mkdir(parents=True)
    for index, (rel, uid, gid, _mode) in enumerate(TREE):
        path = root / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.write_bytes(f"{rel}\n".encode() * (index + 1))
        os.chown(path, uid, gid)
    for rel, target, uid, gid in LINKS:
        (root / rel).symlink_to(target)
        os.lchown(root / rel, uid, gid)
    # modes and mtimes last: creating children changes a directory's mtime
    for index, (rel, _uid, _gid, mode) in enumerate(reversed(TREE)):
        (root / rel).chmod(mode)
        mtime = BASE_MTIME_NS + index * 86_400 * 10**9
        os.utime(root / rel, ns=(mtime, mtime))
    return root


def rclone_env(server: SeaweedFS) -> dict[str, str]:
    return {
        "RCLONE_CONFIG_S3_TYPE": "s3",
        "RCLONE_CONFIG_S3_PROVIDER": "SeaweedFS",
        "RCLONE_CONFIG_S3_ENDPOINT": server.s3_endpoint,
        "RCLONE_CONFIG_S3_ACCESS_KEY_ID": server.access_key,
        "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": server.secret_key,
    }


@contextmanager
def weed_mount(server: SeaweedFS, filer_path: str, work: Path) -> Iterator[Path]:
    """A real ``weed mount`` of ``filer_path``; unmounted and its process stopped by pid after."""
    if not Path("/dev/fuse").exists():
        unavailable("/dev/fuse is absent on this machine: a weed mount cannot run here")
    # apps must reach the mount point: pytest's own tmp directories are root-only (0700)
    mountpoint = Path(tempfile.mkdtemp(prefix="migrator-mnt-"))
    mountpoint.chmod(0o755)
    cache = work / "mount-cache"
    cache.mkdir()
    log = (work / "mount.log").open("wb")
    process = subprocess.Popen(
        [
            find_weed(),
            "mount",
            f"-filer=127.0.0.1:{server.ports['filer']}",
            f"-dir={mountpoint}",
            f"-filer.path={filer_path}",
            f"-cacheDir={cache}",
            "-cacheMetaTtlSec=1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mountpoint):
            assert process.poll() is None, (work / "mount.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "weed mount did not come up within 60 s"
            time.sleep(0.1)
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if not os.path.ismount(mountpoint):
            mountpoint.rmdir()


def as_user(uid: int, *command: str) -> subprocess.CompletedProcess[str]:
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to read the mount as an app's uid"
    return subprocess.run(
        [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command],
        capture_output=True,
        text=True,
        check=False,
    )


def shown(mount: Path, rel: str) -> tuple[int, int, int, int]:
    """(uid, gid, permission bits, mtime in whole seconds) as the mount shows ``rel``."""
    st = os.lstat(mount / rel)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_mtime_ns // 10**9


def expected(source: Path, rel: str) -> tuple[int, int, int, int]:
    st = os.lstat(source / rel)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_mtime_ns // 10**9


def assert_mount_matches(source: Path, mount: Path) -> None:
    mismatches = {
        rel: (shown(mount, rel.rstrip("/")), expected(source, rel.rstrip("/")))
        for rel, *_ in TREE
        if shown(mount, rel.rstrip("/")) != expected(source, rel.rstrip("/"))
    }
    assert not mismatches, mismatches
    for rel, target, uid, gid in LINKS:  # a real symlink, as the app wrote it
        st = os.lstat(mount / rel)
        assert stat.S_ISLNK(st.st_mode) and os.readlink(mount / rel) == target, rel
        assert (st.st_uid, st.st_gid) == (uid, gid), rel


def assert_apps_read_their_files(mount: Path) -> None:
    sonarr = as_user(SONARR, "cat", str(mount / "shows/Show/ep1.mkv"))
    assert sonarr.returncode == 0 and sonarr.stdout.startswith("shows/Show/ep1.mkv"), sonarr
    through_link = as_user(SONARR, "cat", str(mount / "shows/Show/latest.mkv"))
    assert through_link.stdout == sonarr.stdout, through_link
    listing = as_user(SONARR, "ls", str(mount / "shows/Show"))
    assert listing.returncode == 0 and "ep1.nfo" in listing.stdout.split(), listing
    radarr = as_user(RADARR, "cat", str(mount / "movies/Movie/movie.mkv"))
    assert radarr.returncode == 0 and radarr.stdout.startswith("movies/Movie/movie.mkv"), radarr
    # group read on a file of another owner; and the modes keep each app out of the other's tree
    assert as_user(RADARR, "cat", str(mount / "shared.txt")).returncode == 0
    assert as_user(RADARR, "ls", str(mount / "shows")).returncode != 0
    assert as_user(SONARR, "cat", str(mount / "movies/Movie/movie.mkv")).returncode != 0
    assert as_user(SONARR, "ls", str(mount / "private")).returncode != 0


@pytest.mark.parametrize("uploader", ["auto", "rclone"])
def test_copy_sets_what_a_weed_mount_shows(
    tmp_path: Path, s3_env: SeaweedFS, bucket: str, uploader: str
) -> None:
    source = make_tree(tmp_path / "src")
    result = run_cli(
        "agent",
        "copy",
        "--source",
        str(source),
        "--dest",
        f"s3:{bucket}/media",
        "--state",
        f"s3:{bucket}/.migrator/media",
        "--uploader",
        uploader,
        "--filer",
        grpc(s3_env),
        "--",
        "--links",
        "--metadata",
        env=rclone_env(s3_env),
    )
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    done = next(e for e in events if e["event"] == "done")
    assert done["native"] == (done["copied"] if uploader == "auto" else 0)

    with weed_mount(s3_env, f"/buckets/{bucket}/media", tmp_path) as mount:
        assert_mount_matches(source, mount)
        assert_apps_read_their_files(mount)
        # the bytes are intact: updating the entries kept their chunks
        for rel, *_ in TREE:
            if not rel.endswith("/"):
                assert (mount / rel).read_bytes() == (source / rel).read_bytes(), rel
    attributes = next(e for e in events if e["event"] == "attributes")
    assert attributes["errors"] == 0 and attributes["updated"] > len(TREE) - 1


def test_metadata_only_change_is_corrected_on_the_next_copy(
    tmp_path: Path, s3_env: SeaweedFS, bucket: str
) -> None:
    source = make_tree(tmp_path / "src")
    args = [
        "agent",
        "copy",
        "--source",
        str(source),
        "--dest",
        f"s3:{bucket}/media",
        "--state",
        f"s3:{bucket}/.migrator/media",
        "--filer",
        grpc(s3_env),
        "--",
        "--links",
    ]
    assert run_cli(*args, env=rclone_env(s3_env)).exit_code == 0
    # chown and chmod only: size, mtime and content unchanged
    nfo = source / "shows/Show/ep1.nfo"
    os.chown(nfo, RADARR, RADARR)
    nfo.chmod(0o600)
    (source / "movies").chmod(0o755)
    again = run_cli(*args, env=rclone_env(s3_env))
    assert again.exit_code == 0, again.output
    events = [json.loads(line) for line in again.stdout.splitlines() if line.startswith("{")]
    assert next(e for e in events if e["event"] == "done")["copied"] == 0  # no content re-sent
    with weed_mount(s3_env, f"/buckets/{bucket}/media", tmp_path) as mount:
        assert shown(mount, "shows/Show/ep1.nfo") == expected(source, "shows/Show/ep1.nfo")
        assert shown(mount, "movies") == expected(source, "movies")
        assert as_user(SONARR, "cat", str(mount / "shows/Show/ep1.nfo")).returncode != 0
        assert as_user(RADARR, "cat", str(mount / "shows/Show/ep1.nfo")).returncode != 0  # 0750 dir
    assert next(e for e in events if e["event"] == "attributes")["updated"] == 2


def test_entry_edit_keeps_every_other_field() -> None:
    """The wire-level edit changes the attribute fields only; chunks and unknown fields survive."""
    chunk = filer.encode_bytes_field(1, b"3,01637037d6") + filer.encode_varint_field(3, 5)
    attrs = (
        filer.encode_varint_field(1, 5)  # file_size
        + filer.encode_varint_field(3, 0o660)
        + filer.encode_bytes_field(7, b"video/x-matroska")
        + filer.encode_varint_field(99, 7)  # a field this codec does not know
    )
    entry = (
        filer.encode_bytes_field(1, b"ep1.mkv")
        + filer.encode_bytes_field(3, chunk)
        + filer.encode_bytes_field(4, attrs)
        + filer.encode_bytes_field(5, b"\n\x0fX-Amz-Meta-Mtime\x12\x011")
    )
    wanted = filer.Attributes(mode=0o2640, uid=911, gid=1000, mtime_ns=BASE_MTIME_NS)
    edited = filer.with_attributes(entry, wanted)
    assert filer.attributes_of(edited) == wanted
    assert filer.chunk_fids(edited) == ["3,01637037d6"]
    fields = {f.number: f for f in filer.parse(edited)}
    assert fields[3].raw == filer.parse(entry)[1].raw and fields[5].raw == filer.parse(entry)[3].raw
    new_attrs = {f.number: f.value for f in filer.parse(bytes(fields[4].value))}
    assert new_attrs[1] == 5 and new_attrs[7] == b"video/x-matroska" and new_attrs[99] == 7


def test_fid_spelling_matches_the_filer() -> None:
    # volume 3, key 0x01637037, cookie 0xd6xxxxxx: leading zero key bytes are dropped
    assert filer._format_fid(3, 0x01, 0x637037D6) == "3,01637037d6"
    assert filer._format_fid(12, 0x1234567890, 0x0000FFFF) == "12,12345678900000ffff"


def plan_with_filer(tmp_path: Path, server: SeaweedFS, bucket: str, source: Path) -> Path:
    result = run_cli(
        "plan",
        "--source-dir",
        f"media={source}",
        "--target",
        f"s3://{bucket}/arr",
        "--s3-endpoint",
        server.s3_endpoint,
        "--filer-grpc",
        grpc(server),
        cwd=tmp_path,
    )
    assert result.exit_code == 0, result.output
    return tmp_path / "plans" / "local.yaml"


def verify(plan: Path) -> tuple[int, dict[str, Any]]:
    result = run_cli("verify", "--plan", str(plan), "--strict-metadata", "--json")
    return result.exit_code, json.loads(result.stdout)


def test_plan_run_verify_and_the_mount_agree(
    tmp_path: Path, s3_env: SeaweedFS, bucket: str
) -> None:
    source = make_tree(tmp_path / "src")
    plan = plan_with_filer(tmp_path, s3_env, bucket, source)
    (source / "movies/Movie/old.mkv").symlink_to("movie.mkv")
    preseed = run_cli("run", "--plan", str(plan), "--phase", "all", "--json")
    assert preseed.exit_code == 0, preseed.output
    (source / "movies/Movie/old.mkv").unlink()  # the cutover removes the link and its object
    (source / "movies/Movie/movie.nfo").write_bytes(b"new at the cutover")
    os.chown(source / "movies/Movie/movie.nfo", RADARR, RADARR)
    os.chmod(source / "movies/Movie/movie.nfo", 0o640)
    os.chmod(source / "shared.txt", 0o640)  # metadata only
    cutover = run_cli("run", "--plan", str(plan), "--phase", "all", "--cutover", "--json")
    assert cutover.exit_code == 0, cutover.output
    code, report = verify(plan)
    assert code == 0, report
    with weed_mount(s3_env, f"/buckets/{bucket}/arr/media", tmp_path) as mount:
        assert_mount_matches(source, mount)
        assert_apps_read_their_files(mount)
        assert sorted(os.listdir(mount / "movies/Movie")) == ["movie.mkv", "movie.nfo"]
        new = as_user(RADARR, "cat", str(mount / "movies/Movie/movie.nfo"))
        assert new.returncode == 0 and new.stdout == "new at the cutover", new

    # What the mount shows is what verify compares: an entry put back to what the S3 gateway
    # makes (uid 0, 0660), while its x-amz-meta-* still says 1000/0640, is named.
    with filer.FilerClient(grpc(s3_env)) as client:
        report_ = filer.apply_attributes(
            client,
            f"/buckets/{bucket}/arr/media",
            {"shows/Show/ep1.mkv": filer.Attributes(0o660, 0, 0, BASE_MTIME_NS)},
        )
    assert report_.updated == 1
    os.chmod(source / "movies/Movie/movie.mkv", 0o600)  # and a chmod at source since the copy
    os.chown(source / "private", SONARR, SONARR)  # and a directory handed to another app
    code, report = verify(plan)
    assert code == 1, report
    kinds = {(d["path"], d["kind"]) for d in report["differences"]}
    assert kinds == {
        ("shows/Show/ep1.mkv", "mode"),
        ("shows/Show/ep1.mkv", "owner"),
        ("shows/Show/ep1.mkv", "mtime"),
        ("movies/Movie/movie.mkv", "mode"),
        ("private/", "owner"),
    }, kinds


def test_an_unreachable_filer_fails_in_one_line(
    tmp_path: Path, s3_env: SeaweedFS, bucket: str
) -> None:
    source = make_tree(tmp_path / "src")
    closed = free_port_pairs(1)[0]  # nothing listens there
    result = run_cli(
        "agent",
        "copy",
        "--source",
        str(source),
        "--dest",
        f"s3:{bucket}/media",
        "--state",
        f"s3:{bucket}/.migrator/media",
        "--filer",
        f"127.0.0.1:{closed}",
        env={**rclone_env(s3_env), "MIGRATOR_DEBUG": ""},
    )
    assert result.exit_code == 3, result.output
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"Error: filer gRPC 127.0.0.1:{closed}: "), error
    assert "Traceback" not in result.output


def test_sharded_copies_together_set_every_entry(
    tmp_path: Path, s3_env: SeaweedFS, bucket: str
) -> None:
    """Indexed Jobs: each shard sets its own files and directories; together, all of them. A
    symlink entry NAME and its NAME.rclonelink may fall to different shards (as these do)."""
    source = make_tree(tmp_path / "src")
    (source / "movies/Movie/trailer.mkv").symlink_to("movie.mkv")  # kept
    (source / "movies/Movie/old.mkv").symlink_to("movie.mkv")  # removed before the cutover

    def copy(order: tuple[str, ...], *extra: str) -> None:
        for shard in order:
            result = run_cli(
                "agent",
                "copy",
                "--source",
                str(source),
                "--dest",
                f"s3:{bucket}/media",
                "--state",
                f"s3:{bucket}/.migrator/media",
                "--shard",
                shard,
                *extra,
                "--filer",
                grpc(s3_env),
                "--",
                "--links",
                env=rclone_env(s3_env),
            )
            assert result.exit_code == 0, result.output

    copy(("0/3", "1/3", "2/3"))
    (source / "movies/Movie/old.mkv").unlink()
    copy(("1/3", "2/3", "0/3"), "--delete")  # the shard of "trailer.mkv" syncs last
    with weed_mount(s3_env, f"/buckets/{bucket}/media", tmp_path) as mount:
        assert_mount_matches(source, mount)
        assert os.readlink(mount / "movies/Movie/trailer.mkv") == "movie.mkv"
        assert sorted(os.listdir(mount / "movies/Movie")) == [
            "movie.mkv",
            "trailer.mkv",
            "trailer.mkv.rclonelink",
        ]
