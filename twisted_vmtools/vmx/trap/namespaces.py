"""The sandbox's namespaces and mount table.

The traced tree gets its own PID namespace (the tracer and every other host
process are invisible: no pid to ptrace, signal or open under /proc), its
own mount namespace (its own /proc; /dev/vsock masked; the sockets of the
host's init and D-Bus hidden; /sys and /proc/sys read-only) and its own IPC
namespace.  It shares the host's network namespace when Landlock can scope
abstract Unix sockets (see `landlock`), so that the tools report the
machine's NICs as they would in a VM; otherwise it gets a private network
namespace with only loopback.

`unshare_for_children` runs in the launcher; `prepare_mounts` in the
namespace's init, which has PID 1 there and full capabilities.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct

from . import capabilities
from .ptrace import libc

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

SYS_MOUNT_SETATTR = 442
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1

# Where an init system or a message bus listens.  `shutdown -h now` asks
# PID 1 through /run/systemd (or D-Bus, or the SysV initctl FIFO).
HIDDEN_DIRECTORIES = ("/run/systemd", "/run/dbus", "/var/run/dbus", "/run/user")
# Kept visible inside a hidden directory: name resolution, which the tools
# report (resolv.conf often points here), reaches no init.
REEXPOSED_DIRECTORIES = ("/run/systemd/resolve",)
MASKED_FILES = (
    "/dev/vsock",  # the tools open it when socket(AF_VSOCK) fails
    "/dev/vhost-vsock",
    "/dev/vmci",
    "/run/initctl",  # SysV init's control FIFO (systemd provides one too)
    "/dev/initctl",
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
)
# Writing these changes the machine: sysrq-trigger can power it off,
# /sys/power/state suspends it, /proc/sys is every kernel tunable.
READ_ONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/sys")

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
libc.unshare.argtypes = [ctypes.c_int]


class NamespaceError(OSError):
    """A namespace or mount step failed."""


def _fail(what: str) -> NamespaceError:
    err = ctypes.get_errno()
    return NamespaceError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    encoded = [None if value is None else os.fsencode(value) for value in (source, target, fstype, data)]
    if libc.mount(encoded[0], encoded[1], encoded[2], flags, encoded[3]) != 0:
        raise _fail(f"mount {source or fstype} on {target}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def unshare_for_children(private_network: bool) -> None:
    """New PID, mount and IPC namespaces (and network, if asked) for the
    children of the calling process.

    As root the host's user namespace is kept.  Without CAP_SYS_ADMIN a user
    namespace mapping only the caller's own ids is created first; if the
    kernel refuses that too, the program cannot be sandboxed and is not run.
    """
    flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | (CLONE_NEWNET if private_network else 0)
    if capabilities.has_capability(capabilities.CAP_SYS_ADMIN):
        if libc.unshare(flags) != 0:
            raise _fail("unshare")
        return
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(flags | CLONE_NEWUSER) != 0:
        raise _fail("unshare (unprivileged, with a user namespace)")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")


def prepare_mounts() -> None:
    """The sandbox's mount table; called by the PID namespace's init."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    # A /proc of the new PID namespace: only the traced tree's pids exist.
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    kept = _open_reexposed()
    try:
        for directory in _existing_directories(HIDDEN_DIRECTORIES):
            _mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755,size=64k")
        for path, fd in kept.items():
            os.makedirs(path, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            _read_only(path)
    finally:
        for fd in kept.values():
            os.close(fd)
    for path in MASKED_FILES:
        if os.path.lexists(path) and not os.path.isdir(path):
            _mount("/dev/null", path, None, MS_BIND)
    for path in READ_ONLY:
        if os.path.exists(path):
            _mount(path, path, None, MS_BIND | MS_REC)
            _read_only(path)


def _existing_directories(paths: tuple[str, ...]) -> list[str]:
    seen: list[str] = []
    for path in paths:
        real = os.path.realpath(path)
        if os.path.isdir(real) and real not in seen:
            seen.append(real)
    return seen


def _open_reexposed() -> dict[str, int]:
    kept: dict[str, int] = {}
    for path in _existing_directories(REEXPOSED_DIRECTORIES):
        kept[path] = os.open(path, os.O_PATH | os.O_DIRECTORY)
    return kept


def _read_only(path: str) -> None:
    """Make the mount at `path` and every mount below it read-only."""
    attr = struct.pack("=QQQQ", MOUNT_ATTR_RDONLY, 0, 0, 0)
    result = libc.syscall(
        ctypes.c_long(SYS_MOUNT_SETATTR),
        ctypes.c_int(AT_FDCWD),
        os.fsencode(path),
        ctypes.c_uint(AT_RECURSIVE),
        attr,
        ctypes.c_size_t(len(attr)),
    )
    if result == 0:
        return
    if ctypes.get_errno() != errno.ENOSYS:
        raise _fail(f"mount_setattr read-only {path}")
    # Before Linux 5.12: the top mount only.
    _mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def loopback_up() -> None:
    """A fresh network namespace has `lo`, down: bring it up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack_from("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
