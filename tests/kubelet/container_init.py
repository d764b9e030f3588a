"""The last step before a container command runs: mounts, root, working dir, then ``exec``.

Run by ``kubelet.py`` as ``python -I -S container_init.py SPEC_JSON``, either under
``unshare --mount --uts --propagation private`` (namespace mode) or directly (rewrite mode).
Standard library only, and no package imports: it runs as a script. SPEC_JSON holds:

- ``argv``, ``workingDir``: the command (already ``$(VAR)``-expanded) and where it starts;
- ``statusFd``: a pipe, closed by a successful ``exec``; a failure is written to it instead, so
  the kubelet can tell "could not start" (StartError) from "ran and failed";
- namespace mode only: ``root`` (an empty directory that becomes the container's ``/``),
  ``staging`` (scratch directory), ``hostname``, ``readOnlyRoot`` and ``mounts``
  (``source``, ``target``, ``readOnly``).

How the root is built, without changing anything outside this private mount namespace: ``/`` is
bind-mounted recursively at ``root``. A mount target that does not exist (``/mnt/source``,
``/config``) needs a directory in a parent that belongs to the host; that parent is *shadowed*:
its current contents are bound aside, a tmpfs is mounted over it, and every entry is bound back,
so the new directory lives on the tmpfs only. Then each source is bind-mounted at its target
(remounted read-only when asked), and the process chroots into ``root``.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
import tempfile
from typing import Any

MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC = 1, 32, 4096, 16384
# statvfs flags that a read-only bind remount must keep (the kernel refuses to drop locked ones).
ST_FLAGS_TO_MS = {2: 2, 4: 4, 8: 8, 1024: 1024, 2048: 2048, 4096: 1 << 21}  # nosuid..relatime
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 1
PR_SET_PDEATHSIG = 1
MAX_SYMLINKS = 40

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]


class ContainerInitError(Exception):
    """Setting up the container failed; the message goes to the status pipe."""


class MountAttr(ctypes.Structure):
    """``struct mount_attr`` for mount_setattr(2)."""

    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount(
    source: str | None,
    target: str,
    fstype: str | None = None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    """mount(2); raises ContainerInitError with the errno text."""
    encoded = [v.encode() if v is not None else None for v in (source, target, fstype, data)]
    if libc.mount(encoded[0], encoded[1], encoded[2], flags, encoded[3]) != 0:
        error = ctypes.get_errno()
        raise ContainerInitError(f"mount {source or fstype} on {target}: {os.strerror(error)}")


def set_read_only(path: str, read_only: bool, *, recursive: bool) -> None:
    """Make the mount(s) at ``path`` read-only (or writable) with mount_setattr(2)."""
    attr = MountAttr(
        MOUNT_ATTR_RDONLY if read_only else 0, 0 if read_only else MOUNT_ATTR_RDONLY, 0, 0
    )
    flags = AT_RECURSIVE if recursive else 0
    if (
        libc.syscall(
            SYS_MOUNT_SETATTR,
            AT_FDCWD,
            path.encode(),
            flags,
            ctypes.byref(attr),
            ctypes.sizeof(attr),
        )
        != 0
    ):
        error = ctypes.get_errno()
        raise ContainerInitError(f"mount_setattr {path}: {os.strerror(error)}")


def remount_read_only(target: str) -> None:
    """``mount -o remount,bind,ro``, keeping the flags the mount already has."""
    kept = os.statvfs(target).f_flag
    flags = sum(ms for st, ms in ST_FLAGS_TO_MS.items() if kept & st)
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)


def shadow(directory: str, staging: str, shadowed: dict[str, bool]) -> None:
    """Put a tmpfs over ``directory`` that shows the same entries (each bound back in place).

    ``shadowed`` maps each shadowed directory to whether it was read-only before.
    """
    if directory in shadowed:
        return
    shadowed[directory] = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    aside = tempfile.mkdtemp(dir=staging)
    mount(directory, aside, None, MS_BIND | MS_REC)
    info = os.stat(directory)
    mount(
        "tmpfs",
        directory,
        "tmpfs",
        0,
        f"mode={info.st_mode & 0o7777:o},uid={info.st_uid},gid={info.st_gid}",
    )
    for entry in os.scandir(aside):
        place = os.path.join(directory, entry.name)
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), place)
            continue
        if entry.is_dir(follow_symlinks=False):
            os.mkdir(place)
        else:
            open(place, "w").close()  # files, sockets, devices: any inode can be a mountpoint
        mount(entry.path, place, None, MS_BIND | MS_REC)


def resolve_in_root(root: str, current: str, name: str, hops: int) -> tuple[str, int]:
    """``current/name`` with symlinks followed inside ``root`` (as runtimes do)."""
    child = os.path.join(current, name)
    while os.path.islink(child):
        hops += 1
        if hops > MAX_SYMLINKS:
            raise ContainerInitError(f"too many levels of symbolic links at {child}")
        link = os.readlink(child)
        base = root if link.startswith("/") else current
        child = os.path.normpath(os.path.join(base, link.lstrip("/")))
        if not (child + "/").startswith(root.rstrip("/") + "/"):
            child = root  # ".." cannot leave the container root
    return child, hops


def make_mountpoint(
    root: str, target: str, is_dir: bool, staging: str, shadowed: dict[str, bool]
) -> str:
    """The host path of ``target`` under ``root``, created on tmpfs shadows where missing."""
    parts = [p for p in target.split("/") if p and p != "."]
    current, hops = root, 0
    for position, name in enumerate(parts):
        if name == "..":
            raise ContainerInitError(f"mount path {target} must not contain '..'")
        want_dir = is_dir or position < len(parts) - 1
        child, hops = resolve_in_root(root, current, name, hops)
        if not os.path.lexists(child):
            shadow(current, staging, shadowed)
            if want_dir:
                os.mkdir(child)
            else:
                open(child, "w").close()
        elif os.path.isdir(child) != want_dir:
            raise ContainerInitError(
                f"mount path {target}: {child[len(root) :]} is not a "
                f"{'directory' if want_dir else 'file'}"
            )
        current = child
    return current


def build_root(spec: dict[str, Any]) -> None:
    """Bind ``/`` at the new root, mount each volume (parents first), then chroot.

    Each mountpoint is made just before its mount, so a volume nested in another one gets its
    mountpoint inside the outer volume (on a shadow: the volume itself is not written).
    Shadows over read-only places (or everywhere, with readOnlyRoot) end up read-only too.
    """
    root, staging = spec["root"], spec["staging"]
    mount("/", root, None, MS_BIND | MS_REC)
    if spec.get("readOnlyRoot"):
        read_only_root(root)
    shadowed: dict[str, bool] = {}
    for volume in spec["mounts"]:
        target = make_mountpoint(
            root, volume["target"], os.path.isdir(volume["source"]), staging, shadowed
        )
        mount(volume["source"], target, None, MS_BIND | MS_REC)
        if volume["readOnly"]:
            remount_read_only(target)
    # A shadow is as writable as what it covers: read-only on the (read-only) root, writable
    # inside a writable volume such as an emptyDir at /tmp holding a bound-back checkout.
    for directory, was_read_only in shadowed.items():
        if was_read_only:
            remount_read_only(directory)
    os.chroot(root)


def read_only_root(root: str) -> None:
    """``readOnlyRootFilesystem``: everything read-only but /dev and /proc (volumes and the
    shadows made for their mountpoints come later).

    Needs mount_setattr(2) (Linux 5.12); without it the root stays writable, with a warning.
    """
    try:
        set_read_only(root, True, recursive=True)
        for writable in ("dev", "proc"):
            set_read_only(os.path.join(root, writable), False, recursive=True)
    except ContainerInitError as error:
        print(f"kubelet: readOnlyRootFilesystem not enforced: {error}", file=sys.stderr)


def start(spec: dict[str, Any]) -> None:
    """Prepare the process and exec the command; returns only by raising."""
    if spec.get("root"):
        socket.sethostname(spec["hostname"])
        build_root(spec)
    try:
        os.chdir(spec["workingDir"])
    except OSError as error:
        raise ContainerInitError(
            f"chdir to cwd ({spec['workingDir']!r}) set in config.json failed: {error.strerror}"
        ) from error
    for number in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores them; the command must not
        signal.signal(number, signal.SIG_DFL)
    os.set_inheritable(spec["statusFd"], False)
    argv = spec["argv"]
    try:
        os.execvp(argv[0], argv)
    except OSError as error:
        kind = "executable file not found in $PATH" if error.errno == 2 else error.strerror
        raise ContainerInitError(f'exec: "{argv[0]}": {kind}') from error


def main() -> None:
    """Entry point: ``container_init.py SPEC_JSON``."""
    spec = json.loads(sys.argv[1])
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the test process, never orphaned
    try:
        if not spec.get("argv"):
            raise ContainerInitError("no command specified")
        start(spec)
    except (ContainerInitError, OSError) as error:
        os.write(spec["statusFd"], str(error).encode() or b"container init failed")
        sys.exit(128)


if __name__ == "__main__":
    main()
