#!/usr/bin/env python3
"""Benchmark: `migrator agent backup` (what the nightly CronJob runs) against `tar | zstd` to a
local file and `rclone copy` of the same tree into the same SeaweedFS, side by side in one run.

The data is a config volume's shape: --files small files of 1-64 KiB (random bytes: covers are
JPEGs, which do not compress) and one real WAL-mode SQLite database of --db-mib MiB. Ours does
more than the others: an online-backup copy of the database plus PRAGMA integrity_check, an
xxh3-128 of every file, zstd, a multipart upload with Content-MD5 per part and a HEAD check.
Every tool runs as a child process (interpreter start-up included for ours), once, with the
page cache warm. Prints seconds, MiB/s, client and SeaweedFS CPU seconds, and ratios.

  .venv/bin/python bench/backup.py                # 20,000 files + 200 MiB database
  .venv/bin/python bench/backup.py --quick        # 2,000 files + 20 MiB database
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, where a sibling script (bench/copy.py)
# would shadow the standard library module of the same name: put the repository there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from migrator.manifests.copy import S3_FLAGS, SMALL_FILES_FLAGS  # noqa: E402
from migrator.seaweedfs import SeaweedFS  # noqa: E402

MIB = 2**20
BIN = Path(sys.executable).parent


@dataclass
class Result:
    label: str
    seconds: float
    bytes: int
    client_cpu: float
    server_cpu: float

    @property
    def mib_s(self) -> float:
        return self.bytes / MIB / self.seconds


def make_tree(root: Path, files: int, db_mib: int, rng: random.Random) -> int:
    """MediaCover-like small files and a WAL-mode database; returns the bytes written."""
    total = 0
    for index in range(files):
        folder = root / "MediaCover" / str(index // 20)
        if index % 20 == 0:
            folder.mkdir(parents=True)
        data = rng.randbytes(rng.randint(1024, 64 * 1024))
        (folder / f"poster-{index % 20}.jpg").write_bytes(data)
        total += len(data)
    (root / "config.xml").write_text("<Config><ApiKey>0123456789abcdef</ApiKey></Config>\n")
    database = root / "app.db"
    connection = sqlite3.connect(database)
    connection.execute("pragma journal_mode=wal")
    connection.execute("create table History (Id integer primary key, Title text, Data blob)")
    row = 3000  # bytes of blob per row: one row fills one 4 KiB page
    rows = db_mib * MIB // 4096
    for start in range(0, rows, 5000):
        connection.executemany(
            "insert into History (Title, Data) values (?, ?)",
            ((f"Episode {i}", rng.randbytes(row)) for i in range(start, min(rows, start + 5000))),
        )
        connection.commit()
    connection.close()
    return total + (root / "config.xml").stat().st_size + database.stat().st_size


def server_cpu(server: SeaweedFS) -> float:
    assert server.process is not None
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(
    label: str, server: SeaweedFS, command: list[str], env: dict[str, str], size: int
) -> Result:
    cpu0, server0, started = children_cpu(), server_cpu(server), time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{label} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return Result(label, seconds, size, children_cpu() - cpu0, server_cpu(server) - server0)


def run(args: argparse.Namespace) -> list[Result]:
    work = Path(tempfile.mkdtemp(prefix="migrator-bench-backup-"))
    try:
        source = work / "config"
        size = make_tree(source, args.files, args.db_mib, random.Random(1))
        print(
            f"tree: {args.files} files + {args.db_mib} MiB database = {size / MIB:.0f} MiB",
            flush=True,
        )
        with SeaweedFS(work / "weed", volume_size_limit_mb=4096) as server:
            aws = {
                **os.environ,
                "AWS_ENDPOINT_URL": server.s3_endpoint,
                "AWS_ACCESS_KEY_ID": server.access_key,
                "AWS_SECRET_ACCESS_KEY": server.secret_key,
            }
            rclone_env = {
                **os.environ,
                "RCLONE_CONFIG_S3_TYPE": "s3",
                "RCLONE_CONFIG_S3_PROVIDER": "SeaweedFS",
                "RCLONE_CONFIG_S3_ENDPOINT": server.s3_endpoint,
                "RCLONE_CONFIG_S3_ACCESS_KEY_ID": server.access_key,
                "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": server.secret_key,
            }
            for bucket in ("bench-ours", "bench-rclone"):
                subprocess.run(
                    [str(BIN / "rclone"), "mkdir", f"s3:{bucket}"],
                    env=rclone_env,
                    check=True,
                    capture_output=True,
                )
            tar = f"tar -cf - -C {source} . | zstd -{args.level} -q -o {work / 'out.tar.zst'}"
            results = [timed("tar | zstd to a local file", server, ["sh", "-c", tar], aws, size)]
            rclone = [str(BIN / "rclone"), "copy", str(source), "s3:bench-rclone/config"]
            rclone += [*SMALL_FILES_FLAGS, *S3_FLAGS]
            results.append(timed("rclone copy to SeaweedFS", server, rclone, rclone_env, size))
            ours = [
                str(BIN / "migrator"),
                "agent",
                "backup",
                "--to",
                "s3://bench-ours/backups",
                "--volume",
                "config",
                str(source),
                "--tmp-dir",
                str(work),
                "--level",
                str(args.level),
            ]
            results.append(timed("migrator agent backup to SeaweedFS", server, ours, aws, size))
            done = subprocess.run(
                [str(BIN / "rclone"), "cat", "--include", "*.json", "s3:bench-ours/backups/config"],
                env=rclone_env,
                capture_output=True,
                text=True,
                check=True,
            )
            record = json.loads(done.stdout)
        return report(results, record, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(
    results: list[Result], record: dict[str, object], args: argparse.Namespace
) -> list[Result]:
    print(f"{'what':38} {'seconds':>8} {'MiB/s':>8} {'client CPU s':>13} {'weed CPU s':>11}")
    for r in results:
        print(
            f"{r.label:38} {r.seconds:8.2f} {r.mib_s:8.1f} {r.client_cpu:13.2f} {r.server_cpu:11.2f}"
        )
    tar, rclone, ours = results
    print()
    print(f"ratio: migrator / tar|zstd throughput = {ours.mib_s / tar.mib_s:.2f}x")
    print(f"ratio: migrator / rclone copy throughput = {ours.mib_s / rclone.mib_s:.2f}x")
    archive = record["archive"]
    assert isinstance(archive, dict)
    print(
        f"ours, inside: databases {record['durations']['databases']:.2f}s (copy + integrity_check, "  # type: ignore[index]
        f"in parallel with the files), stream {archive['seconds']['total']:.2f}s, "
        f"{archive['parts']} parts, archive {archive['bytes'] / MIB:.0f} MiB"
    )
    if args.json:
        print(json.dumps([r.__dict__ | {"mib_s": r.mib_s} for r in results], indent=2))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--db-mib", type=int, default=200)
    parser.add_argument("--level", type=int, default=3, help="zstd level for both (default 3)")
    parser.add_argument("--quick", action="store_true", help="2,000 files and a 20 MiB database")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()
    if args.quick:
        args.files, args.db_mib = 2000, 20
    run(args)


if __name__ == "__main__":
    main()
