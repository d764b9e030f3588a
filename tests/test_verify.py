"""`migrator verify` through the CLI: a copy in real SeaweedFS checked file by file."""

from __future__ import annotations

import io
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import boto3
import pytest

from migrator.plan import load_plan, volumes_in_phase
from migrator.samples import SampleSizes, make_sample_tree
from migrator.seaweedfs import SeaweedFS
from migrator.workflows.run import make_context
from migrator.workflows.verify import VolumeVerdict, verify_plan
from tests.helpers import run_cli

SIZES = SampleSizes(
    covers=60, db_rows=100, episodes=2, episode_bytes=9 * 2**20, movies=1, movie_bytes=300 * 1024
)


@pytest.fixture
def copied(tmp_path: Path, s3_env: SeaweedFS, bucket: str) -> dict[str, Any]:
    """A sample arr tree planned and copied (cutover) into ``bucket``."""
    tree = make_sample_tree(tmp_path / "src", SIZES)
    args = ["plan", "--target", f"s3://{bucket}/arr", "--s3-endpoint", s3_env.s3_endpoint]
    for name, path in tree.source_dirs().items():
        args += ["--source-dir", f"{name}={path}"]
    assert run_cli(*args, cwd=tmp_path).exit_code == 0
    plan = tmp_path / "plans" / "local.yaml"
    assert run_cli("run", "--plan", str(plan), "--phase", "all", "--cutover").exit_code == 0
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_env.s3_endpoint,
        aws_access_key_id=s3_env.access_key,
        aws_secret_access_key=s3_env.secret_key,
        region_name="us-east-1",
    )
    return {"plan": plan, "tree": tree, "s3": s3, "bucket": bucket}


def verify(plan: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = run_cli("verify", "--plan", str(plan), "--json", *args)
    return result.exit_code, json.loads(result.stdout)


def test_identical_copy_passes_and_reverify_reads_nothing_again(copied: dict[str, Any]) -> None:
    code, report = verify(copied["plan"])
    assert code == 0 and report["ok"] is True
    volumes = {v["name"]: v for v in report["volumes"]}
    assert set(volumes) == {"media", "prowlarr-config", "radarr-config", "sonarr-config"}
    assert all(v["differences"] == 0 for v in volumes.values())
    assert volumes["media"]["files"] > 5  # episodes, movie, nfo, symlink, empty dirs, 0-byte file
    assert report["differences"] == []
    code, again = verify(copied["plan"])
    assert code == 0
    for volume in again["volumes"]:
        assert volume["hashedFiles"] == {"source": 0, "destination": 0}, volume
    _code, fresh = verify(copied["plan"], "--no-cache", "--volume", "media")
    assert fresh["volumes"][0]["hashedFiles"]["destination"] > 0
    # --no-cache reads everything again and saves the fresh hashes: the next verify is cached.
    _code, after = verify(copied["plan"], "--volume", "media")
    assert after["volumes"][0]["hashedFiles"] == {"source": 0, "destination": 0}
    state = json.loads((copied["plan"].parent / "local.state.json").read_text())
    assert state["volumes"]["media"]["verify"]["ok"] is True


def test_each_kind_of_damage_is_named(copied: dict[str, Any], tmp_path: Path) -> None:
    s3, bucket = copied["s3"], copied["bucket"]
    prefix = "arr/sonarr-config/"
    keys = sorted(
        o["Key"]
        for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "MediaCover/")["Contents"]
    )
    flipped, truncated, deleted = keys[0], keys[1], keys[2]
    body = bytearray(s3.get_object(Bucket=bucket, Key=flipped)["Body"].read())
    body[len(body) // 2] ^= 0x01
    s3.put_object(Bucket=bucket, Key=flipped, Body=bytes(body))
    whole = s3.get_object(Bucket=bucket, Key=truncated)["Body"].read()
    s3.put_object(Bucket=bucket, Key=truncated, Body=whole[:-10])
    s3.delete_object(Bucket=bucket, Key=deleted)
    s3.put_object(Bucket=bucket, Key=prefix + "stray file.txt", Body=b"not at source")
    # a large media file changed in its last chunk: found even when the cache has seen it before
    episode = next(
        k["Key"]
        for k in s3.list_objects_v2(Bucket=bucket, Prefix="arr/media/tv/")["Contents"]
        if k["Key"].endswith(".mkv")
    )
    data = bytearray(s3.get_object(Bucket=bucket, Key=episode)["Body"].read())
    data[-1] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=episode, Body=bytes(data))

    report_file = tmp_path / "differences.tsv"
    code, report = verify(copied["plan"], "--report", str(report_file))
    assert code == 1 and report["ok"] is False
    found = {(d["kind"], d["volume"], d["path"]) for d in report["differences"]}

    def rel(key: str, pre: str = prefix) -> str:
        return key[len(pre) :]

    assert ("checksum", "sonarr-config", rel(flipped)) in found
    assert ("size", "sonarr-config", rel(truncated)) in found
    assert ("missing", "sonarr-config", rel(deleted)) in found
    assert ("extra", "sonarr-config", "stray file.txt") in found
    assert ("checksum", "media", rel(episode, "arr/media/")) in found
    assert len(found) == 5
    assert len(report_file.read_text().splitlines()) == 5
    sonarr = next(v for v in report["volumes"] if v["name"] == "sonarr-config")
    assert sonarr["differences"] == 4
    human = run_cli("verify", "--plan", str(copied["plan"]), "--volume", "sonarr-config")
    assert human.exit_code == 1
    assert f"checksum  sonarr-config: {rel(flipped)}" in human.output


def test_sample_is_deterministic_and_says_so(copied: dict[str, Any]) -> None:
    code, first = verify(copied["plan"], "--sample", "0.3", "--volume", "sonarr-config")
    _code, second = verify(copied["plan"], "--sample", "0.3", "--volume", "sonarr-config")
    assert code == 0 and first["sample"] == 0.3
    assert 0 < first["volumes"][0]["files"] < 190
    assert first["volumes"][0]["files"] == second["volumes"][0]["files"]
    human = run_cli(
        "verify", "--plan", str(copied["plan"]), "--sample", "0.3", "--volume", "sonarr-config"
    )
    assert "This was a SAMPLE" in human.output


def test_bad_sample_and_unknown_volume_are_bad_input(copied: dict[str, Any]) -> None:
    result = run_cli("verify", "--plan", str(copied["plan"]), "--sample", "2")
    assert result.exit_code == 2 and "must be a fraction" in result.output
    result = run_cli("verify", "--plan", str(copied["plan"]), "--volume", "nope")
    assert result.exit_code == 2 and "no volume named 'nope'" in result.output


def test_report_that_cannot_be_written_is_bad_input(
    tmp_path: Path, s3_env: SeaweedFS, bucket: str
) -> None:
    """Issue #12: `verify --report /proc/nope.txt` exited 3; a bad path is bad input (2)."""
    (tmp_path / "src").mkdir()
    planned = run_cli(
        "plan",
        "--source-dir",
        f"data={tmp_path / 'src'}",
        "--target",
        f"s3://{bucket}",
        "--s3-endpoint",
        s3_env.s3_endpoint,
        cwd=tmp_path,
    )
    assert planned.exit_code == 0, planned.output
    result = run_cli(
        "verify",
        "--plan",
        str(tmp_path / "plans" / "local.yaml"),
        "--report",
        "/proc/nope.txt",
        "--executor",
        "local",
    )
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ")
    assert "/proc/nope.txt" in result.output


def test_verify_runs_the_reviewed_job_file(copied: dict[str, Any]) -> None:
    """The Job in jobs/<plan>/verify-media.yaml is what runs: pointed (by an edit) at another
    volume's prefix, the media volume's verify finds differences; restored, it passes again."""
    path = copied["plan"].parent.parent / "jobs" / "local" / "verify-media.yaml"
    reviewed = path.read_text()
    assert f"s3://{copied['bucket']}/arr/media" in reviewed
    path.write_text(reviewed.replace("/arr/media", "/arr/sonarr-config"))
    code, report = verify(copied["plan"], "--volume", "media", "--no-cache")
    assert code == 1, report
    assert report["volumes"][0]["differences"] > 0
    assert {d["kind"] for d in report["differences"]} >= {"missing", "extra"}
    path.write_text(reviewed)
    code, report = verify(copied["plan"], "--volume", "media", "--no-cache")
    assert code == 0 and report["ok"] is True and "notes" not in report


def test_a_plan_written_before_verify_jobs_still_verifies_with_a_hint(
    copied: dict[str, Any],
) -> None:
    import yaml

    plan_path = copied["plan"]
    document = yaml.safe_load(plan_path.read_text())
    for volume in document["spec"]["volumes"]:
        (plan_path.parent.parent / "jobs" / "local" / volume["copy"]["jobs"].pop("verify")).unlink()
    plan_path.write_text(yaml.safe_dump(document, sort_keys=False))
    code, report = verify(plan_path, "--volume", "media")
    assert code == 0 and report["ok"] is True
    [note] = report["notes"]
    assert "re-run 'migrator plan'" in note
    human = run_cli("verify", "--plan", str(plan_path), "--volume", "media")
    assert human.exit_code == 0
    assert "re-run 'migrator plan'" in human.stdout.replace("\n", " ")


class RecordingObserver:
    """Records what verify_plan tells the UI; with a barrier, a volume's start waits until every
    volume has started (a one-at-a-time verify breaks it: BrokenBarrierError)."""

    def __init__(self, barrier: threading.Barrier | None = None) -> None:
        self.barrier, self.lock = barrier, threading.Lock()
        self.seen: list[tuple[str, str]] = []

    def volume_started(self, volume: str) -> None:
        with self.lock:
            self.seen.append(("started", volume))
        if self.barrier is not None:
            self.barrier.wait(timeout=120)

    def hashing(self, volume: str, event: dict[str, Any]) -> None:
        pass

    def volume_finished(self, volume: str, outcome: VolumeVerdict) -> None:
        with self.lock:
            self.seen.append(("finished", volume))


def test_volumes_are_verified_side_by_side_with_the_results_of_one_at_a_time(
    copied: dict[str, Any],
) -> None:
    s3, bucket = copied["s3"], copied["bucket"]
    s3.put_object(Bucket=bucket, Key="arr/media/stray.nfo", Body=b"not at source")
    s3.put_object(Bucket=bucket, Key="arr/radarr-config/stray.xml", Body=b"not at source")
    plan = load_plan(copied["plan"])
    volumes = volumes_in_phase(plan.model["spec"]["volumes"], "all")
    assert len(volumes) == 4

    def run(observer: RecordingObserver, parallel: int | None) -> tuple[dict[str, Any], list[str]]:
        stream = io.StringIO()
        report = verify_plan(
            plan,
            volumes,
            make_context(plan, {}),
            observer,
            cache=False,
            report_stream=stream,
            parallel=parallel,
        )
        return report.as_dict(), sorted(stream.getvalue().splitlines())

    together = RecordingObserver(threading.Barrier(len(volumes)))
    side_by_side, side_by_side_lines = run(together, None)
    # every volume started before any finished
    assert [kind for kind, _ in together.seen[: len(volumes)]] == ["started"] * len(volumes)
    alone = RecordingObserver()
    one_at_a_time, one_at_a_time_lines = run(alone, 1)
    names = [v["name"] for v in volumes]
    assert alone.seen == [(kind, name) for name in names for kind in ("started", "finished")]
    assert side_by_side == one_at_a_time
    assert [v["name"] for v in side_by_side["volumes"]] == names
    assert side_by_side["differences"] == [
        {"volume": "media", "path": "stray.nfo", "kind": "extra"},
        {"volume": "radarr-config", "path": "stray.xml", "kind": "extra"},
    ]
    assert (
        side_by_side_lines
        == one_at_a_time_lines
        == ["extra\tmedia\tstray.nfo", "extra\tradarr-config\tstray.xml"]
    )
    state = json.loads((copied["plan"].parent / "local.state.json").read_text())
    assert {name: state["volumes"][name]["verify"]["ok"] for name in names} == {
        "media": False,
        "prowlarr-config": True,
        "radarr-config": False,
        "sonarr-config": True,
    }


def test_a_rehash_reads_every_file_again_and_leaves_fresh_caches(tmp_path: Path) -> None:
    source, dest, caches = tmp_path / "source", tmp_path / "dest", tmp_path / "caches"
    source.mkdir()
    for index in range(3):
        (source / f"file-{index}.db").write_bytes(b"x" * (index + 1) * 1000)
    shutil.copytree(source, dest)

    def agent_verify(*extra: str) -> dict[str, Any]:
        result = run_cli(
            "agent",
            "verify",
            "--source",
            str(source),
            "--dest",
            str(dest),
            "--cache",
            str(caches),
            *extra,
        )
        assert result.exit_code == 0, result.output
        events: list[dict[str, Any]] = [json.loads(line) for line in result.output.splitlines()]
        [done] = [e for e in events if e["event"] == "verify-done"]
        return done

    assert agent_verify()["hashedFiles"] == {"source": 3, "destination": 3}
    assert agent_verify()["hashedFiles"] == {"source": 0, "destination": 0}
    assert agent_verify("--rehash")["hashedFiles"] == {"source": 3, "destination": 3}
    assert agent_verify()["hashedFiles"] == {"source": 0, "destination": 0}
