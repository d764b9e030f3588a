"""Faults between the agent and its destination (issue #12): a TCP proxy on loopback that the
test controls (tests/faultproxy.py) in front of a real SeaweedFS, SIGKILLs of the server and of
the agent, a destination disk that fills up. Each ends with every file copied and verify clean,
or with one line and exit 3 in bounded time, and nothing recorded as copied that is not stored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from migrator.copystate import decode_state
from migrator.seaweedfs import SeaweedFS
from tests.faultproxy import FaultProxy
from tests.helpers import run_cli, unavailable

pytestmark = pytest.mark.timeout(300)


def write_files(root: Path, count: int, size: int, prefix: str = "file") -> dict[str, bytes]:
    """``count`` files of ``size`` distinct bytes under ``root``; their relative paths and data."""
    files = {}
    for index in range(count):
        relpath = f"d{index % 3}/{prefix}-{index:03d}.bin"
        data = (index.to_bytes(4, "big") * (size // 4 + 1))[:size]
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_bytes(data)
        files[relpath] = data
    return files


def agent(
    source: Path, dest: str, *args: str, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """``migrator agent copy`` as a Job runs it."""
    return subprocess.run(
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
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a local destination that fills up."""
    if os.geteuid() != 0:
        unavailable("mounting a tmpfs needs root")  # the CI and dev containers run as root
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def recorded(state_dir: Path) -> dict[str, Any]:
    """The copy state the agent saved under ``--state`` (path -> signature)."""
    files = list(state_dir.glob("copy-state*.tsv.gz"))
    return decode_state(files[0].read_bytes()) if files else {}


def whole_files(root: Path, files: dict[str, bytes]) -> set[str]:
    """The files of ``files`` stored under ``root`` with every byte right."""
    return {
        name
        for name, data in files.items()
        if (root / name).is_file() and (root / name).read_bytes() == data
    }


def test_disk_full_at_a_local_destination_fails_in_one_line_with_exit_3(
    tmp_path: Path, small_disk: Path
) -> None:
    source, state, dest = tmp_path / "src", tmp_path / "state", small_disk / "vol"
    files = write_files(source, 12, 300 * 1024)  # 3.6 MB into 2 MiB
    started = time.monotonic()
    result = agent(source, str(dest), "--state", str(state))
    assert time.monotonic() - started < 120
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert f"the destination {dest} is full (no space left on device)" in lines[0]
    assert "grow the volume or free space there" in lines[0]
    # the state claims only files that are there whole (and some did fit)
    claimed = set(recorded(state))
    assert claimed and claimed <= whole_files(dest, files) and claimed != set(files)

    # with room again, a re-run copies the rest
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    again = agent(source, str(dest), "--state", str(state))
    assert again.returncode == 0, again.stderr[-2000:]
    assert events(again.stdout)[-1]["copied"] == len(files) - len(claimed)
    assert whole_files(dest, files) == set(files) == set(recorded(state))


# --- faults between the agent and a real SeaweedFS ---------------------------------------------


def s3_port(server: SeaweedFS) -> int:
    return int(server.s3_endpoint.rsplit(":", 1)[1])


def agent_env(server: SeaweedFS, endpoint: str) -> dict[str, str]:
    """The rclone remote ``s3:`` a copy Job gets, pointed at ``endpoint`` (the proxy)."""
    return {
        **os.environ,
        "RCLONE_CONFIG_S3_TYPE": "s3",
        "RCLONE_CONFIG_S3_PROVIDER": "SeaweedFS",
        "RCLONE_CONFIG_S3_ENDPOINT": endpoint,
        "RCLONE_CONFIG_S3_ACCESS_KEY_ID": server.access_key,
        "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": server.secret_key,
    }


def s3(server: SeaweedFS) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.s3_endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
    )


def stored_whole(server: SeaweedFS, bucket: str, prefix: str, files: dict[str, bytes]) -> set[str]:
    """The files stored at ``s3://bucket/prefix/`` with every byte right (read past the proxy)."""
    client = s3(server)
    whole = set()
    for name, data in files.items():
        try:
            body = client.get_object(Bucket=bucket, Key=f"{prefix}/{name}")["Body"].read()
        except client.exceptions.NoSuchKey:
            continue
        if body == data:
            whole.add(name)
    return whole


def state_in_s3(server: SeaweedFS, bucket: str) -> dict[str, Any]:
    try:
        body = s3(server).get_object(Bucket=bucket, Key="state/copy-state.tsv.gz")["Body"].read()
    except s3(server).exceptions.NoSuchKey:
        return {}
    return decode_state(body)


@pytest.fixture
def proxy(seaweedfs: SeaweedFS) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", s3_port(seaweedfs)) as running:
        yield running


def copy_through(
    proxy: FaultProxy, server: SeaweedFS, source: Path, bucket: str
) -> subprocess.CompletedProcess[str]:
    return agent(
        source,
        f"s3:{bucket}/vol",
        "--state",
        f"s3:{bucket}/state",
        env=agent_env(server, proxy.url),
    )


def test_slow_down_bursts_are_ridden_out(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str, proxy: FaultProxy
) -> None:
    files = write_files(tmp_path / "src", 20, 20 * 1024)
    proxy.slow_down(12, method="PUT")  # a burst over the first writes, several per file
    result = copy_through(proxy, seaweedfs, tmp_path / "src", bucket)
    assert result.returncode == 0, result.stderr[-2000:]
    assert proxy.answered_slow_down == 12
    assert stored_whole(seaweedfs, bucket, "vol", files) == set(files)
    assert set(state_in_s3(seaweedfs, bucket)) == set(files)


def test_connection_cut_mid_body_is_retried(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str, proxy: FaultProxy
) -> None:
    files = write_files(tmp_path / "src", 6, 400 * 1024)
    proxy.cut_request_after(300 * 1024)  # inside the body of the first PUT to pass 300 kB
    result = copy_through(proxy, seaweedfs, tmp_path / "src", bucket)
    assert result.returncode == 0, result.stderr[-2000:]
    assert proxy.cuts == 1
    assert stored_whole(seaweedfs, bucket, "vol", files) == set(files)
    assert set(state_in_s3(seaweedfs, bucket)) == set(files)


def test_connection_cut_mid_response_is_retried(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str, proxy: FaultProxy
) -> None:
    files = write_files(tmp_path / "src", 6, 100 * 1024)
    proxy.cut_after(700)  # the first connection to have 700 B of answers: mid-response
    result = copy_through(proxy, seaweedfs, tmp_path / "src", bucket)
    assert result.returncode == 0, result.stderr[-2000:]
    assert proxy.cuts == 1
    assert stored_whole(seaweedfs, bucket, "vol", files) == set(files)
    assert set(state_in_s3(seaweedfs, bucket)) == set(files)


def wait_until(condition: Callable[[], bool], what: str, ceiling: float = 120) -> None:
    deadline = time.monotonic() + ceiling
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {ceiling:.0f} s: {what}")
        time.sleep(0.02)


def start_agent(source: Path, bucket: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "migrator",
            "agent",
            "copy",
            "--source",
            str(source),
            "--dest",
            f"s3:{bucket}/vol",
            "--state",
            f"s3:{bucket}/state",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def objects_not_matching(server: SeaweedFS, bucket: str, files: dict[str, bytes]) -> list[str]:
    """Objects under ``vol/`` whose bytes are not the source's (a partial upload kept)."""
    client = s3(server)
    listed = client.list_objects_v2(Bucket=bucket, Prefix="vol/").get("Contents", [])
    wrong = []
    for item in listed:
        name = item["Key"].removeprefix("vol/")
        body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        if files.get(name) != body:
            wrong.append(name)
    return wrong


def test_agent_killed_mid_file_then_rerun_completes(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str, proxy: FaultProxy
) -> None:
    source = tmp_path / "src"
    files = write_files(source, 8, 16 * 1024, prefix="small")
    files |= write_files(source, 1, 4 * 2**20, prefix="big")  # a PUT sent with sendfile
    proxy.throttle(1 * 2**20)
    process = start_agent(source, bucket, agent_env(seaweedfs, proxy.url))
    try:
        wait_until(lambda: proxy.bytes_up > 2 * 2**20, "2 MiB sent")  # inside the big file
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the agent and its rclone, by our own pid
        process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    proxy.resume()
    # what is stored is whole, and the state claims nothing that is not
    assert objects_not_matching(seaweedfs, bucket, files) == []
    assert set(state_in_s3(seaweedfs, bucket)) <= stored_whole(seaweedfs, bucket, "vol", files)

    again = copy_through(proxy, seaweedfs, source, bucket)
    assert again.returncode == 0, again.stderr[-2000:]
    assert stored_whole(seaweedfs, bucket, "vol", files) == set(files)
    assert set(state_in_s3(seaweedfs, bucket)) == set(files)


@pytest.mark.seaweedfs  # its own server, which it kills
@pytest.mark.slow
def test_seaweedfs_killed_and_restarted_mid_copy(tmp_path: Path) -> None:
    server = SeaweedFS(tmp_path / "weed").start()  # our own: the session one is never killed
    try:
        s3(server).create_bucket(Bucket="killed")
        source = tmp_path / "src"
        files = write_files(source, 30, 100 * 1024)
        with FaultProxy("127.0.0.1", s3_port(server)) as proxy:
            proxy.throttle(1 * 2**20)  # about 3 s of copying
            process = start_agent(source, "killed", agent_env(server, proxy.url))
            wait_until(lambda: proxy.bytes_up > 600 * 1024, "600 kB sent")
            assert server.process is not None
            os.killpg(server.process.pid, signal.SIGKILL)  # our own server, by its pid
            server.process.wait(timeout=30)
            server.process = None
            proxy.resume()
            server.start()
            started = time.monotonic()
            _out, err = process.communicate(timeout=240)
            # it rides the restart out, or stops in one line with exit 3, in bounded time
            assert time.monotonic() - started < 200
            if process.returncode != 0:
                assert process.returncode == 3, err[-2000:]
                lines = err.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("Error: "), err
                assert objects_not_matching(server, "killed", files) == []
                claimed = set(state_in_s3(server, "killed"))
                assert claimed <= stored_whole(server, "killed", "vol", files)
                again = copy_through(proxy, server, source, "killed")
                assert again.returncode == 0, again.stderr[-2000:]
        assert stored_whole(server, "killed", "vol", files) == set(files)
        assert set(state_in_s3(server, "killed")) == set(files)
    finally:
        server.stop()


def test_stalled_server_mid_copy_fails_in_one_line_in_bounded_time(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str, proxy: FaultProxy
) -> None:
    source = tmp_path / "src"
    files = write_files(source, 20, 200 * 1024)
    proxy.throttle(1 * 2**20)
    # --timeout is rclone's idle timeout; the agent's own uploader honours it too
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "migrator",
            "agent",
            "copy",
            "--source",
            str(source),
            "--dest",
            f"s3:{bucket}/vol",
            "--state",
            f"s3:{bucket}/state",
            "--timeout",
            "2s",
        ],
        env=agent_env(seaweedfs, proxy.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_until(lambda: proxy.bytes_up > 500 * 1024, "500 kB sent")
        proxy.stall()
        started = time.monotonic()
        out, err = process.communicate(timeout=150)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    # bounded: two 2 s timeouts per file in flight, then the progress is saved (rclone's
    # 10 s connect timeout plus 60 s idle timeout bound that); generous for a busy machine
    assert time.monotonic() - started < 140
    assert process.returncode == 3, out[-2000:] + err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert "timed out" in lines[0] and "Errno" not in lines[0]
    proxy.resume()
    assert objects_not_matching(seaweedfs, bucket, files) == []
    assert set(state_in_s3(seaweedfs, bucket)) <= stored_whole(seaweedfs, bucket, "vol", files)


# --- migrator run and verify with the plan's endpoint on the proxy ---------------------------


def planned_through(tmp_path: Path, server: SeaweedFS, bucket: str, proxy: FaultProxy) -> Path:
    source = tmp_path / "media"
    write_files(source, 12, 8 * 1024, prefix="small")
    write_files(source, 3, 1536 * 1024, prefix="big")  # streamed: over verify's 1 MiB buffer
    result = run_cli(
        "plan",
        "--source-dir",
        f"media={source}",
        "--target",
        f"s3://{bucket}/p",
        "--s3-endpoint",
        proxy.url,
        cwd=tmp_path,
    )
    assert result.exit_code == 0, result.output
    return tmp_path / "plans" / "local.yaml"


def verify_json(plan: Path) -> tuple[int, dict[str, Any], str]:
    result = run_cli("verify", "--plan", str(plan), "--json", "--no-cache")
    return result.exit_code, json.loads(result.stdout or "{}"), result.stderr


@pytest.mark.parametrize("cut", [300, 5000, 400 * 1024])  # a head, a small body, a big body
def test_verify_rides_out_a_connection_cut(
    tmp_path: Path, s3_env: SeaweedFS, bucket: str, proxy: FaultProxy, cut: int
) -> None:
    plan = planned_through(tmp_path, s3_env, bucket, proxy)
    assert run_cli("run", "--plan", str(plan), "--phase", "all", "--cutover").exit_code == 0
    proxy.cut_after(cut)
    code, report, err = verify_json(plan)
    assert proxy.cuts == 1
    assert code == 0 and report["ok"] is True, (report, err)


def test_verify_rides_out_a_slow_down_burst(
    tmp_path: Path, s3_env: SeaweedFS, bucket: str, proxy: FaultProxy
) -> None:
    plan = planned_through(tmp_path, s3_env, bucket, proxy)
    assert run_cli("run", "--plan", str(plan), "--phase", "all", "--cutover").exit_code == 0
    proxy.slow_down(3, method="GET")
    code, report, err = verify_json(plan)
    assert proxy.answered_slow_down == 3
    assert code == 0 and report["ok"] is True, (report, err)
