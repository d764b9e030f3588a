#!/usr/bin/env python3
"""Benchmark: `migrator run` (local executor) against plain `rclone copy` into the same SeaweedFS.

Side by side in one run, on two data shapes:
  (a) media:  about 2 GiB of 32-256 MiB files;
  (b) config: 20,000 files of 1-64 KiB plus a 200 MiB SQLite-like database;
plus a no-op re-run of (b) for both. Prints MiB/s, files/s, client and SeaweedFS CPU seconds, and
our/rclone ratios. With --s3-clients it then compares the PUTs of obstore, migrator.s3wire (what
the copy agent uploads with) and boto3 (bench/s3clients.py --ops put).
Usage: python bench/copy.py [--media-gib 2] [--config-files 20000] [--quick] [--s3-clients]
"""

from __future__ import annotations

import sys

# This file is named like the stdlib module ``copy``: keep its folder off the import path.
sys.path[:] = [p for p in sys.path if not p.endswith("bench")]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import precompile  # noqa: E402
from migrator.rclone import find_rclone  # noqa: E402
from migrator.seaweedfs import SeaweedFS  # noqa: E402


@dataclass
class Result:
    label: str
    seconds: float
    files: int
    bytes: int
    client_cpu: float
    server_cpu: float

    @property
    def mib_s(self) -> float:
        return self.bytes / 2**20 / self.seconds

    @property
    def files_s(self) -> float:
        return self.files / self.seconds


def make_media(root: Path, total: int, rng: random.Random) -> tuple[int, int]:
    root.mkdir(parents=True)
    written = count = 0
    block = os.urandom(8 * 2**20)
    while written < total:
        size = min(rng.randint(32, 256) * 2**20, total - written)
        with open(root / f"Movie {count:03d} (20{count % 30:02d}).mkv", "wb") as handle:
            left = size
            while left:
                chunk = block[: min(left, len(block))]
                handle.write(chunk)
                left -= len(chunk)
        written += size
        count += 1
    return count, written


def make_config(root: Path, files: int, db_bytes: int, rng: random.Random) -> tuple[int, int]:
    (root / "MediaCover").mkdir(parents=True)
    total = 0
    for index in range(files):
        folder = root / "MediaCover" / str(index // 20)
        if index % 20 == 0:
            folder.mkdir()
        size = rng.randint(1024, 64 * 1024)
        (folder / f"poster-{index % 20}.jpg").write_bytes(rng.randbytes(size))
        total += size
    # A database-sized file. Not an SQLite header: the benchmark measures copying, and a closed
    # database is copied like any file at cutover anyway.
    with open(root / "app.db.bak", "wb") as handle:
        for _ in range(db_bytes // 2**20):
            handle.write(rng.randbytes(2**20))
    return files + 1, total + db_bytes


def server_cpu(server: SeaweedFS) -> float:
    """CPU seconds of the weed process so far (utime + stime from /proc)."""
    assert server.process is not None
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(
    label: str,
    server: SeaweedFS,
    command: list[str],
    env: dict[str, str],
    files: int,
    size: int,
    cwd: Path | None = None,
) -> Result:
    cpu0, server0, started = children_cpu(), server_cpu(server), time.monotonic()
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{label} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return Result(label, seconds, files, size, children_cpu() - cpu0, server_cpu(server) - server0)


def rclone_env(server: SeaweedFS) -> dict[str, str]:
    return {
        **os.environ,
        "RCLONE_CONFIG_S3_TYPE": "s3",
        "RCLONE_CONFIG_S3_PROVIDER": "SeaweedFS",
        "RCLONE_CONFIG_S3_ENDPOINT": server.s3_endpoint,
        "RCLONE_CONFIG_S3_ACCESS_KEY_ID": server.access_key,
        "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": server.secret_key,
    }


def migrator_env(server: SeaweedFS) -> dict[str, str]:
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
    }


def migrator_bin() -> str:
    return str(Path(sys.executable).parent / "migrator")


def plan(work: Path, server: SeaweedFS, name: str, source: Path, role: str) -> Path:
    volume = name.split("-")[0]
    project = work / f"project-{name}"
    project.mkdir()
    command = [
        migrator_bin(),
        "plan",
        "--source-dir",
        f"{volume}={source}",
        "--role",
        f"{volume}={role}",
        "--target",
        f"s3://migrator-{name}",
        "--s3-endpoint",
        server.s3_endpoint,
        "--name",
        name,
    ]
    subprocess.run(command, env=migrator_env(server), cwd=project, check=True, capture_output=True)
    return project / "plans" / f"{name}.yaml"


def compare(
    server: SeaweedFS,
    work: Path,
    name: str,
    source: Path,
    files: int,
    size: int,
    role: str,
    repeat: int,
) -> list[Result]:
    """Each tool copies the tree into fresh buckets ``repeat`` times, alternating which goes first;
    the best time of each counts (the machine is shared: the best run is the least disturbed)."""
    rclone = find_rclone()
    renv = rclone_env(server)
    runs: dict[str, list[Result]] = {"rclone": [], "migrator": []}
    last_rclone = last_ours = None
    for attempt in range(repeat):
        target = f"{name}-{attempt}"
        for bucket in (f"rclone-{target}", f"migrator-{target}"):
            subprocess.run(
                [rclone, "mkdir", f"s3:{bucket}"], env=renv, check=True, capture_output=True
            )
        plan_path = plan(work, server, target, source, role)
        last_rclone = [rclone, "copy", str(source), f"s3:rclone-{target}/{name}"]
        last_ours = [migrator_bin(), "run", "--plan", str(plan_path), "--phase", "all", "--json"]
        order = ["rclone", "migrator"] if attempt % 2 == 0 else ["migrator", "rclone"]
        for tool in order:
            if tool == "rclone":
                runs["rclone"].append(
                    timed(f"rclone copy ({name})", server, last_rclone, renv, files, size)
                )
            else:
                runs["migrator"].append(
                    timed(
                        f"migrator run ({name})",
                        server,
                        last_ours,
                        migrator_env(server),
                        files,
                        size,
                    )
                )
    results = [
        min(runs["rclone"], key=lambda r: r.seconds),
        min(runs["migrator"], key=lambda r: r.seconds),
    ]
    if name == "config" and last_rclone and last_ours:
        # A pre-seed copies the whole tree (the bench's database file has no SQLite header, so it
        # is not left for a cutover); a re-run of an unchanged tree is the no-op case.
        results.append(
            timed("rclone copy no-op re-run (config)", server, last_rclone, renv, files, size)
        )
        results.append(
            timed(
                "migrator run no-op re-run (config)",
                server,
                last_ours,
                migrator_env(server),
                files,
                size,
            )
        )
    return results


def report(results: list[Result]) -> None:
    print(
        f"{'what':40} {'seconds':>8} {'MiB/s':>8} {'files/s':>9} {'client CPU s':>13} {'weed CPU s':>11}"
    )
    for r in results:
        print(
            f"{r.label:40} {r.seconds:8.2f} {r.mib_s:8.1f} {r.files_s:9.0f} {r.client_cpu:13.2f} {r.server_cpu:11.2f}"
        )
    by = {r.label: r for r in results}
    print()
    for shape in ("media", "config"):
        ours, theirs = by.get(f"migrator run ({shape})"), by.get(f"rclone copy ({shape})")
        if ours and theirs:
            print(
                f"ratio ({shape}): migrator/rclone throughput = {theirs.seconds / ours.seconds:.2f}x"
            )
    ours, theirs = (
        by.get("migrator run no-op re-run (config)"),
        by.get("rclone copy no-op re-run (config)"),
    )
    if ours and theirs:
        print(
            f"no-op re-run (config): rclone {theirs.seconds:.2f}s, migrator {ours.seconds:.2f}s = {theirs.seconds / ours.seconds:.1f}x faster"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--media-gib", type=float, default=2.0)
    parser.add_argument("--config-files", type=int, default=20000)
    parser.add_argument("--db-mib", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="small data for a smoke run")
    parser.add_argument("--only", choices=["media", "config"])
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--repeat", type=int, default=2, help="copies per tool (best counts)")
    parser.add_argument(
        "--s3-clients", action="store_true", help="then compare the S3 clients' PUTs"
    )
    parser.add_argument(
        "--transports",
        help="instead: the uploader end to end over these "
        "clients, e.g. s3wire,obstore,boto3 (bench/fetchers.py)",
    )
    args = parser.parse_args()
    precompile()
    if args.quick:
        args.media_gib, args.config_files, args.db_mib = 0.25, 2000, 20
    if args.transports:  # bench/fetchers.py: the uploader over obstore/boto3 (#14)
        from bench import fetchers

        fetchers.copy_transports(
            fetchers.parse_names(args.transports), args.config_files, max(args.repeat, 3)
        )
        return
    rng = random.Random(1)
    work = Path(tempfile.mkdtemp(prefix="migrator-bench-copy-"))
    try:
        results: list[Result] = []
        with SeaweedFS(work / "weed", volume_size_limit_mb=4096) as server:
            if args.only in (None, "media"):
                files, size = make_media(work / "media", int(args.media_gib * 2**30), rng)
                results += compare(
                    server, work, "media", work / "media", files, size, "media", args.repeat
                )
            if args.only in (None, "config"):
                files, size = make_config(
                    work / "config", args.config_files, args.db_mib * 2**20, rng
                )
                results += compare(
                    server, work, "config", work / "config", files, size, "config", args.repeat
                )
        report(results)
        if args.json:
            print(json.dumps([r.__dict__ for r in results], indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.s3_clients:
        print("\nS3 clients' PUTs: obstore vs migrator.s3wire vs boto3")
        script = ROOT / "bench" / "s3clients.py"
        subprocess.run([sys.executable, str(script), "--ops", "put"], check=True)


if __name__ == "__main__":
    main()
