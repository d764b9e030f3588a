"""The checksum engine on local trees: hashing, manifests, merge-compare, sample, cache."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from migrator.checksum import (
    DIRECTORY,
    FILE,
    OTHER,
    SYMLINK,
    ChecksumError,
    Entry,
    HashStats,
    ManifestError,
    compare,
    escape_path,
    hash_directory_to_manifest,
    hash_tree,
    in_sample,
    iter_differences,
    read_manifest,
    unescape_path,
    write_manifest,
)
from migrator.checksum.entry import sample_threshold
from migrator.checksum.local import BATCH_FILES, CHUNK_SIZE
from tests.helpers import unavailable

ODD_NAMES = [
    "with space.txt",
    "tab\there",
    "new\nline",
    "back\\slash",
    "ünïcødé-名前.txt",
    "carriage\rreturn",
]


def xxh(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small tree with every kind of entry the engine knows."""
    root = tmp_path / "tree"
    root.mkdir()
    for index, name in enumerate(ODD_NAMES):
        (root / name).write_bytes(f"content {index}".encode())
    (root / os.fsdecode(b"latin1-\xe9")).write_bytes(b"invalid utf-8 name")
    (root / "empty").write_bytes(b"")
    (root / "a").mkdir()
    (root / "a" / "b").write_bytes(b"inside a")
    (root / "a-c").write_bytes(b"sibling that sorts before a/")
    (root / "emptydir").mkdir()
    (root / "nested" / "deeper" / "hollow").mkdir(parents=True)
    (root / "big.bin").write_bytes(os.urandom(CHUNK_SIZE + 12345))
    (root / "link").symlink_to("a/b")
    (root / "dangling").symlink_to("nowhere")
    os.mkfifo(root / "fifo")
    return root


def entries_by_path(entries: list[Entry]) -> dict[bytes, Entry]:
    return {entry.path: entry for entry in entries}


def test_every_kind_of_entry_is_listed_sorted_and_hashed(tree: Path) -> None:
    entries = list(hash_tree(tree, workers=1))
    paths = [entry.path for entry in entries]
    assert paths == sorted(paths)
    assert paths.index(b"a-c") < paths.index(b"a/b")  # byte order of full paths
    found = entries_by_path(entries)
    for index, name in enumerate(ODD_NAMES):
        entry = found[name.encode()]
        assert (entry.type, entry.size, entry.xxh3) == (
            FILE,
            9 + len(str(index)) - 1,
            xxh(f"content {index}".encode()),
        )
    assert found[b"latin1-\xe9"].xxh3 == xxh(b"invalid utf-8 name")
    assert found[b"empty"].size == 0 and found[b"empty"].xxh3 == xxh(b"")
    big = (tree / "big.bin").read_bytes()
    assert found[b"big.bin"].xxh3 == xxh(big) and found[b"big.bin"].size == len(big)
    assert found[b"link"].type == SYMLINK and found[b"link"].xxh3 == xxh(b"a/b")
    assert found[b"dangling"].type == SYMLINK and found[b"dangling"].size == len(b"nowhere")
    assert found[b"emptydir/"].type == DIRECTORY and found[b"emptydir/"].xxh3 is None
    assert found[b"nested/deeper/hollow/"].type == DIRECTORY
    assert b"nested/" not in found and b"a/" not in found  # only empty directories
    assert found[b"fifo"].type == OTHER and found[b"fifo"].xxh3 is None
    st_link = os.lstat(tree / "a" / "b")
    assert found[b"a/b"].mode == st_link.st_mode & 0o7777
    assert found[b"a/b"].uid == st_link.st_uid and found[b"a/b"].mtime_ns == st_link.st_mtime_ns


def test_worker_processes_give_the_same_entries_as_inline(tmp_path: Path) -> None:
    root = tmp_path / "many"
    for index in range(BATCH_FILES * 3 + 7):
        folder = root / f"d{index % 5}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{index}").write_bytes(os.urandom(index % 300))
    (root / "big").write_bytes(os.urandom(2 * CHUNK_SIZE + 1))
    progress: list[tuple[int, int]] = []
    parallel = list(hash_tree(root, workers=2, progress=lambda f, b: progress.append((f, b))))
    assert parallel == list(hash_tree(root, workers=1))
    assert sum(f for f, _ in progress) == len(parallel)
    assert sum(b for _, b in progress) == sum(entry.size for entry in parallel)


def test_lost_and_found_at_the_top_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "lost+found").mkdir()
    (tmp_path / "data").write_bytes(b"x")
    assert [e.path for e in hash_tree(tmp_path, workers=1)] == [b"data"]
    assert [e.path for e in hash_tree(tmp_path, workers=1, skip_top=())] == [
        b"data",
        b"lost+found/",
    ]


UNREADABLE_CHECK = """
import sys
from migrator.checksum import ChecksumError, hash_tree
try:
    list(hash_tree(sys.argv[1], workers=1))
except ChecksumError as error:
    print(error)
    sys.exit(0)
sys.exit("read a file it may not read")
"""


def test_unreadable_file_is_an_error_naming_it(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"x")
    secret.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(ChecksumError, match="secret"):
            list(hash_tree(tmp_path, workers=1))
        return
    # root reads every file: hash in a child that lost the capabilities that let it do so.
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        unavailable("running as root without util-linux setpriv to drop CAP_DAC_OVERRIDE")
    drop = "--bounding-set=-dac_override,-dac_read_search"
    child = subprocess.run(
        [setpriv, drop, sys.executable, "-c", UNREADABLE_CHECK, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert "secret" in child.stdout


def test_a_missing_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ChecksumError, match="not a directory"):
        list(hash_tree(tmp_path / "nope"))


# --- path escaping and manifests ----------------------------------------------------------------


@given(st.binary(min_size=1, max_size=40))
def test_escaped_paths_round_trip_and_stay_on_one_line(path: bytes) -> None:
    text = escape_path(path)
    assert unescape_path(text) == path
    assert "\n" not in text and "\t" not in text and "\r" not in text
    text.encode("utf-8")  # always valid UTF-8


def test_readable_names_are_written_as_they_are() -> None:
    assert escape_path("ünï cødé/名前.txt".encode()) == "ünï cødé/名前.txt"
    assert escape_path(b"a\tb\\c\n\xff") == "a\\tb\\\\c\\n\\xff"


def test_manifest_round_trips_plain_gzip_and_streams(tree: Path, tmp_path: Path) -> None:
    entries = list(hash_tree(tree, workers=1))
    for name in ("manifest.txt", "manifest.txt.gz"):
        path = tmp_path / name
        assert write_manifest(entries, path) == len(entries)
        assert list(read_manifest(path)) == entries
    assert (tmp_path / "manifest.txt.gz").read_bytes()[:2] == b"\x1f\x8b"
    stream = io.BytesIO()
    write_manifest(entries, stream, compress=True)
    assert list(read_manifest(io.BytesIO(stream.getvalue()))) == entries
    lines = (tmp_path / "manifest.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#migrator-manifest v1"
    assert "link\tl\t3\t" in "\n".join(lines)


def test_agent_function_writes_a_manifest(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.manifest.gz"
    stats = hash_directory_to_manifest(tree, out, workers=1)
    assert stats.files == len(list(read_manifest(out)))
    assert not list(tmp_path.glob(".*.tmp"))


def test_malformed_or_unsorted_manifests_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("not a manifest\n")
    with pytest.raises(ManifestError, match="not a migrator manifest"):
        list(read_manifest(bad))
    header = "#migrator-manifest v1\n"
    line = "{}\tf\t1\t0.000000000\t0644\t0\t0\t" + "0" * 32 + "\n"
    bad.write_text(header + line.format("b") + line.format("a"))
    with pytest.raises(ManifestError, match="line 3: entries are not sorted"):
        list(read_manifest(bad))
    bad.write_text(header + "only\tthree\tfields\n")
    with pytest.raises(ManifestError, match="line 2"):
        list(read_manifest(bad))
    entry = Entry(b"b", FILE, 1, 0, 0o644, 0, 0, "0" * 32)
    with pytest.raises(ManifestError, match="out of order"):
        write_manifest([entry, entry._replace(path=b"a")], tmp_path / "out")


# --- compare --------------------------------------------------------------------------------------


def make(path: str, content: bytes = b"x", **changes: Any) -> Entry:
    entry = Entry(path.encode(), FILE, len(content), 10**18, 0o644, 1000, 1000, xxh(content))
    return entry._replace(**changes)


def test_compare_names_each_kind_of_difference() -> None:
    source = [
        make("checksum", b"aaaa"),
        make("extra-not", b"same"),
        make("missing"),
        make("mode"),
        make("mtime"),
        make("owner"),
        make("size", b"long"),
        make("type"),
    ]
    destination = [
        make("checksum", b"aaab"),
        make("extra"),
        make("extra-not", b"same"),
        make("mode", mode=0o600),
        make("mtime", mtime_ns=10**18 + 5),
        make("owner", uid=0),
        make("size", b"lo"),
        make("type", type=SYMLINK),
    ]
    result = compare(source, destination)
    kinds = {difference.name: difference.kind for difference in result.differences}
    assert kinds == {
        "checksum": "checksum",
        "extra": "extra",
        "missing": "missing",
        "mode": "mode",
        "mtime": "mtime",
        "owner": "owner",
        "size": "size",
        "type": "type",
    }
    assert not result.ok and result.content_differences == 5 and result.metadata_differences == 3
    assert result.matched == 4  # extra-not, mode, mtime, owner have equal content
    assert "size\tsize: 4 != 2" in [d.describe() for d in result.differences]


def test_metadata_differences_fail_only_when_strict() -> None:
    source = [make("a"), make("b")]
    destination = [make("a", mode=0o600), make("b", mtime_ns=1)]
    assert compare(source, destination).ok
    assert not compare(source, destination, strict_metadata=True).ok
    assert compare(source, [make("a"), make("b", mtime_ns=10**18 + 900)], mtime_window_ns=1000).ok
    unknown = [make("a", mode=None, uid=None, gid=None, mtime_ns=None), make("b", mode=None)]
    assert compare(source, unknown, strict_metadata=True).ok  # unknown never differs


def test_compare_keeps_a_bounded_list_but_counts_everything() -> None:
    source = [make(f"f{index:05d}") for index in range(50)]
    result = compare(source, [], limit=10)
    assert result.counts["missing"] == 50 and len(result.differences) == 10 and result.truncated


def test_compare_refuses_unsorted_input() -> None:
    with pytest.raises(ManifestError, match="not sorted"):
        compare([make("b"), make("a")], [])


paths = st.lists(st.binary(min_size=1, max_size=6), unique=True, max_size=30)


@settings(max_examples=200, deadline=None)
@given(
    source_paths=paths,
    destination_paths=paths,
    contents=st.dictionaries(st.binary(min_size=1, max_size=6), st.binary(max_size=3)),
)
def test_merge_compare_agrees_with_a_naive_set_comparison(
    source_paths: list[bytes], destination_paths: list[bytes], contents: dict[bytes, bytes]
) -> None:
    def side(chosen: list[bytes], salt: bytes) -> list[Entry]:
        return [
            Entry(p, FILE, len(c), 0, 0o644, 0, 0, xxh(c))
            for p in sorted(chosen)
            for c in [contents.get(p, b"") + (salt if p[0] % 3 == 0 else b"")]
        ]

    source, destination = side(source_paths, b""), side(destination_paths, b"!")
    by_src = {e.path: e for e in source}
    by_dst = {e.path: e for e in destination}
    expected = {(p, "missing") for p in by_src.keys() - by_dst.keys()}
    expected |= {(p, "extra") for p in by_dst.keys() - by_src.keys()}
    for p in by_src.keys() & by_dst.keys():
        if by_src[p].size != by_dst[p].size:
            expected.add((p, "size"))
        elif by_src[p].xxh3 != by_dst[p].xxh3:
            expected.add((p, "checksum"))
    found = [(d.path, d.kind) for d in iter_differences(iter(source), iter(destination))]
    assert set(found) == expected and len(found) == len(expected)
    assert [p for p, _ in found] == sorted(p for p, _ in found)
    assert compare(source, destination).ok == (not expected)


# --- sample and cache -----------------------------------------------------------------------------


def test_sample_is_deterministic_and_the_same_on_both_sides(tmp_path: Path) -> None:
    for side in ("src", "dst"):
        for index in range(300):
            (tmp_path / side / f"d{index % 7}").mkdir(parents=True, exist_ok=True)
            (tmp_path / side / f"d{index % 7}" / f"f{index}").write_bytes(side.encode())
    source = [e.path for e in hash_tree(tmp_path / "src", workers=1, sample=0.25)]
    destination = [e.path for e in hash_tree(tmp_path / "dst", workers=1, sample=0.25)]
    assert source == destination
    assert source == [e.path for e in hash_tree(tmp_path / "src", workers=1, sample=0.25)]
    threshold = sample_threshold(0.25)
    everything = [e.path for e in hash_tree(tmp_path / "src", workers=1)]
    assert source == [p for p in everything if in_sample(p, threshold)]
    assert 40 < len(source) < 110  # about a quarter of 300
    assert b"d0/" not in source  # a directory emptied by the sample is not an empty directory


def test_cache_skips_unchanged_files_and_that_is_its_contract(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    for index in range(20):
        (root / f"f{index}").write_bytes(b"%02d" % index)
    cache = tmp_path / "cache" / "tree.cache"
    first, second, third = HashStats(), HashStats(), HashStats()
    original = list(hash_tree(root, workers=1, cache=cache, stats=first))
    assert first.hashed_files == 20 and cache.exists()

    # Rewrite f0 in place with the same size and mtime: the inode stays, so the cache answers
    # with the old digest. This is the contract: (path, size, mtime_ns, inode) unchanged means
    # unchanged content. Tools that keep mtimes while changing bytes defeat it; pass no cache.
    stat = os.stat(root / "f0")
    with open(root / "f0", "r+b") as handle:
        handle.write(b"XX")
    os.utime(root / "f0", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(root / "f0").st_ino == stat.st_ino
    assert list(hash_tree(root, workers=1, cache=cache, stats=second)) == original
    assert second.cached_files == 20 and second.hashed_files == 0

    (root / "f1").write_bytes(b"new")  # size and mtime change: read again
    fresh = entries_by_path(list(hash_tree(root, workers=1, cache=cache, stats=third)))
    assert third.hashed_files == 1 and fresh[b"f1"].xxh3 == xxh(b"new")
    assert entries_by_path(list(hash_tree(root, workers=1)))[b"f0"].xxh3 == xxh(b"XX")


def test_a_cache_made_for_another_tree_is_ignored(tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_bytes(name.encode())
    cache = tmp_path / "shared.cache"
    list(hash_tree(tmp_path / "one", workers=1, cache=cache))
    stats = HashStats()
    entries = list(hash_tree(tmp_path / "two", workers=1, cache=cache, stats=stats))
    assert stats.cached_files == 0 and entries[0].xxh3 == xxh(b"two")


def test_an_abandoned_run_keeps_the_old_cache(tmp_path: Path) -> None:
    for index in range(5):
        (tmp_path / f"f{index}").write_bytes(b"x")
    cache = tmp_path.parent / f"{tmp_path.name}.cache"
    list(hash_tree(tmp_path, workers=1, cache=cache))
    before = cache.read_bytes()
    entries = hash_tree(tmp_path, workers=1, cache=cache)
    assert isinstance(entries, Generator)
    next(entries)
    entries.close()
    assert cache.read_bytes() == before
    assert not list(tmp_path.parent.glob(f"{cache.name}.*.tmp"))
