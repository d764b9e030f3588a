"""What a copy Job runs (``migrator agent copy``): a delta copy driven by a manifest of the last copy.

rclone moves the bytes. This module decides *which* files it moves, so that a re-run does not pay a
HEAD request per object to rediscover what it already copied:

1. walk the source once (``lstat`` only), keeping this shard's files;
2. compare with the state of the last copy (path -> size, mtime) stored beside the destination;
   a file whose size or mtime changed, or that is new, is copied; nothing else is looked at;
   (with ``--recheck``, first forgetting what the destination no longer holds at its size and
   what the last verify found different);
3. run ``rclone copy --files-from-raw`` on exactly those files (``--no-check-dest``: we know they
   differ), recording each file rclone reports as copied, with checkpoints so a crash resumes;
   the files it did not report are recorded only where the destination holds them;
4. with ``delete`` (the cutover's final sync), list the destination once and delete what the
   source no longer has, inside this volume's prefix only.

Without a state location (PVC targets), rclone compares with the destination itself, which is cheap
on a file system.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migrator.copystate import (
    VERIFY_DIFFERENCES,
    StateRecorder,
    changed_files,
    decode_names,
    decode_state,
)
from migrator.errors import BadInputError, InterruptedRunError, OperationFailedError
from migrator.events import Emit
from migrator.rclone import NO_SPACE, Rclone, is_not_found, rclone_content_types, rclone_error
from migrator.rclone_names import ENCODING_FLAG, QUOTE, standard_path
from migrator.rclonerun import Interrupted, SignalGuard, follow_rclone
from migrator.sourcetree import LINK_SUFFIX, Shard, Signature, SourceTree, walk_source
from migrator.uploader import Uploader, UploadReport, extension
from migrator.uploadtarget import (
    Destination,
    can_upload,
    check_remote_trust,
    flag_value,
    native_destination,
)

# The transfers keep rclone's five minutes of silence: completing a multipart upload of a large
# file can keep SeaweedFS quiet for longer than a minute.
TRANSFER_BOUNDED_FLAGS = ("--contimeout", "10s")


# --- the copy ---------------------------------------------------------------------------------


@dataclass
class CopyRequest:
    source: Path
    dest: str
    state: str | None = None
    delete: bool = False
    skip_live_sqlite: bool = False
    shard: Shard = field(default_factory=Shard)
    rclone_flags: list[str] = field(default_factory=list)
    # "auto": S3 destinations are written by migrator.uploader where it is exactly equivalent
    # to rclone; "rclone": rclone moves every file.
    uploader: str = "auto"
    # Trust the state only where the destination holds each file at its recorded size.
    recheck: bool = False
    # The filer's gRPC address (HOST:PORT) when the target is SeaweedFS: owner, mode and mtime are
    # then set in the filer entries, which is what a weed mount shows (migrator.filer).
    filer: str | None = None


@dataclass
class CopyOutcome:
    files: int
    bytes: int
    copied: int
    copied_bytes: int
    deleted: int
    skipped_sqlite: list[str]
    seconds: float
    native: int = 0  # files stored by migrator's own uploader (the rest of ``copied``: rclone)

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "bytes": self.bytes,
            "copied": self.copied,
            "copiedBytes": self.copied_bytes,
            "deleted": self.deleted,
            "skippedSqlite": self.skipped_sqlite,
            "seconds": round(self.seconds, 3),
            "native": self.native,
        }


def state_path(request: CopyRequest) -> str | None:
    if not request.state:
        return None
    return f"{request.state.rstrip('/')}/copy-state{request.shard.suffix}.tsv.gz"


def run_copy(request: CopyRequest, emit: Emit, rclone: Rclone | None = None) -> CopyOutcome:
    """Copy (and with ``delete`` sync) one volume; raises OperationFailedError on a partial copy."""
    started = time.monotonic()
    rclone = rclone or Rclone()
    if not request.source.is_dir():
        raise BadInputError(f"source {request.source} is not a directory")
    check_remote_trust(request.dest)
    tree = walk_source(request.source, request.shard, request.skip_live_sqlite)
    location = state_path(request)
    previous = decode_state(rclone.read(location, fail_fast=True)) if location else {}
    recorded = len(previous)
    if request.recheck and previous:
        previous = recheck_state(request, rclone, previous)
    todo = changed_files(tree.files, previous) if location else sorted(tree.files)
    new_dirs = (
        sorted(d for d in tree.empty_dirs if d + "/" not in previous)
        if location
        else sorted(tree.empty_dirs)
    )
    todo_bytes = sum(tree.files[p][0] for p in todo)
    emit(
        {
            "event": "plan",
            "files": len(tree.files),
            "bytes": tree.total_bytes,
            "toCopy": len(todo),
            "toCopyBytes": todo_bytes,
            "skippedSqlite": tree.skipped_sqlite,
            "recheckDropped": recorded - len(previous),
        }
    )
    recorder = StateRecorder(rclone, location, previous, tree.files)
    destination = None
    if todo and location and request.uploader == "auto":
        destination = native_destination(request.dest, request.rclone_flags)
    rest, native = todo, []
    if destination is not None:
        native = [p for p in todo if can_upload(p, tree.files[p][0])]
        rest = [p for p in todo if not can_upload(p, tree.files[p][0])]
        _upload(request, rclone, destination, native, todo, todo_bytes, tree, recorder, emit)
    if rest:  # after the native uploads, all of which succeeded (or _upload raised)
        readable = [p for p in rest if QUOTE not in p]
        rest_bytes = sum(tree.files[p][0] for p in readable)
        emit_rest = _with_offset(emit, len(native), todo_bytes - rest_bytes, len(todo), todo_bytes)
        if readable:
            _transfer(
                request,
                rclone,
                readable,
                rest_bytes,
                recorder,
                emit_rest,
                trusted=location is not None,
                sizes=tree.files,
            )
        left = [p for p in rest if p not in recorder.done]
        if left:
            _copy_left_over(request, rclone, left, len(todo), tree, recorder, emit)
    for directory in new_dirs:
        _make_dir(request, rclone, directory)
        recorder.made_dir(directory)
    deleted = _delete_extras(request, rclone, tree) if request.delete else 0
    recorder.finish(deleted_ok=request.delete, empty_dirs=tree.empty_dirs)
    if request.filer:
        _set_attributes(request, tree, emit)
    outcome = CopyOutcome(
        files=len(tree.files),
        bytes=tree.total_bytes,
        copied=len(todo),
        copied_bytes=todo_bytes,
        deleted=deleted,
        skipped_sqlite=tree.skipped_sqlite,
        seconds=time.monotonic() - started,
        native=len(native),
    )
    emit({"event": "done", **outcome.as_dict()})
    return outcome


def recheck_state(
    request: CopyRequest, rclone: Rclone, previous: dict[str, Signature]
) -> dict[str, Signature]:
    """The entries of ``previous`` that the destination still holds: files at their recorded
    size, empty directories as directories (one listing of the volume's prefix), less the files
    the last verify found different there."""
    assert request.state is not None
    damaged = decode_names(rclone.read(f"{request.state.rstrip('/')}/{VERIFY_DIFFERENCES}"))
    links = ["--links"] if "--links" in request.rclone_flags else []
    result = rclone.run("lsf", "-R", "--format", "sp", "--separator", "\t", *links, request.dest)
    if result.returncode != 0 and not is_not_found(result.stderr):
        raise OperationFailedError(f"listing {request.dest}: {rclone_error(result.stderr)}")
    listed = _listed_sizes(result.stdout)
    kept = {}
    for path, signature in previous.items():
        if path in damaged or _source_name(path) in damaged:  # verify names links by name
            present = False
        elif path.endswith("/"):  # an empty directory (its marker on S3)
            present = listed.get(standard_path(path[:-1]) + "/") is not None
        else:
            present = listed.get(standard_path(path)) == signature[0]
        if present:
            kept[path] = signature
    return kept


def _listed_sizes(stdout: bytes) -> dict[str, int]:
    """name -> size of ``rclone lsf --format sp --separator TAB`` output (directories end in
    "/", size -1); names in rclone's standard encoding, which holds no tab or newline."""
    sizes = {}
    for line in stdout.decode("utf-8", errors="surrogateescape").splitlines():
        size, _, name = line.partition("\t")
        if size.lstrip("-").isdigit():
            sizes[name] = int(size)
    return sizes


def _upload(
    request: CopyRequest,
    rclone: Rclone,
    destination: Destination,
    paths: list[str],
    todo: list[str],
    todo_bytes: int,
    tree: SourceTree,
    recorder: StateRecorder,
    emit: Emit,
) -> None:
    """Store ``paths`` with the native uploader; raises on a partial copy, saving progress."""
    if not paths:
        return
    threads = flag_value(request.rclone_flags, "--transfers", 4)
    types = rclone_content_types(rclone, {extension(path) for path in paths})
    uploader = Uploader(destination, str(request.source), threads, types)
    started = time.monotonic()

    def tick(report: UploadReport) -> None:
        sent = min(uploader.bytes_sent, todo_bytes)
        speed = sent / max(time.monotonic() - started, 1e-3)
        eta = (todo_bytes - sent) / speed if speed > 0 else None
        emit(
            {
                "event": "progress",
                "bytes": sent,
                "totalBytes": todo_bytes,
                "files": report.uploaded,
                "totalFiles": len(todo),
                "speed": speed,
                "eta": eta,
                "errors": len(report.failures),
            }
        )

    try:
        with SignalGuard():
            report = uploader.run(paths, recorder.copied, tick, tree.files)
    except (Interrupted, KeyboardInterrupt):
        recorder.checkpoint()
        emit({"event": "error", "message": "interrupted: progress saved, re-run to resume"})
        raise InterruptedRunError("interrupted: progress saved, re-run to resume") from None
    if report.vanished:
        emit({"event": "vanished", "files": report.vanished[:100], "count": len(report.vanished)})
    if report.gave_up:
        recorder.checkpoint()
        emit({"event": "error", "message": report.gave_up})
        raise OperationFailedError(f"{report.gave_up}; progress saved, re-run to resume")
    if report.failures:
        recorder.checkpoint()
        for failure in report.failures[:20]:
            emit({"event": "error", "message": failure.message, "object": failure.path})
        fatal = next((f for f in report.failures if f.fatal), None)
        if fatal is not None:
            raise OperationFailedError(fatal.message)
        raise OperationFailedError(
            f"{len(report.failures)} of {len(paths)} files could not be stored (first: "
            f"{report.failures[0].message}): the copy is partial; re-run to resume"
        )


def _with_offset(emit: Emit, files: int, size: int, total_files: int, total_bytes: int) -> Emit:
    """An emitter adding what an earlier stage copied to the progress of a later one."""

    def emit_with_offset(event: dict[str, Any]) -> None:
        if event.get("event") == "progress":
            event = {
                **event,
                "files": event["files"] + files,
                "bytes": event["bytes"] + size,
                "totalFiles": total_files,
                "totalBytes": total_bytes,
            }
        emit(event)

    return emit_with_offset


def _transfer(
    request: CopyRequest,
    rclone: Rclone,
    todo: list[str],
    todo_bytes: int,
    recorder: StateRecorder,
    emit: Emit,
    trusted: bool,
    sizes: dict[str, Signature],
) -> None:
    """Copy ``todo`` with rclone; record what rclone reports copied and, after it, what the
    destination holds at the walk's size (raises on a failed rclone, saving progress)."""
    listing = _raw_listing(todo)
    args = [
        rclone.binary,
        "copy",
        ENCODING_FLAG,
        f"{request.source}/",
        request.dest,
        "--files-from-raw",
        listing,
    ]
    if trusted:
        args += ["--no-check-dest", "--no-traverse"]
    args += [
        *TRANSFER_BOUNDED_FLAGS,
        *request.rclone_flags,
        "--use-json-log",
        "-v",
        "--stats",
        "1s",
        "--stats-log-level",
        "NOTICE",
    ]
    try:
        code, last_error = follow_rclone(args, todo, todo_bytes, recorder, emit)
    finally:
        os.unlink(listing)
    if code != 0:
        recorder.checkpoint()
        if any(text in last_error.lower() for text in NO_SPACE):  # a re-run alone fails too
            raise OperationFailedError(
                f"the destination {request.dest} is full (no space left on device): the copy "
                "is partial; "
                "grow the volume or free space there, then re-run to resume"
            )
        raise OperationFailedError(
            f"rclone copy exited with code {code}: the copy is partial; re-run to resume"
        )
    # Exit 0 does not mean every listed file was copied: rclone skips names it cannot find.
    # Record the rest only where the destination holds them (invalid UTF-8 names, whose
    # "Copied" line the log-following cannot match, among them).
    _record_present(request, rclone, [p for p in todo if p not in recorder.done], sizes, recorder)


def _raw_listing(paths: list[str]) -> str:
    """A ``--files-from-raw`` file naming ``paths`` as rclone reads them: in its standard
    encoding (a newline as "␊", its symbols and quote rune quoted); the caller unlinks it."""
    with tempfile.NamedTemporaryFile(
        "wb", prefix="migrator-files-", suffix=".txt", delete=False
    ) as listing:
        listing.write(b"".join(os.fsencode(standard_path(p)) + b"\n" for p in paths))
    return listing.name


def _record_present(
    request: CopyRequest,
    rclone: Rclone,
    paths: list[str],
    sizes: dict[str, Signature],
    recorder: StateRecorder,
) -> None:
    """Record those of ``paths`` that the destination holds at their walk's size (one listing
    of just those names)."""
    if not paths:
        return
    listing = _raw_listing(paths)
    links = ["--links"] if "--links" in request.rclone_flags else []
    try:
        result = rclone.run(
            "lsf",
            "-R",
            "--files-only",
            "--format",
            "sp",
            "--separator",
            "\t",
            "--files-from-raw",
            listing,
            *links,
            request.dest,
        )
    finally:
        os.unlink(listing)
    if result.returncode != 0 and not is_not_found(result.stderr):
        raise OperationFailedError(f"listing {request.dest}: {rclone_error(result.stderr)}")
    present = _listed_sizes(result.stdout)
    for path in paths:
        if present.get(standard_path(path)) == sizes[path][0]:
            recorder.copied(path)


def _copy_left_over(
    request: CopyRequest,
    rclone: Rclone,
    left: list[str],
    total: int,
    tree: SourceTree,
    recorder: StateRecorder,
    emit: Emit,
) -> None:
    """Copy the files rclone could not take by name (its quote rune, names it skipped) another
    way: the native uploader for S3, a plain copy for a directory; raises for any left."""
    if os.path.isabs(request.dest):
        for path in left:
            signature = _copy_locally(request.source, Path(request.dest), path)
            if signature is not None:
                recorder.copied(path, signature)
    else:
        destination = native_destination(request.dest, request.rclone_flags)
        fits = [p for p in left if can_upload(p, tree.files[p][0])]
        if destination is not None and fits:
            size = sum(tree.files[p][0] for p in fits)
            _upload(request, rclone, destination, fits, fits, size, tree, recorder, emit)
    missing = [p for p in left if p not in recorder.done and _at_source(request.source, p)]
    if missing:
        recorder.checkpoint()
        raise OperationFailedError(
            f"{len(missing)} of {total} files could not be copied (first: {missing[0]!r}): "
            "rclone cannot take their names and no other way fits this destination; they are "
            "not recorded as copied"
        )


def _at_source(source: Path, path: str) -> bool:
    """Whether ``path`` (perhaps ``NAME.rclonelink``) is still in the source (else it vanished)."""
    name = path[: -len(LINK_SUFFIX)] if path.endswith(LINK_SUFFIX) else path
    return os.path.lexists(source / path) or os.path.lexists(source / name)


def _copy_locally(source: Path, dest: Path, path: str) -> Signature | None:
    """Copy one file (or ``NAME.rclonelink`` symlink) as rclone --metadata --links would;
    its signature, or None when it vanished."""
    name = path[: -len(LINK_SUFFIX)] if path.endswith(LINK_SUFFIX) else path
    link = source / name
    target = dest / (name if link.is_symlink() else path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = os.lstat(link if link.is_symlink() else source / path)
        if stat.S_ISLNK(st.st_mode):
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            target.symlink_to(os.readlink(link))
        else:
            shutil.copy2(source / path, target, follow_symlinks=False)
    except FileNotFoundError:
        return None
    with contextlib.suppress(OSError):  # owners are kept where this process may set them
        os.chown(target, st.st_uid, st.st_gid, follow_symlinks=False)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    return (st.st_size, st.st_mtime_ns)


def _source_name(name: str) -> str:
    return name[: -len(LINK_SUFFIX)] if name.endswith(LINK_SUFFIX) else name


def _set_attributes(request: CopyRequest, tree: SourceTree, emit: Emit) -> None:
    """Give the filer entries of this shard's files and directories the source's owner, mode and
    mtime; the filer itself is compared, so metadata-only changes are corrected too."""
    from migrator.filer import FilerClient, apply_attributes, filer_directory, source_entries

    root = str(request.source)
    # A directory is created by whichever shard first stores a file in it: every shard sets the
    # directories its files are in (the same values), not only those it owns.
    parents = {rel.rpartition("/")[0] for rel in tree.files}
    for parent in list(parents):
        while parent:
            parent = parent.rpartition("/")[0]
            parents.add(parent)
    paths = sorted({*tree.files, *tree.dirs, *parents})
    if request.shard.index != 0:
        paths = [p for p in paths if p]  # the volume's own directory: shard 0's
    wanted = {}
    for rel in paths:
        wanted.update(source_entries(root, rel))
    with FilerClient(request.filer or "") as client:
        report = apply_attributes(client, filer_directory(request.dest), wanted)
    emit(
        {
            "event": "attributes",
            "checked": report.checked,
            "updated": report.updated,
            "missing": report.missing,
            "errors": len(report.failures or []),
        }
    )
    if report.failures:
        raise OperationFailedError(
            f"{len(report.failures)} filer entries kept the wrong owner/mode/mtime (first: "
            f"{report.failures[0]}); re-run to retry"
        )


def _make_dir(request: CopyRequest, rclone: Rclone, directory: str) -> None:
    """An empty source directory: a directory marker on S3 (rclone --s3-directory-markers)."""
    target = f"{request.dest.rstrip('/')}/{directory}"
    result = rclone.run("mkdir", "--s3-directory-markers", "--s3-no-check-bucket", target)
    if result.returncode != 0:
        raise OperationFailedError(f"creating directory {target}: {rclone_error(result.stderr)}")


def _delete_extras(request: CopyRequest, rclone: Rclone, tree: SourceTree) -> int:
    """Delete destination files and directory markers the source no longer has (this shard's)."""
    # rclone lists (and takes back) names in its standard encoding, a tab as "␉" and so on:
    # compare there, or such files would look extra and be deleted right after their copy.
    from migrator.backup.repository import is_snapshot_object

    files, dirs = rclone.list_tree(request.dest)
    wanted = {standard_path(name) for name in tree.files}
    kept = wanted | {standard_path(name) for name in tree.skipped_sqlite}
    # a symlink's NAME.rclonelink may have a real symlink entry NAME beside it (migrator.filer)
    kept |= {name[: -len(LINK_SUFFIX)] for name in wanted if name.endswith(LINK_SUFFIX)}
    extras = []
    for name in files:
        # A live database left for later is not an extra; nor is a backup snapshot that
        # shares this prefix (plans refuse that layout now; older ones may still have it).
        # A symlink entry NAME goes with NAME.rclonelink, whichever shard owns that.
        owner = name + LINK_SUFFIX if name + LINK_SUFFIX in files else name
        if name not in kept and request.shard.owns(owner) and not is_snapshot_object(name):
            extras.append(name)
    if extras:
        with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as listing:
            listing.write(b"".join(os.fsencode(p) + b"\n" for p in sorted(extras)))
        result = rclone.run("delete", request.dest, "--files-from-raw", listing.name)
        os.unlink(listing.name)
        if result.returncode != 0:
            raise OperationFailedError(
                f"deleting extras in {request.dest}: {rclone_error(result.stderr)}"
            )
    for directory in sorted(dirs - {standard_path(d) for d in tree.dirs}, key=len, reverse=True):
        if request.shard.owns(directory + "/") and not any(
            f.startswith(directory + "/") for f in wanted
        ):
            rclone.run("rmdir", "--s3-directory-markers", f"{request.dest.rstrip('/')}/{directory}")
    return len(extras)
