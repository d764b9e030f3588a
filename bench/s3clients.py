#!/usr/bin/env python3
"""Benchmark the S3 clients side by side in one run: obstore vs migrator.s3wire vs boto3.

Against one embedded SeaweedFS, each client PUTs and GETs the same objects:
  small: --small-objects objects of 1-64 KiB (default 2,000), --threads-small threads;
  large: --large-objects objects of --large-mib MiB (default 8 of 64 MiB), --threads-large threads.
PUTs send what the copy agent sends (Content-Type and the four rclone x-amz-meta-* headers);
GETs read whole bodies into a 1 MiB buffer and drop them (the hashing a verify adds costs the same
for every client). Each measurement runs in a fresh child process after one warm-up request, so
"client CPU" is user+sys of that client's process (its own threads, and obstore's Rust runtime)
for the operation alone; "weed CPU" is the server's. Rounds alternate the clients' order and the
best wall time of each row counts (the machine is shared: the best run is the least disturbed).

Prints per row: seconds, objects/s, MiB/s, client CPU us per object, weed CPU s, and the ratios of
throughput and client CPU against s3wire. "s3wire-pipelined" sends 4 GETs at once per connection,
as the checksum engine reads small objects. bench/copy.py --s3-clients runs the PUTs (the copy
agent's uploads), bench/verify.py --s3-clients the GETs (the checksum engine's reads).

  .venv/bin/pip install -e '.[bench]'   # obstore
  .venv/bin/python bench/s3clients.py [--rounds 3] [--small-objects 2000] [--large-objects 8]
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
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

CLIENTS = ("s3wire", "obstore", "boto3")
MIB = 1 << 20
BUFFER = MIB
CONTENT_TYPE = "image/jpeg"
PIPELINE = 4  # GETs per connection at once (migrator.checksum.s3.PIPELINE_DEPTH)


def metadata(path: str) -> dict[str, str]:
    st = os.stat(path)
    return {
        "mtime": str(st.st_mtime_ns // 10**9),
        "mode": f"{st.st_mode:o}",
        "uid": str(st.st_uid),
        "gid": str(st.st_gid),
    }


# --- the clients (each used as the product would use it) ---------------------------------------


class S3Wire:
    def __init__(self, endpoint: str, key: str, secret: str, bucket: str) -> None:
        from migrator.objectstore import S3Settings
        from migrator.s3wire import Client, Endpoint

        settings = S3Settings(endpoint=endpoint, access_key=key, secret_key=secret)
        self.client = Client(Endpoint.from_settings(settings))
        self.bucket = bucket

    def put(self, key: str, path: str) -> None:
        from migrator.s3wire import Body

        headers = {
            "Content-Type": CONTENT_TYPE,
            **{f"x-amz-meta-{k}": v for k, v in metadata(path).items()},
        }
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            # as migrator.uploader: small bodies inline, large ones by sendfile
            body = Body(os.read(fd, size + 1)) if size <= MIB else Body(fd=fd, length=size)
            answer = self.client.put(self.bucket, key, body, headers)
        finally:
            os.close(fd)
        assert answer.status == 200, answer

    def get_pipelined(self, keys: list[str], buffer: memoryview) -> int:
        """GETs sent together on one connection, as the checksum engine reads small objects."""
        total = 0
        for response in self.client.pipeline(self.bucket, keys):
            assert response.status == 200, response.status
            while count := response.readinto(buffer):
                total += count
        return total

    def get(self, key: str, buffer: memoryview) -> int:
        response = self.client.get(self.bucket, key)
        assert response.status == 200, response.status
        total = 0
        while count := response.readinto(buffer):
            total += count
        return total


class Obstore:
    def __init__(self, endpoint: str, key: str, secret: str, bucket: str) -> None:
        from obstore.store import S3Store

        self.store = S3Store(
            bucket,
            endpoint=endpoint,
            access_key_id=key,
            secret_access_key=secret,
            region="us-east-1",
            virtual_hosted_style_request=False,
            skip_signature=False,
            client_options={"allow_http": True, "pool_max_idle_per_host": "64"},
        )

    def put(self, key: str, path: str) -> None:
        import obstore

        attributes: dict[str, str] = {"Content-Type": CONTENT_TYPE, **metadata(path)}
        obstore.put(self.store, key, Path(path), attributes=attributes)  # type: ignore[arg-type]

    def get(self, key: str, buffer: memoryview) -> int:
        import obstore

        total = 0
        for chunk in obstore.get(self.store, key).stream(min_chunk_size=BUFFER):
            total += len(chunk)
        return total


class Boto3:
    def __init__(self, endpoint: str, key: str, secret: str, bucket: str) -> None:
        from migrator.objectstore import S3Settings, make_client

        settings = S3Settings(endpoint=endpoint, access_key=key, secret_key=secret)
        # As the copy agent would: no flexible checksums (migrator verify proves the bytes).
        self.client = make_client(settings, flexible_checksums=False)
        self.bucket = bucket

    def put(self, key: str, path: str) -> None:
        with open(path, "rb") as body:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentType=CONTENT_TYPE,
                Metadata=metadata(path),
            )

    def get(self, key: str, buffer: memoryview) -> int:
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        total = 0
        while chunk := body.read(BUFFER):
            total += len(chunk)
        return total


def make(name: str, endpoint: str, key: str, secret: str, bucket: str) -> Any:
    kinds: dict[str, Callable[..., Any]] = {
        "s3wire": S3Wire,
        "s3wire-pipelined": S3Wire,
        "obstore": Obstore,
        "boto3": Boto3,
    }
    return kinds[name](endpoint, key, secret, bucket)


# --- the child: one client, one operation, one shape -------------------------------------------


def child(args: argparse.Namespace) -> None:
    spec = json.loads(Path(args.child).read_text())
    client = make(spec["client"], spec["endpoint"], spec["key"], spec["secret"], spec["bucket"])
    files: list[str] = spec["files"]
    keys: list[str] = spec["keys"]
    local = __import__("threading").local()

    def buffer() -> memoryview:
        view = getattr(local, "buffer", None)
        if view is None:
            view = local.buffer = memoryview(bytearray(BUFFER))
        return view

    # Warm-up: open the connection pool, import lazily loaded modules.
    client.put(spec["warmup_key"], spec["warmup_file"])
    client.get(spec["warmup_key"], buffer())
    if spec["client"] == "s3wire-pipelined":
        batches = [keys[i : i + PIPELINE] for i in range(0, len(keys), PIPELINE)]
        jobs = [lambda b=b: client.get_pipelined(b, buffer()) for b in batches]
    elif spec["op"] == "put":
        jobs = [lambda f=f, k=k: client.put(k, f) for f, k in zip(files, keys, strict=True)]
    else:
        jobs = [lambda k=k: client.get(k, buffer()) for k in keys]
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    with ThreadPoolExecutor(spec["threads"]) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    print(json.dumps({"seconds": seconds, "cpu": cpu}))


# --- the parent ---------------------------------------------------------------------------------


@dataclass
class Row:
    client: str
    op: str
    shape: str
    objects: int
    bytes: int
    seconds: float
    cpu: float
    weed_cpu: float

    @property
    def per_object_us(self) -> float:
        return self.cpu / self.objects * 1e6


def weed_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def build(root: Path, small: int, large: int, large_mib: int) -> dict[str, list[str]]:
    rng = random.Random(14)
    pool = os.urandom(64 * 1024 + 4096)
    shapes: dict[str, list[str]] = {"small": [], "large": []}
    for index in range(small):
        folder = root / "small" / f"{index // 200:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"poster-{index}.jpg"
        offset = rng.randint(0, 4096)
        path.write_bytes(pool[offset : offset + rng.randint(1024, 64 * 1024)])
        shapes["small"].append(str(path))
    (root / "large").mkdir()
    block = os.urandom(8 * MIB)
    for index in range(large):
        path = root / "large" / f"movie-{index}.mkv"
        with path.open("wb") as out:
            for _ in range(large_mib // 8):
                out.write(block)
        shapes["large"].append(str(path))
    return shapes


def run_all(args: argparse.Namespace) -> list[Row]:
    from migrator.objectstore import S3Settings, make_client
    from migrator.seaweedfs import SeaweedFS

    work = Path(tempfile.mkdtemp(prefix="migrator-bench-s3clients-"))
    try:
        shapes = build(work / "data", args.small_objects, args.large_objects, args.large_mib)
        sizes = {shape: sum(os.path.getsize(p) for p in paths) for shape, paths in shapes.items()}
        with SeaweedFS(work / "weed", volume_size_limit_mb=1024) as server:
            assert server.process is not None
            settings = S3Settings(server.s3_endpoint, server.access_key, server.secret_key)
            boto = make_client(settings)
            boto.create_bucket(Bucket="bench")
            base = {
                "endpoint": server.s3_endpoint,
                "key": server.access_key,
                "secret": server.secret_key,
                "bucket": "bench",
                "warmup_file": shapes["small"][0],
                "warmup_key": "warmup",
            }
            # GETs read one common set of objects, stored once by single PUTs (as the copy
            # agent and rclone store files up to their multipart cutoffs).
            writer = make(
                "s3wire", server.s3_endpoint, server.access_key, server.secret_key, "bench"
            )
            for shape, files in shapes.items():
                for index, path in enumerate(files):
                    writer.put(f"common/{shape}/{index}", path)
            best: dict[tuple[str, str, str], Row] = {}
            for round_ in range(args.rounds):
                order = CLIENTS[round_ % 3 :] + CLIENTS[: round_ % 3]
                for shape in ("small", "large"):
                    files = shapes[shape]
                    threads = args.threads_small if shape == "small" else args.threads_large
                    for op in args.ops:
                        clients = list(order)
                        if op == "get" and shape == "small":
                            clients.append("s3wire-pipelined")
                        for client in clients:
                            # PUTs write fresh keys; GETs all read the common set.
                            keys = [
                                f"{client}-{round_}/{shape}/{i}"
                                if op == "put"
                                else f"common/{shape}/{i}"
                                for i in range(len(files))
                            ]
                            passes = args.large_get_passes if (op, shape) == ("get", "large") else 1
                            keys *= passes
                            spec = {
                                **base,
                                "client": client,
                                "op": op,
                                "files": files * passes,
                                "keys": keys,
                                "threads": threads,
                            }
                            spec_path = work / "spec.json"
                            spec_path.write_text(json.dumps(spec))
                            weed0 = weed_cpu(server.process.pid)
                            result = subprocess.run(
                                [sys.executable, __file__, "--child", str(spec_path)],
                                capture_output=True,
                                text=True,
                                check=False,
                            )
                            if result.returncode:
                                raise SystemExit(f"{client} {op} {shape}:\n{result.stderr}")
                            measured = json.loads(result.stdout.strip().splitlines()[-1])
                            row = Row(
                                client,
                                op,
                                shape,
                                len(keys),
                                sizes[shape] * passes,
                                measured["seconds"],
                                measured["cpu"],
                                weed_cpu(server.process.pid) - weed0,
                            )
                            print(
                                f"  round {round_ + 1} {client:16} {op} {shape}: "
                                f"{row.seconds:.2f} s, {row.per_object_us:.0f} us/object",
                                file=sys.stderr,
                                flush=True,
                            )
                            slot = (client, op, shape)
                            if slot not in best or row.seconds < best[slot].seconds:
                                best[slot] = row
                # Free the disk: this round's objects are not read again.
                from migrator.objectstore import delete_objects, list_objects

                for client in CLIENTS:
                    keys = [o["Key"] for o in list_objects(boto, "bench", f"{client}-{round_}/")]
                    delete_objects(boto, "bench", keys)
        return [
            best[(c, op, shape)]
            for shape in ("small", "large")
            for op in args.ops
            for c in (*CLIENTS, "s3wire-pipelined")
            if (c, op, shape) in best
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(rows: list[Row], args: argparse.Namespace) -> str:
    lines = [
        f"S3 clients against one local SeaweedFS, {os.cpu_count()} cores, best of {args.rounds} "
        f"rounds; small = {args.small_objects} objects of 1-64 KiB ({args.threads_small} threads), "
        f"large = {args.large_objects} x {args.large_mib} MiB ({args.threads_large} threads; GETs "
        f"read them {args.large_get_passes} times)",
        "",
        f"| {'op':9} | {'client':16} | {'seconds':>7} | {'objects/s':>9} | {'MiB/s':>7} "
        f"| {'client CPU us/object':>20} | {'weed CPU s':>10} | {'throughput vs s3wire':>20} "
        f"| {'client CPU vs s3wire':>20} |",
        f"|{'-' * 11}|{'-' * 18}|{'-' * 9}|{'-' * 11}|{'-' * 9}|{'-' * 22}|{'-' * 12}|{'-' * 22}"
        f"|{'-' * 22}|",
    ]
    by = {(r.client, r.op, r.shape): r for r in rows}
    for r in rows:
        ref = by[("s3wire", r.op, r.shape)]
        lines.append(
            f"| {r.op.upper() + ' ' + r.shape:9} | {r.client:16} | {r.seconds:7.2f} "
            f"| {r.objects / r.seconds:9.0f} | {r.bytes / MIB / r.seconds:7.1f} "
            f"| {r.per_object_us:20.0f} | {r.weed_cpu:10.2f} "
            f"| {ref.seconds / r.seconds:19.2f}x | {r.cpu / ref.cpu:19.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small-objects", type=int, default=2000)
    parser.add_argument("--large-objects", type=int, default=8)
    parser.add_argument("--large-mib", type=int, default=64)
    parser.add_argument(
        "--large-get-passes",
        type=int,
        default=3,
        help="large GETs read the set this many times (one pass is too short)",
    )
    parser.add_argument("--threads-small", type=int, default=8)
    parser.add_argument("--threads-large", type=int, default=4)
    parser.add_argument("--ops", nargs="+", choices=["put", "get"], default=["put", "get"])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    rows = run_all(args)
    print(report(rows, args))
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))


if __name__ == "__main__":
    main()
