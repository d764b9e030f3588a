#!/usr/bin/env python3
"""Bench-only S3 transports: the verify engine and the copy agent's uploader over obstore or boto3.

The product reads (migrator.checksum.s3) and writes (migrator.uploader) through migrator.s3wire.
To measure whether a hand-written client still wins *end to end* (#14: kept only where it wins by
at least 1.2x), this module puts obstore and boto3 behind the same small interface the engine uses
(``get``/``pipeline``/``reset`` returning responses with ``status``, ``length``, ``header``,
``read``, ``readinto``; ``put`` returning an ``Answer``) and injects them through the seams
``hash_s3_prefix(transport=...)`` and ``Uploader(client=...)``; product behaviour is unchanged.

  bench/verify.py --transports s3wire,obstore,boto3   deep verify of media and small files
  bench/copy.py --transports s3wire,obstore,boto3     the uploader storing many small files

Each measurement is a fresh child process (interpreter start and imports included: an agent pays
them too); transports alternate their order each round and the best of --repeat counts.
obstore has no pipelining: its ``pipeline`` is GETs one after another on its pooled connections
(SeaweedFS answers pipelined requests one at a time anyway). Its tokio runtime does not survive a
fork (a forked child hangs on its first request), and the engine forks its worker processes after
listing, so the obstore transport lists in a forked helper process (cost included).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, where bench/copy.py would shadow the
# standard library's copy module: put the repository there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

import os  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from migrator.checksum.errors import ChecksumError  # noqa: E402
from migrator.checksum.s3 import Transport  # noqa: E402
from migrator.s3wire import Answer, Body, Endpoint, WireError  # noqa: E402

MIB = 1 << 20
TRANSPORTS = ("s3wire", "obstore", "boto3")


class _Response:
    """A whole or ranged GET answer, read the way the engine reads s3wire's Response."""

    def __init__(
        self,
        status: int,
        headers: dict[str, str],
        length: int | None,
        chunks: Iterator[Any] | None = None,
        whole: Any = None,
    ) -> None:
        self.status, self._headers, self.length = status, headers, length
        self._chunks, self._whole = chunks, whole
        self._pending: memoryview | None = None

    def header(self, name: str) -> str | None:
        return self._headers.get(name.lower())

    def read(self) -> Any:
        if self._whole is not None:
            whole, self._whole = self._whole, b""
            return whole
        return b"".join(bytes(chunk) for chunk in self._chunks or ())

    def readinto(self, view: memoryview) -> int:
        if self._whole is not None:
            self._pending, self._whole = memoryview(self._whole), None
        if self._pending is None or not len(self._pending):
            chunk = next(self._chunks, None) if self._chunks is not None else None
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        count = min(len(view), len(self._pending))
        view[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def _not_found() -> _Response:
    return _Response(404, {}, 0, whole=b"")


def _meta_headers(metadata: dict[str, str]) -> dict[str, str]:
    return {f"x-amz-meta-{k.lower()}": v for k, v in metadata.items()}


# --- obstore ------------------------------------------------------------------------------------


class ObstoreClient:
    """obstore (Rust object_store) behind the engine's and the uploader's client interface."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._stores: dict[str, Any] = {}

    def _store(self, bucket: str) -> Any:
        store = self._stores.get(bucket)
        if store is None:
            from obstore.store import S3Store

            options: dict[str, Any] = {"pool_max_idle_per_host": "64"}
            if self.endpoint.scheme == "http":
                options["allow_http"] = True
            extra: dict[str, Any] = {"client_options": options}
            if self.endpoint.session_token:
                extra["session_token"] = self.endpoint.session_token
            store = self._stores[bucket] = S3Store(
                bucket,
                endpoint=f"{self.endpoint.scheme}://{self.endpoint.host}",
                access_key_id=self.endpoint.access_key,
                secret_access_key=self.endpoint.secret_key,
                region=self.endpoint.region,
                virtual_hosted_style_request=False,
                **extra,
            )
        return store

    def get(self, bucket: str, key: str, byte_range: tuple[int, int] | None = None) -> _Response:
        import obstore

        options: Any = {"range": (byte_range[0], byte_range[1] + 1)} if byte_range else {}
        try:
            result = obstore.get(self._store(bucket), key, options=options)
        except FileNotFoundError:
            return _not_found()
        except Exception as exc:
            raise ChecksumError(f"GET s3://{bucket}/{key}: {str(exc).splitlines()[0]}") from None
        size = int(result.meta["size"])
        headers = _meta_headers({k: v for k, v in result.attributes.items() if "-" not in k})
        if byte_range is not None:
            first, end = result.range
            headers["content-range"] = f"bytes {first}-{end - 1}/{size}"
            return _Response(206, headers, end - first, chunks=iter(result.stream(MIB)))
        if size <= MIB:
            return _Response(200, headers, size, whole=result.bytes())
        return _Response(200, headers, size, chunks=iter(result.stream(MIB)))

    def pipeline(self, bucket: str, keys: list[str]) -> Iterator[_Response]:
        for key in keys:
            yield self.get(bucket, key)

    def put(self, bucket: str, key: str, body: Body, headers: dict[str, str]) -> Answer:
        import obstore

        attributes: Any = {
            (
                "Content-Type"
                if name.lower() == "content-type"
                else name.removeprefix("x-amz-meta-")
            ): value
            for name, value in headers.items()
        }
        try:
            if body.fd is None:
                obstore.put(self._store(bucket), key, body.data, attributes=attributes)
            else:
                with open(body.fd, "rb", closefd=False) as source:
                    obstore.put(self._store(bucket), key, source, attributes=attributes)
                if body.on_sent is not None:
                    body.on_sent(body.length)
        except Exception as exc:
            raise WireError(f"PUT s3://{bucket}/{key}: {str(exc).splitlines()[0]}") from None
        return Answer(200, b"")

    def reset(self) -> None:
        pass  # obstore keeps its own pool


def _obstore_listing(
    endpoint: Endpoint, bucket: str, prefix: str
) -> list[tuple[str, int, str, str]]:
    import obstore

    store = ObstoreClient(endpoint)._store(bucket)
    return [
        (meta["path"], int(meta["size"]), str(meta["e_tag"]), meta["last_modified"].isoformat())
        for batch in obstore.list(store, prefix)
        for meta in batch
    ]


@dataclass(frozen=True)
class ObstoreTransport(Transport):
    def client(self, endpoint: Endpoint) -> Any:
        return ObstoreClient(endpoint)

    def list_objects(
        self, client: Any, bucket: str, prefix: str
    ) -> Iterator[tuple[str, int, str, str]]:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # Listed in a forked helper: a runtime started here would hang the forked workers.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
            return iter(pool.submit(_obstore_listing, client.endpoint, bucket, prefix).result())


# --- boto3 --------------------------------------------------------------------------------------


class Boto3Client:
    """boto3 behind the same interface (no flexible checksums, as the copy agent would run it)."""

    def __init__(self, endpoint: Endpoint) -> None:
        from migrator.objectstore import S3Settings, make_client

        settings = S3Settings(
            f"{endpoint.scheme}://{endpoint.host}",
            endpoint.access_key,
            endpoint.secret_key,
            endpoint.region,
            session_token=endpoint.session_token,
        )
        self.s3 = make_client(settings, flexible_checksums=False)

    def get(self, bucket: str, key: str, byte_range: tuple[int, int] | None = None) -> _Response:
        from botocore.exceptions import ClientError

        params: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if byte_range is not None:
            params["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
        try:
            answer = self.s3.get_object(**params)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return _not_found()
            raise ChecksumError(f"GET s3://{bucket}/{key}: {exc}") from None
        headers = _meta_headers(answer.get("Metadata") or {})
        if answer.get("ContentRange"):
            headers["content-range"] = answer["ContentRange"]
        length = int(answer["ContentLength"])
        stream = answer["Body"]
        chunks = iter(lambda: stream.read(MIB) or None, None)
        return _Response(206 if byte_range else 200, headers, length, chunks=chunks)

    def pipeline(self, bucket: str, keys: list[str]) -> Iterator[_Response]:
        for key in keys:
            yield self.get(bucket, key)

    def put(self, bucket: str, key: str, body: Body, headers: dict[str, str]) -> Answer:
        from botocore.exceptions import BotoCoreError, ClientError

        metadata = {
            n.removeprefix("x-amz-meta-"): v
            for n, v in headers.items()
            if n.startswith("x-amz-meta-")
        }
        content_type = headers.get("Content-Type", "application/octet-stream")
        try:
            if body.fd is None:
                data: Any = body.data
                self.s3.put_object(
                    Bucket=bucket, Key=key, Body=data, ContentType=content_type, Metadata=metadata
                )
            else:
                with open(body.fd, "rb", closefd=False) as source:
                    self.s3.put_object(
                        Bucket=bucket,
                        Key=key,
                        Body=source,
                        ContentType=content_type,
                        Metadata=metadata,
                    )
                if body.on_sent is not None:
                    body.on_sent(body.length)
        except ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500))
            code = str(exc.response.get("Error", {}).get("Code", ""))
            return Answer(status, f"<Code>{code}</Code>".encode())
        except BotoCoreError as exc:
            raise WireError(f"PUT s3://{bucket}/{key}: {exc}") from None
        return Answer(200, b"")

    def reset(self) -> None:
        pass


@dataclass(frozen=True)
class Boto3Transport(Transport):
    def client(self, endpoint: Endpoint) -> Any:
        return Boto3Client(endpoint)

    def list_objects(
        self, client: Any, bucket: str, prefix: str
    ) -> Iterator[tuple[str, int, str, str]]:
        from migrator.objectstore import list_objects

        for item in list_objects(client.s3, bucket, prefix):
            yield (
                item["Key"],
                int(item["Size"]),
                str(item["ETag"]),
                item["LastModified"].isoformat(),
            )


def transport(name: str) -> Transport:
    """The engine transport called ``name``."""
    return {"s3wire": Transport(), "obstore": ObstoreTransport(), "boto3": Boto3Transport()}[name]


def upload_client(name: str, endpoint: Endpoint, timeout: float) -> Any:
    """The uploader's client called ``name``."""
    from migrator.s3wire import Client

    if name == "s3wire":
        return Client(endpoint, timeout, retry_timeouts=False)
    return ObstoreClient(endpoint) if name == "obstore" else Boto3Client(endpoint)


# --- the children: one end-to-end run each ------------------------------------------------------


def _endpoint() -> Endpoint:
    from migrator.objectstore import S3Settings

    return Endpoint.from_settings(
        S3Settings(
            os.environ["BENCH_ENDPOINT"], os.environ["BENCH_KEY"], os.environ["BENCH_SECRET"]
        )
    )


def child_verify(name: str, root: str, bucket: str, prefix: str) -> None:
    """Deep verify of ``root`` against s3://bucket/prefix, as bench/verify.py's child does."""
    from migrator.checksum import compare, hash_s3_prefix, hash_tree
    from migrator.objectstore import S3Settings

    started = time.perf_counter()
    settings = S3Settings(
        os.environ["BENCH_ENDPOINT"], os.environ["BENCH_KEY"], os.environ["BENCH_SECRET"]
    )
    result = compare(
        hash_tree(root, workers=2),
        hash_s3_prefix(settings, bucket, prefix, workers=2, transport=transport(name)),
    )
    if not result.ok:
        raise SystemExit(f"{name}: the verify found differences: {result.summary()}")
    print(time.perf_counter() - started)


def child_upload(name: str, root: str, bucket: str, prefix: str, threads: int) -> None:
    """Store every file under ``root`` with the copy agent's uploader over ``name``."""
    from migrator.uploader import Uploader
    from migrator.uploadtarget import Destination

    started = time.perf_counter()
    endpoint = _endpoint()
    destination = Destination(endpoint, bucket, prefix)
    files = {}
    for directory, _, names in os.walk(root):
        for file_name in names:
            path = os.path.relpath(os.path.join(directory, file_name), root)
            st = os.stat(os.path.join(root, path))
            files[path] = (st.st_size, st.st_mtime_ns)
    uploader = Uploader(
        destination,
        root,
        threads,
        {".jpg": "image/jpeg"},
        client=upload_client(name, endpoint, destination.timeout),
    )
    report = uploader.run(list(files), lambda *_: None, lambda _: None, files)
    if report.failures or report.uploaded != len(files):
        raise SystemExit(f"{name}: {report.uploaded} of {len(files)} stored: {report.failures[:3]}")
    print(time.perf_counter() - started)


# --- the parent ---------------------------------------------------------------------------------


@dataclass
class Run:
    transport: str
    task: str
    seconds: float  # the child process, start to exit
    inside: float  # the engine's own time inside it
    cpu: float  # client CPU: the child and its workers
    weed_cpu: float


def _weed_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _measure(name: str, task: str, argv: list[str], env: dict[str, str], weed_pid: int) -> Run:
    cpu0, weed0, started = _children_cpu(), _weed_cpu(weed_pid), time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, *argv], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{name} {task} failed:\n{done.stderr[-3000:]}")
    run = Run(
        name,
        task,
        seconds,
        float(done.stdout.split()[-1]),
        _children_cpu() - cpu0,
        _weed_cpu(weed_pid) - weed0,
    )
    print(
        f"  {task:14} {name:8} {run.seconds:7.2f} s (engine {run.inside:.2f} s), "
        f"client CPU {run.cpu:.2f} s, weed CPU {run.weed_cpu:.2f} s",
        flush=True,
    )
    return run


def _env(server: Any) -> dict[str, str]:
    return {
        **os.environ,
        "BENCH_ENDPOINT": server.s3_endpoint,
        "BENCH_KEY": server.access_key,
        "BENCH_SECRET": server.secret_key,
        "PYTHONPATH": str(ROOT),
    }


def _rounds(
    names: list[str], repeat: int, tasks: list[str], measure: Callable[[str, str, int], Run]
) -> list[Run]:
    best: dict[tuple[str, str], Run] = {}
    for round_ in range(repeat):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        print(f" round {round_ + 1}: {', '.join(order)}", flush=True)
        for task in tasks:
            for name in order:
                run = measure(name, task, round_)
                if (name, task) not in best or run.seconds < best[(name, task)].seconds:
                    best[(name, task)] = run
    return [best[(name, task)] for task in tasks for name in names]


def report(runs: list[Run], repeat: int) -> str:
    """A markdown table: each transport against s3wire, end to end."""
    load = os.getloadavg()
    lines = [
        f"End to end through the product's engine, best of {repeat}, {os.cpu_count()} cores, "
        f"load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
        "",
        "| task | transport | seconds (process) | engine s | client CPU s | weed CPU s "
        "| s3wire faster by |",
        "|---|---|---|---|---|---|---|",
    ]
    ref = {r.task: r for r in runs if r.transport == "s3wire"}
    for r in runs:
        ratio = f"{r.seconds / ref[r.task].seconds:.2f}x" if r.task in ref else "-"
        lines.append(
            f"| {r.task} | {r.transport} | {r.seconds:.2f} | {r.inside:.2f} "
            f"| {r.cpu:.2f} | {r.weed_cpu:.2f} | {ratio} |"
        )
    return "\n".join(lines)


def verify_transports(
    names: list[str],
    media_mib: int,
    small_files: int,
    repeat: int,
    build_media: Callable[[Path, int, int], None],
    build_small: Callable[[Path, int, int], None],
) -> str:
    """Deep verify of media and of small files over each transport; returns the table."""
    import shutil

    from migrator.rclone import find_rclone
    from migrator.seaweedfs import SeaweedFS

    work = Path(tempfile.mkdtemp(prefix="migrator-bench-fetchers-"))
    try:
        trees = {"media": work / "media", "small": work / "small"}
        build_media(trees["media"], media_mib * MIB, 1)
        build_small(trees["small"], small_files, 2)
        with SeaweedFS(work / "weed", volume_size_limit_mb=1024) as server:
            assert server.process is not None
            env = _env(server)
            renv = {
                **os.environ,
                "RCLONE_CONFIG": os.devnull,
                "RCLONE_CONFIG_SW_TYPE": "s3",
                "RCLONE_CONFIG_SW_PROVIDER": "SeaweedFS",
                "RCLONE_CONFIG_SW_ENDPOINT": server.s3_endpoint,
                "RCLONE_CONFIG_SW_ACCESS_KEY_ID": server.access_key,
                "RCLONE_CONFIG_SW_SECRET_ACCESS_KEY": server.secret_key,
            }
            rclone = find_rclone()
            subprocess.run([rclone, "mkdir", "sw:bench"], env=renv, check=True)
            for shape, root in trees.items():
                subprocess.run(
                    [
                        rclone,
                        "copy",
                        "--metadata",
                        "--links",
                        "--transfers",
                        "16",
                        str(root),
                        f"sw:bench/{shape}",
                    ],
                    env=renv,
                    check=True,
                )
            pid = server.process.pid

            def measure(name: str, task: str, _round: int) -> Run:
                shape = task.split()[-1]
                argv = ["--child-verify", name, str(trees[shape]), "bench", shape]
                return _measure(name, task, argv, env, pid)

            runs = _rounds(names, repeat, ["verify media", "verify small"], measure)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = report(runs, repeat)
    print(table)
    return table


def copy_transports(names: list[str], files: int, repeat: int, threads: int = 8) -> str:
    """The uploader storing ``files`` small files (1-64 KiB) over each transport."""
    import random
    import shutil

    from migrator.objectstore import S3Settings, make_client
    from migrator.seaweedfs import SeaweedFS

    work = Path(tempfile.mkdtemp(prefix="migrator-bench-fetchers-"))
    try:
        rng = random.Random(1)
        root = work / "config"
        for index in range(files):
            folder = root / "MediaCover" / str(index // 20)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"poster-{index % 20}.jpg").write_bytes(
                rng.randbytes(rng.randint(1024, 64 * 1024))
            )
        with SeaweedFS(work / "weed", volume_size_limit_mb=1024) as server:
            assert server.process is not None
            settings = S3Settings(server.s3_endpoint, server.access_key, server.secret_key)
            make_client(settings).create_bucket(Bucket="bench")
            env, pid = _env(server), server.process.pid

            def measure(name: str, task: str, round_: int) -> Run:
                argv = [
                    "--child-upload",
                    name,
                    str(root),
                    "bench",
                    f"{name}-{round_}",
                    str(threads),
                ]
                return _measure(name, task, argv, env, pid)

            runs = _rounds(names, repeat, ["upload small"], measure)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = report(runs, repeat)
    print(table)
    return table


def parse_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = set(names) - set(TRANSPORTS)
    if unknown:
        raise SystemExit(f"unknown transports {sorted(unknown)}; known: {', '.join(TRANSPORTS)}")
    return names


if __name__ == "__main__":
    if sys.argv[1] == "--child-verify":
        child_verify(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    elif sys.argv[1] == "--child-upload":
        child_upload(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]))
