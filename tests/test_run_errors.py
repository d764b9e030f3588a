"""`migrator run` when the storage fails: one `Error:` line, exit 3, in bounded time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from migrator.seaweedfs import SeaweedFS
from tests.helpers import run_cli
from tests.test_run_local import make_plan


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def run_process(
    plan: Path, env: dict[str, str], ceiling: float, *args: str
) -> tuple[int, str, str]:
    """``migrator run`` as a process (its own session, stopped with its children past
    ``ceiling`` seconds so that a hang fails the test instead of the session)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "migrator", "run", "--plan", str(plan), *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=ceiling)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise AssertionError(f"migrator run did not end within {ceiling:.0f} s") from None
    return process.returncode, out, err


def test_an_endpoint_on_a_closed_port_fails_in_one_line_within_30_s(
    tmp_path: Path, s3_env: SeaweedFS, bucket: str
) -> None:
    plan, _tree = make_plan(tmp_path, s3_env, bucket, "--volume", "prowlarr-config")
    endpoint = f"http://127.0.0.1:{closed_port()}"
    for rendered in [plan, *(tmp_path / "jobs").rglob("*.yaml")]:  # the plan and its Jobs
        rendered.write_text(rendered.read_text().replace(s3_env.s3_endpoint, endpoint))
    keys = {"AWS_ACCESS_KEY_ID": s3_env.access_key, "AWS_SECRET_ACCESS_KEY": s3_env.secret_key}
    started = time.monotonic()
    code, out, err = run_process(plan, keys, 120, "--phase", "config")
    elapsed = time.monotonic() - started
    assert code == 3, err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "connection refused" in errors[0], err
    assert "Traceback" not in err + out
    assert elapsed < 30, f"took {elapsed:.0f} s"


def test_wrong_keys_print_one_line_and_the_reason_again_with_verbose(
    tmp_path: Path, s3_env: SeaweedFS, bucket: str
) -> None:
    plan, _tree = make_plan(tmp_path, s3_env, bucket, "--volume", "prowlarr-config")
    wrong = {"AWS_ACCESS_KEY_ID": s3_env.access_key, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    result = run_cli("run", "--plan", str(plan), "--phase", "config", env=wrong)
    assert result.exit_code == 3
    lines = result.stderr.splitlines()
    about = [line for line in lines if "credentials" in line or "SignatureDoesNotMatch" in line]
    assert len(about) == 1 and about[0].startswith("Error: copy failed for prowlarr-config"), lines
    assert "SignatureDoesNotMatch" in about[0] and "credentials" in about[0]
    assert not [line for line in lines if "poster" in line], lines  # no line per file
    assert "not-the-secret" not in result.output

    verbose = run_cli("run", "--plan", str(plan), "--phase", "config", "-v", env=wrong)
    assert verbose.exit_code == 3
    details = verbose.stderr.splitlines()
    shown = [line for line in details if "SignatureDoesNotMatch" in line and "Error:" not in line]
    assert shown and shown[0].startswith("prowlarr-config: failed: "), details
