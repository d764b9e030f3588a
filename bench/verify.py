#!/usr/bin/env python3
"""Benchmark the checksum engine against the tools it replaces, side by side, in one run.

Builds media-shaped files (32-256 MiB) and many small files (1-64 KiB) under a temporary
directory, starts an embedded SeaweedFS, uploads both trees with rclone (--metadata --links),
and prints:
  1. local hashing: ours vs xxh128sum and b3sum (find | xargs -P2) and rclone hashsum xxh128;
  2. deep S3 verify: ours vs rclone check --download and plain rclone check, plus our repeated
     verify of the unchanged copy (with the re-verify caches);
  2b. the same through the CLI as users run it: `migrator plan --source-dir` over both trees,
     `migrator run`, then `migrator verify --plan P --no-cache` per volume against
     `rclone check --download` (alternating), and a cached repeat of both volumes;
  3. peak RSS of comparing two synthetic 1,000,000-entry manifests in a child process;
  4. with --s3-clients: the GETs of obstore, migrator.s3wire and boto3 (bench/s3clients.py).
Every tool runs as a child process (interpreter start-up included for ours); times are the
best of --repeat runs (at least 5 for the short local ones) with the page cache warm. A quick run:
  .venv/bin/python bench/verify.py --media-mib 256 --small-files 2000 --manifest-entries 100000
Needs xxh128sum and b3sum: apt-get install xxhash b3sum (rows are skipped without them).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Run as a script, this folder comes first on sys.path, where a sibling script (bench/copy.py)
# would shadow the standard library module of the same name: put the repository there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from bench.common import precompile  # noqa: E402
from migrator.seaweedfs import SeaweedFS  # noqa: E402

PYTHON = sys.executable
RCLONE = str(Path(sys.executable).parent / "rclone")
MIB = 1 << 20


# --- children: what our side runs, each in a fresh interpreter ----------------------------------

CHILD_LOCAL = """
import sys, time
from migrator.checksum import hash_tree
start = time.perf_counter()
count = sum(1 for _ in hash_tree(sys.argv[1], workers=2))
print(time.perf_counter() - start)
"""

CHILD_VERIFY = """
import os, sys
from migrator.checksum import compare, hash_s3_prefix, hash_tree
from migrator.objectstore import S3Settings
root, bucket, prefix, cache_dir = sys.argv[1:5]
settings = S3Settings(endpoint=os.environ["BENCH_ENDPOINT"], access_key=os.environ["BENCH_KEY"],
                      secret_key=os.environ["BENCH_SECRET"])
local_cache = os.path.join(cache_dir, "local.cache") if cache_dir != "-" else None
s3_cache = os.path.join(cache_dir, "s3.cache") if cache_dir != "-" else None
result = compare(hash_tree(root, workers=2, cache=local_cache),
                 hash_s3_prefix(settings, bucket, prefix, workers=2, cache=s3_cache))
print(result.summary())
sys.exit(0 if result.ok else 1)
"""

# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across vfork + exec.
CHILD_COMPARE = """
import sys
from migrator.checksum import compare, read_manifest
result = compare(read_manifest(sys.argv[1]), read_manifest(sys.argv[2]))
with open("/proc/self/status") as status:
    peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(result.source_entries, result.content_differences, peak_kib)
"""


# --- data ---------------------------------------------------------------------------------------


def build_media(root: Path, total: int, seed: int) -> None:
    rng = random.Random(seed)
    root.mkdir(parents=True)
    left, index = total, 0
    chunk = os.urandom(64 * MIB)  # random data; xxh3 speed does not depend on content
    while left > 0:
        size = min(left, rng.randint(32, 256) * MIB)
        with (root / f"Movie {index:03d} (2024).mkv").open("wb") as out:
            written = 0
            while written < size:
                part = min(size - written, len(chunk))
                out.write(chunk[:part] if written % (3 * len(chunk)) else os.urandom(part))
                written += part
        left -= size
        index += 1


def build_small(root: Path, count: int, seed: int) -> None:
    rng = random.Random(seed)
    pool = os.urandom(64 * 1024 + 4096)
    for index in range(count):
        folder = root / "MediaCover" / f"{index // 200:04d}"
        if index % 200 == 0:
            folder.mkdir(parents=True)
        size = rng.randint(1024, 64 * 1024)
        offset = rng.randint(0, 4096)
        (folder / f"poster-{index}.jpg").write_bytes(pool[offset : offset + size])


def write_synthetic_manifests(directory: Path, entries: int) -> tuple[Path, Path]:
    from migrator.checksum import Entry, write_manifest

    def generate(changed: int) -> object:
        for index in range(entries):
            digest = f"{index * 2654435761 % (1 << 128):032x}"
            if changed and index % changed == 0:
                digest = "f" * 32
            path = f"MediaCover/{index // 1000:05d}/poster-{index:07d}.jpg".encode()
            yield Entry(
                path, "f", 1024 + index % 60000, 1_700_000_000_000_000_000, 0o644, 911, 911, digest
            )

    source, destination = directory / "source.manifest.gz", directory / "destination.manifest.gz"
    write_manifest(generate(0), source)  # type: ignore[arg-type]
    write_manifest(generate(100_000), destination)  # type: ignore[arg-type]
    return source, destination


# --- running and timing -------------------------------------------------------------------------


def run(
    command: list[str], env: dict[str, str] | None = None, ok_codes: tuple[int, ...] = (0,)
) -> str:
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode not in ok_codes:
        raise RuntimeError(f"{command[:3]} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def best_of(repeat: int, action: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    return best


def warm(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(directory, name), "rb") as handle:
                while handle.read(16 * MIB):
                    pass


def rclone_env(server: SeaweedFS) -> dict[str, str]:
    return {
        **os.environ,
        "RCLONE_CONFIG": os.devnull,
        "RCLONE_CONFIG_SW_TYPE": "s3",
        "RCLONE_CONFIG_SW_PROVIDER": "SeaweedFS",
        "RCLONE_CONFIG_SW_ENDPOINT": server.s3_endpoint,
        "RCLONE_CONFIG_SW_ACCESS_KEY_ID": server.access_key,
        "RCLONE_CONFIG_SW_SECRET_ACCESS_KEY": server.secret_key,
    }


def xargs_command(tool: str, root: Path, per_call: int) -> list[str]:
    return [
        "sh",
        "-c",
        f"find '{root}' -type f -print0 | xargs -0 -P2 -n{per_call} {tool} >/dev/null 2>&1",
    ]


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, float, str, str]] = []

    def add(self, task: str, tool: str, seconds: float, rate: str, ratio: str = "") -> None:
        self.rows.append((task, tool, seconds, rate, ratio))
        print(f"  {task:<22} {tool:<36} {seconds:8.3f} s  {rate:<16} {ratio}", flush=True)


def rate_of(files: int, size: int, seconds: float) -> str:
    return (
        f"{files / seconds:,.0f} files/s"
        if size < files * MIB
        else f"{size / seconds / (1 << 30):.2f} GiB/s"
    )


def tree_size(root: Path) -> tuple[int, int]:
    files = size = 0
    for directory, _, names in os.walk(root):
        for name in names:
            files += 1
            size += os.lstat(os.path.join(directory, name)).st_size
    return files, size


# --- the three parts ----------------------------------------------------------------------------


def bench_local(table: Table, trees: dict[str, Path], repeat: int) -> None:
    have = {tool: shutil.which(tool) for tool in ("xxh128sum", "b3sum")}
    for tool, path in have.items():
        if path is None:
            print(
                f"  ({tool} not found: apt-get install {'xxhash' if tool == 'xxh128sum' else 'b3sum'})"
            )
    for shape, root in trees.items():
        files, size = tree_size(root)
        warm(root)
        engine: list[float] = []
        ours = best_of(
            repeat,
            lambda root=root, engine=engine: engine.append(
                float(run([PYTHON, "-c", CHILD_LOCAL, str(root)]))
            ),
        )
        table.add(
            f"local {shape}", "migrator hash_tree (2 workers)", ours, rate_of(files, size, ours)
        )
        inner = min(engine)
        table.add(
            f"local {shape}",
            "  same, in-process (no interpreter start)",
            inner,
            rate_of(files, size, inner),
        )
        per_call = 4 if shape == "media" else 500
        for tool in ("xxh128sum", "b3sum"):
            if have[tool]:
                other = best_of(
                    repeat, lambda t=tool, r=root, n=per_call: run(xargs_command(t, r, n))
                )
                table.add(
                    f"local {shape}",
                    f"{tool} (find | xargs -P2)",
                    other,
                    rate_of(files, size, other),
                    f"ours/peer speed {other / ours:.2f}x",
                )
        other = best_of(
            repeat,
            lambda root=root: run(
                [RCLONE, "hashsum", "xxh128", str(root)],
                env={**os.environ, "RCLONE_CONFIG": os.devnull},
            ),
        )
        table.add(
            f"local {shape}",
            "rclone hashsum xxh128",
            other,
            rate_of(files, size, other),
            f"ours/peer speed {other / ours:.2f}x",
        )


def bench_s3(
    table: Table, server: SeaweedFS, trees: dict[str, Path], work: Path, repeat: int
) -> None:
    env = rclone_env(server)
    child_env = {
        **os.environ,
        "BENCH_ENDPOINT": server.s3_endpoint,
        "BENCH_KEY": server.access_key,
        "BENCH_SECRET": server.secret_key,
    }
    for shape, root in trees.items():
        files, size = tree_size(root)
        warm(root)
        download = best_of(
            repeat,
            lambda root=root, shape=shape: run(
                [RCLONE, "check", "--download", str(root), f"sw:bench/{shape}"], env=env
            ),
        )
        plain = best_of(
            repeat,
            lambda root=root, shape=shape: run(
                [RCLONE, "check", str(root), f"sw:bench/{shape}"], env=env
            ),
        )
        ours = best_of(
            repeat,
            lambda root=root, shape=shape: run(
                [PYTHON, "-c", CHILD_VERIFY, str(root), "bench", shape, "-"], env=child_env
            ),
        )
        cache_dir = work / f"cache-{shape}"
        cache_dir.mkdir(exist_ok=True)
        first = best_of(
            1,
            lambda root=root, shape=shape, cache_dir=cache_dir: run(
                [PYTHON, "-c", CHILD_VERIFY, str(root), "bench", shape, str(cache_dir)],
                env=child_env,
            ),
        )
        again = best_of(
            repeat,
            lambda root=root, shape=shape, cache_dir=cache_dir: run(
                [PYTHON, "-c", CHILD_VERIFY, str(root), "bench", shape, str(cache_dir)],
                env=child_env,
            ),
        )
        task = f"S3 verify {shape}"
        table.add(task, "rclone check --download", download, rate_of(files, size, download))
        table.add(task, "rclone check (size/hash listing only)", plain, rate_of(files, size, plain))
        table.add(
            task,
            "migrator deep verify",
            ours,
            rate_of(files, size, ours),
            f"{download / ours:.2f}x vs check --download",
        )
        table.add(task, "migrator deep verify, cache filling", first, rate_of(files, size, first))
        table.add(
            task,
            "migrator repeated verify (cached)",
            again,
            rate_of(files, size, again),
            f"{first / again:.1f}x faster than first",
        )


# --- through the CLI, as users run it ----------------------------------------------------------


def migrator_cli() -> str:
    return str(Path(PYTHON).parent / "migrator")


def cli_env(server: SeaweedFS) -> dict[str, str]:
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
    }


def bench_cli(
    table: Table, server: SeaweedFS, trees: dict[str, Path], work: Path, repeat: int
) -> None:
    """`migrator plan` + `migrator run` over both trees (one volume each), then `migrator verify`
    timed whole (CLI start, Jobs as local processes) against `rclone check --download`,
    alternating which goes first; the best of ``repeat`` counts."""
    project = work / "cli-project"
    project.mkdir()
    env = cli_env(server)
    command = [
        migrator_cli(),
        "plan",
        "--target",
        "s3://cli",
        "--s3-endpoint",
        server.s3_endpoint,
        "--name",
        "bench",
        "--role",
        "small=config",
        "--role",
        "media=media",
    ]
    for shape, root in trees.items():
        command += ["--source-dir", f"{shape}={root}"]
    subprocess.run(command, env=env, cwd=project, check=True, capture_output=True)
    plan = str(project / "plans" / "bench.yaml")
    start = time.perf_counter()
    run([migrator_cli(), "run", "--plan", plan, "--phase", "all", "--cutover", "--json"], env=env)
    print(f"  migrator run (both volumes) in {time.perf_counter() - start:.1f} s", flush=True)
    verify = [migrator_cli(), "verify", "--plan", plan, "--json"]
    renv = rclone_env(server)
    for shape, root in trees.items():
        files, size = tree_size(root)
        warm(root)
        times: dict[str, list[float]] = {"rclone": [], "ours": []}
        for attempt in range(repeat):
            order = ["rclone", "ours"] if attempt % 2 == 0 else ["ours", "rclone"]
            for tool in order:
                action = (
                    [RCLONE, "check", "--download", str(root), f"sw:cli/{shape}"]
                    if tool == "rclone"
                    else [*verify, "--volume", shape, "--no-cache"]
                )
                start = time.perf_counter()
                run(action, env=renv if tool == "rclone" else env)
                times[tool].append(time.perf_counter() - start)
        download, ours = min(times["rclone"]), min(times["ours"])
        task = f"CLI verify {shape}"
        table.add(task, "rclone check --download", download, rate_of(files, size, download))
        table.add(
            task,
            "migrator verify --no-cache (deep)",
            ours,
            rate_of(files, size, ours),
            f"{download / ours:.2f}x vs check --download",
        )
    files = sum(tree_size(root)[0] for root in trees.values())
    size = sum(tree_size(root)[1] for root in trees.values())
    first: list[float] = []
    again: list[float] = []
    for _ in range(repeat):
        start = time.perf_counter()
        run([*verify, "--no-cache"], env=env)  # hashes everything, then refills the caches
        first.append(time.perf_counter() - start)
        start = time.perf_counter()
        run(verify, env=env)
        again.append(time.perf_counter() - start)
    task = "CLI verify both"
    table.add(
        task, "migrator verify --no-cache (2 volumes)", min(first), rate_of(files, size, min(first))
    )
    table.add(
        task,
        "migrator verify, cached repeat",
        min(again),
        rate_of(files, size, min(again)),
        f"{min(first) / min(again):.1f}x faster than --no-cache",
    )


def bench_manifest_memory(table: Table, work: Path, entries: int) -> None:
    source, destination = write_synthetic_manifests(work, entries)
    start = time.perf_counter()
    output = run([PYTHON, "-c", CHILD_COMPARE, str(source), str(destination)]).split()
    seconds = time.perf_counter() - start
    compared, differences, peak_kib = (int(value) for value in output)
    table.add(
        f"compare {compared:,} entries",
        f"peak RSS {peak_kib / 1024:.1f} MiB",
        seconds,
        f"{differences} differences",
        "target < 100 MiB",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--media-mib", type=int, default=2048, help="total size of media files (default 2048)"
    )
    parser.add_argument(
        "--small-files", type=int, default=20_000, help="number of 1-64 KiB files (default 20000)"
    )
    parser.add_argument(
        "--manifest-entries", type=int, default=1_000_000, help="entries per synthetic manifest"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per measurement; the best counts"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to build data (default: a temp dir)"
    )
    parser.add_argument(
        "--skip", choices=["local", "s3", "cli", "memory"], action="append", default=[]
    )
    parser.add_argument(
        "--s3-clients",
        action="store_true",
        help="then compare the S3 clients' GETs (bench/s3clients.py --ops get)",
    )
    parser.add_argument(
        "--transports",
        help="instead: deep verify end to end over these "
        "engine transports, e.g. s3wire,obstore,boto3 (bench/fetchers.py)",
    )
    args = parser.parse_args()
    precompile()
    if args.transports:  # bench/fetchers.py: the engine over obstore/boto3 (#14)
        from bench import fetchers

        fetchers.verify_transports(
            fetchers.parse_names(args.transports),
            args.media_mib,
            args.small_files,
            args.repeat,
            build_media,
            build_small,
        )
        return

    work = Path(tempfile.mkdtemp(prefix="migrator-bench-", dir=args.workdir))
    print(f"building data in {work}", flush=True)
    trees = {"media": work / "media", "small": work / "small"}
    build_media(trees["media"], args.media_mib * MIB, seed=1)
    build_small(trees["small"], args.small_files, seed=2)
    for shape, root in trees.items():
        files, size = tree_size(root)
        print(f"  {shape}: {files} files, {size / MIB:,.0f} MiB", flush=True)
    table = Table()
    try:
        if "local" not in args.skip:
            print("\n1. local hashing (page cache warm)", flush=True)
            # Local runs take a fraction of a second each, where one disturbance is a large
            # share: at least 5 of them each.
            bench_local(table, trees, max(5, args.repeat))
        if "s3" not in args.skip or "cli" not in args.skip:
            with SeaweedFS(work / "seaweedfs") as server:
                env = rclone_env(server)
                run([RCLONE, "mkdir", "sw:bench"], env=env)
                for shape, root in trees.items():
                    start = time.perf_counter()
                    run(
                        [
                            RCLONE,
                            "copy",
                            "--metadata",
                            "--links",
                            "--transfers",
                            "16",
                            str(root),
                            f"sw:bench/{shape}",
                        ],
                        env=env,
                    )
                    print(f"  uploaded {shape} in {time.perf_counter() - start:.1f} s", flush=True)
                if "s3" not in args.skip:
                    print("\n2. deep verify against S3 (embedded SeaweedFS, loopback)", flush=True)
                    bench_s3(table, server, trees, work, max(1, args.repeat - 1))
                if "cli" not in args.skip:
                    print("\n2b. the same through the CLI: migrator verify --plan P", flush=True)
                    bench_cli(table, server, trees, work, max(1, args.repeat - 1))
        if "memory" not in args.skip:
            print(
                f"\n3. merge-compare memory ({args.manifest_entries:,} entries a side)", flush=True
            )
            bench_manifest_memory(table, work, args.manifest_entries)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.s3_clients:
        print("\n4. S3 clients' GETs: obstore vs migrator.s3wire vs boto3", flush=True)
        subprocess.run([PYTHON, str(_HERE / "s3clients.py"), "--ops", "get"], check=True)


if __name__ == "__main__":
    main()
