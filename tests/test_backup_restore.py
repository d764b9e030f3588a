"""`migrator backup restore` of crafted archives against a real SeaweedFS: a restore stays in its
target, writes no more than the manifest and the record allow, holds bounded memory, and
refuses what a migrator snapshot never holds with one line, never a traceback."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import xxhash
import zstandard

from migrator.backup.repository import RECORD_FORMAT, BackupRepository
from migrator.backup.snapshot import create_snapshot
from migrator.checksum import DIRECTORY, FILE, SYMLINK, Entry, write_manifest
from migrator.objectstore import S3Location, S3Settings, make_client
from migrator.seaweedfs import SeaweedFS
from tests.helpers import run_cli

VOLUME = "sonarr-config"
SNAPSHOT = "20250114T030000Z"
MIB = 2**20
MTIME = 1_700_000_000


@dataclass
class Zeros:
    """``size`` zero bytes of tar content, streamed (never held in memory)."""

    size: int


Part = bytes | Zeros


@dataclass
class Project:
    root: Path
    plan: Path
    bucket: str
    server: SeaweedFS

    def repository(self) -> BackupRepository:
        settings = S3Settings(
            self.server.s3_endpoint, self.server.access_key, self.server.secret_key
        )
        return BackupRepository(make_client(settings), S3Location(self.bucket, "backups"))

    def restore_args(self, target: Path, *extra: str) -> list[str]:
        """``backup restore`` with --json: no progress line beside a one-line error."""
        return [
            "backup",
            "restore",
            SNAPSHOT,
            "--plan",
            str(self.plan),
            "--volume",
            VOLUME,
            "--to",
            str(target),
            "--json",
            *extra,
        ]


@pytest.fixture
def project(tmp_path: Path, s3_env: SeaweedFS, bucket: str) -> Project:
    source = tmp_path / "src"
    source.mkdir()
    result = run_cli(
        "plan",
        "--source-dir",
        f"{VOLUME}={source}",
        "--target",
        f"s3://{bucket}/migrated",
        "--backup-target",
        f"s3://{bucket}/backups",
        "--s3-endpoint",
        s3_env.s3_endpoint,
        "--no-probe",
        cwd=tmp_path,
    )
    assert result.exit_code == 0, result.output
    return Project(tmp_path, tmp_path / "plans" / "local.yaml", bucket, s3_env)


def member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, **fields: Any) -> bytes:
    """One tar header as tarfile writes it (pax), for any member a test wants."""
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mtime = kind, size, MTIME
    info.mode = fields.pop("mode", 0o755 if kind == tarfile.DIRTYPE else 0o644)
    for key, value in fields.items():
        setattr(info, key, value)
    return info.tobuf(tarfile.PAX_FORMAT)


def file_member(name: str, data: bytes, mode: int = 0o644) -> list[Part]:
    return [member(name, size=len(data), mode=mode), pad(data)]


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def file_entry(path: str, data: bytes, mode: int = 0o644) -> Entry:
    digest = xxhash.xxh3_128_hexdigest(data)
    return Entry(path.encode(), FILE, len(data), MTIME * 10**9, mode, 0, 0, digest)


def link_entry(path: str, target: str) -> Entry:
    digest = xxhash.xxh3_128_hexdigest(target.encode())
    return Entry(path.encode(), SYMLINK, len(target), MTIME * 10**9, 0o777, 0, 0, digest)


def compress(parts: list[Part]) -> bytes:
    """The tar stream of ``parts`` (ended like tar ends it) as one zstd frame."""
    out = io.BytesIO()
    writer = zstandard.ZstdCompressor(level=3, write_checksum=True).stream_writer(
        out, closefd=False
    )
    for part in [*parts, bytes(10240)]:
        if isinstance(part, Zeros):
            chunk = bytes(MIB)
            for offset in range(0, part.size, MIB):
                writer.write(chunk[: min(MIB, part.size - offset)])
        else:
            writer.write(part)
    writer.flush(zstandard.FLUSH_FRAME)
    return out.getvalue()


def store_snapshot(
    project: Project, parts: list[Part], entries: list[Entry], record_bytes: int | None = None
) -> None:
    """Upload an archive, its manifest and its record: a complete snapshot as a repository
    holds it, of whatever the test crafted."""
    repository = project.repository()
    archive = compress(parts)
    manifest = io.BytesIO()
    write_manifest(sorted(entries, key=lambda e: e.path), manifest, compress=True)
    files = [e for e in entries if e.type == FILE]
    record = {
        "format": RECORD_FORMAT,
        "volume": VOLUME,
        "id": SNAPSHOT,
        "app": "sonarr",
        "files": len(files),
        "directories": 0,
        "symlinks": 0,
        "databases": [],
        "warnings": [],
        "bytes": sum(e.size for e in files) if record_bytes is None else record_bytes,
        "archive": {
            "key": repository.key(VOLUME, SNAPSHOT, ".tar.zst"),
            "bytes": len(archive),
            "xxh3": xxhash.xxh3_128_hexdigest(archive),
        },
        "manifest": {
            "key": repository.key(VOLUME, SNAPSHOT, ".manifest.gz"),
            "xxh3": xxhash.xxh3_128_hexdigest(manifest.getvalue()),
        },
    }
    client = repository.client
    key = repository.key(VOLUME, SNAPSHOT, ".tar.zst")
    client.put_object(Bucket=project.bucket, Key=key, Body=archive)
    repository.write_manifest(VOLUME, SNAPSHOT, manifest.getvalue())
    repository.write_record(VOLUME, SNAPSHOT, record)


def only_error_line(result: Any) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return str(lines[0])


def tree_bytes(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A directory a restore must never touch, with the mode it must keep."""
    path = tmp_path / "outside"
    path.mkdir()
    path.chmod(0o750)
    (path / "keep").write_bytes(b"untouched")
    yield path


def assert_untouched(outside: Path) -> None:
    assert stat.S_IMODE(outside.stat().st_mode) == 0o750
    assert sorted(p.name for p in outside.iterdir()) == ["keep"]
    assert (outside / "keep").read_bytes() == b"untouched"


# --- item 2: a restore stays in its target --------------------------------------------------


def test_a_directory_member_through_a_symlink_is_refused_and_nothing_outside_changes(
    project: Project, outside: Path
) -> None:
    parts: list[Part] = [
        member("./", tarfile.DIRTYPE),
        member("esc", tarfile.SYMTYPE, linkname=str(outside), mode=0o777),
        member("esc/", tarfile.DIRTYPE, mode=0o2777),
    ]
    store_snapshot(project, parts, [link_entry("esc", str(outside))])
    target = project.root / "restored"
    result = run_cli(*project.restore_args(target))
    assert result.exit_code == 3, result.output
    assert "the archive holds esc twice" in only_error_line(result)
    assert_untouched(outside)
    assert os.readlink(target / "esc") == str(outside)


def test_a_directory_member_over_a_kept_lost_found_link_is_refused(
    project: Project, outside: Path
) -> None:
    """The target's top-level lost+found is kept, whatever it is: a directory member of that
    name is checked with lstat, never followed."""
    parts: list[Part] = [
        member("./", tarfile.DIRTYPE),
        member("lost+found/", tarfile.DIRTYPE, mode=0o2777),
    ]
    store_snapshot(project, parts, [])
    target = project.root / "restored"
    target.mkdir()
    (target / "lost+found").symlink_to(outside)
    result = run_cli(*project.restore_args(target))
    assert result.exit_code == 3, result.output
    assert "lost+found is a symlink, not a directory" in only_error_line(result)
    assert_untouched(outside)


def test_a_file_written_through_a_symlinked_parent_is_refused(
    project: Project, outside: Path
) -> None:
    parts: list[Part] = [
        member("./", tarfile.DIRTYPE),
        member("esc", tarfile.SYMTYPE, linkname=str(outside), mode=0o777),
        *file_member("esc/planted", b"x" * 100),
    ]
    entries = [link_entry("esc", str(outside)), file_entry("esc/planted", b"x" * 100)]
    store_snapshot(project, parts, entries)
    result = run_cli(*project.restore_args(project.root / "restored"))
    assert result.exit_code == 3, result.output
    assert "esc/planted: its parent esc is a symlink" in only_error_line(result)
    assert_untouched(outside)


def test_a_link_inside_the_target_does_not_redirect_a_later_member(project: Project) -> None:
    """Even a link that stays inside the target is never written through: migrator's
    archives never hold a member below a symlink."""
    parts: list[Part] = [
        member("./", tarfile.DIRTYPE),
        member("real/", tarfile.DIRTYPE),
        member("alias", tarfile.SYMTYPE, linkname="real", mode=0o777),
        *file_member("alias/config.xml", b"<Config/>"),
    ]
    entries = [link_entry("alias", "real"), file_entry("alias/config.xml", b"<Config/>")]
    store_snapshot(project, parts, entries)
    target = project.root / "restored"
    result = run_cli(*project.restore_args(target))
    assert result.exit_code == 3, result.output
    assert "alias/config.xml: its parent alias is a symlink" in only_error_line(result)
    assert list((target / "real").iterdir()) == []


# --- item 3: bounded bytes and memory ---------------------------------------------------------


def test_a_member_bigger_than_the_manifest_says_is_refused_before_it_is_written(
    project: Project,
) -> None:
    small = b"<Config><ApiKey>x</ApiKey></Config>"
    parts: list[Part] = [
        member("./", tarfile.DIRTYPE),
        member("config.xml", size=64 * MIB),
        Zeros(64 * MIB),
    ]
    store_snapshot(project, parts, [file_entry("config.xml", small)])
    target = project.root / "restored"
    result = run_cli(*project.restore_args(target))
    assert result.exit_code == 3, result.output
    line = only_error_line(result)
    assert f"config.xml holds {64 * MIB} bytes, the manifest says {len(small)}" in line
    assert tree_bytes(target) == 0


def test_a_member_missing_from_the_manifest_is_refused_before_it_is_written(
    project: Project,
) -> None:
    parts: list[Part] = [
        member("./", tarfile.DIRTYPE),
        *file_member("config.xml", b"<Config/>"),
        *file_member("planted.sh", b"#!/bin/sh\n"),
        member("planted-link", tarfile.SYMTYPE, linkname="/etc/shadow", mode=0o777),
    ]
    store_snapshot(project, parts, [file_entry("config.xml", b"<Config/>")])
    target = project.root / "restored"
    result = run_cli(*project.restore_args(target))
    assert result.exit_code == 3, result.output
    assert "planted.sh is not in the snapshot's manifest" in only_error_line(result)
    assert sorted(p.name for p in target.iterdir()) == ["config.xml"]


def test_the_total_written_is_capped_at_the_record_bytes(project: Project) -> None:
    """Each member matches its manifest entry, but together they exceed the record."""
    one, two = os.urandom(MIB), os.urandom(MIB)
    parts: list[Part] = [
        member("./", tarfile.DIRTYPE),
        *file_member("a.bin", one),
        *file_member("b.bin", two),
    ]
    entries = [file_entry("a.bin", one), file_entry("b.bin", two)]
    store_snapshot(project, parts, entries, record_bytes=MIB + 10)
    target = project.root / "restored"
    result = run_cli(*project.restore_args(target))
    assert result.exit_code == 3, result.output
    assert f"more than the {MIB + 10} bytes its record says" in only_error_line(result)
    assert tree_bytes(target) <= MIB + 10


def peak_rss_of(command: list[str]) -> tuple[int, str, int]:
    """Run ``command`` under a fresh Python parent; its exit code, stderr and peak RSS (bytes).

    The parent has no other children, so RUSAGE_CHILDREN is the command's own peak.
    """
    wrapper = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
        "sys.stderr.buffer.write(done.stderr)\n"
        "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *command], capture_output=True, text=True, timeout=300
    )
    code, peak_kib = done.stdout.split()
    return int(code), done.stderr, int(peak_kib) * 1024


@pytest.mark.parametrize(
    ("kind", "what"), [(tarfile.GNUTYPE_LONGNAME, "GNU long name"), (tarfile.XHDTYPE, "pax")]
)
def test_a_huge_name_header_is_refused_in_bounded_memory(
    project: Project, kind: bytes, what: str
) -> None:
    size = 256 * MIB  # a few KB compressed; tarfile would read it whole into memory
    parts: list[Part] = [
        member("./", tarfile.DIRTYPE),
        member("././@LongLink", kind, size=size),
        Zeros(size),
        *file_member("config.xml", b"<Config/>"),
    ]
    store_snapshot(project, parts, [file_entry("config.xml", b"<Config/>")])
    target = project.root / "restored"
    migrator = str(Path(sys.executable).parent / "migrator")
    code, stderr, peak = peak_rss_of([migrator, *project.restore_args(target)])
    assert peak < 300 * MIB, f"peak RSS {peak / MIB:.0f} MiB; {stderr}"
    assert code == 3, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    assert f"a {what} header of {size} bytes" in lines[0]
    assert not (target / "config.xml").exists()
    verify = ["backup", "verify", SNAPSHOT, "--plan", str(project.plan), "--volume", VOLUME]
    code, stderr, peak = peak_rss_of([migrator, *verify])
    assert peak < 300 * MIB, f"peak RSS {peak / MIB:.0f} MiB; {stderr}"
    assert code == 1, stderr
    assert f"problem: the archive is damaged: a {what} header of {size} bytes" in stderr


def test_a_gnu_sparse_member_is_refused(project: Project) -> None:
    """tarfile reads a sparse member's whole map into memory; migrator never writes one."""
    info = tarfile.TarInfo("config.xml")
    info.type, info.size = tarfile.GNUTYPE_SPARSE, 9
    parts: list[Part] = [
        member("./", tarfile.DIRTYPE),
        info.tobuf(tarfile.GNU_FORMAT),
        pad(b"<Config/>"),
    ]
    store_snapshot(project, parts, [file_entry("config.xml", b"<Config/>")])
    result = run_cli(*project.restore_args(project.root / "restored"))
    assert result.exit_code == 3, result.output
    assert "a GNU sparse member (migrator never writes one)" in only_error_line(result)


# --- item 12: duplicates, setuid/setgid ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_a_duplicate_member_is_one_line_not_a_traceback(project: Project, kind: str) -> None:
    data = b"<Config/>"
    if kind == "file":
        twice = [*file_member("config.xml", data), *file_member("config.xml", data)]
        entries = [file_entry("config.xml", data)]
    else:
        link = member("config.xml", tarfile.SYMTYPE, linkname="x", mode=0o777)
        twice, entries = [link, link], [link_entry("config.xml", "x")]
    store_snapshot(project, [member("./", tarfile.DIRTYPE), *twice], entries)
    result = run_cli(*project.restore_args(project.root / "restored"))
    assert result.exit_code == 3, result.output
    assert "the archive holds config.xml twice" in only_error_line(result)


def test_setuid_and_setgid_files_come_back_only_when_asked(project: Project) -> None:
    """A snapshot of a real tree: files lose setuid/setgid unless --keep-setid; a setgid
    directory (what a pod's fsGroup makes) keeps its bit either way."""
    source = project.root / "src"
    (source / "bin").mkdir()
    (source / "bin").chmod(0o2775)
    (source / "bin" / "tool").write_bytes(b"#!/bin/sh\n")
    (source / "bin" / "tool").chmod(0o4755)
    (source / "bin" / "group-tool").write_bytes(b"#!/bin/sh\n")
    (source / "bin" / "group-tool").chmod(0o2711)
    record = create_snapshot(project.repository(), VOLUME, source)

    def restore(target: Path, *extra: str) -> dict[str, Any]:
        args = project.restore_args(target, *extra)
        args[2] = record["id"]
        result = run_cli(*args)
        assert result.exit_code == 0, result.output
        return dict(json.loads(result.stdout))

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.lstat().st_mode)

    plain = project.root / "plain"
    report = restore(plain)
    assert (mode(plain / "bin/tool"), mode(plain / "bin/group-tool")) == (0o755, 0o711)
    assert mode(plain / "bin") == 0o2775
    assert any("setuid/setgid bits of 2 files were not restored" in n for n in report["notes"])
    kept = project.root / "kept"
    restore(kept, "--keep-setid")
    assert (mode(kept / "bin/tool"), mode(kept / "bin/group-tool")) == (0o4755, 0o2711)
    assert mode(kept / "bin") == 0o2775


def test_an_honest_snapshot_with_links_and_empty_directories_restores(project: Project) -> None:
    """The bounds refuse nothing a real snapshot holds."""
    source = project.root / "src"
    (source / "MediaCover" / "1").mkdir(parents=True)
    (source / "MediaCover" / "1" / "poster.jpg").write_bytes(os.urandom(3000))
    (source / "MediaCover" / "latest").symlink_to("1/poster.jpg")
    (source / "Backups" / "empty").mkdir(parents=True)
    long_name = "Backups/" + "n" * 150 + ".zip"  # a pax header
    (source / long_name).write_bytes(b"zip")
    record = create_snapshot(project.repository(), VOLUME, source)
    target = project.root / "restored"
    args = project.restore_args(target)
    args[2] = record["id"]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert os.readlink(target / "MediaCover" / "latest") == "1/poster.jpg"
    assert (target / long_name).read_bytes() == b"zip"
    assert (target / "Backups" / "empty").is_dir()


def test_directory_entries_without_a_manifest_entry_are_fine(project: Project) -> None:
    """Only empty directories have manifest entries; a non-empty one is not 'missing'."""
    parts: list[Part] = [
        member("./", tarfile.DIRTYPE),
        member("a/", tarfile.DIRTYPE),
        *file_member("a/f", b"data"),
        member("e/", tarfile.DIRTYPE),
    ]
    entries = [
        file_entry("a/f", b"data"),
        Entry(b"e/", DIRECTORY, 0, MTIME * 10**9, 0o755, 0, 0, None),
    ]
    store_snapshot(project, parts, entries)
    target = project.root / "restored"
    result = run_cli(*project.restore_args(target))
    assert result.exit_code == 0, result.output
    assert (target / "a" / "f").read_bytes() == b"data" and (target / "e").is_dir()
