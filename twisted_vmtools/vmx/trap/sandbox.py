"""The sandbox every traced program runs in, applied before it is executed.

A traced guest-tools program believes it runs on VMware.  Nothing it then
does may reach real hardware, the real hypervisor, the host's init, or any
process outside its own tree (the tracer included).  The walls, each in its
module:

- `namespaces`: its own PID namespace (nothing outside is visible: no pid to
  ptrace, signal, or open under /proc), mount namespace (/dev/vsock masked,
  /run/systemd, /run/dbus and the initctl FIFOs hidden, /sys and /proc/sys
  read-only) and IPC namespace; the host's network namespace only when
  Landlock can scope abstract Unix sockets, else a private one;
- `landlock`: a domain that may not ptrace, signal or connect to an abstract
  Unix socket outside itself;
- `capabilities`: an allow-list; no CAP_SYS_PTRACE, SYS_ADMIN, MKNOD, RAWIO,
  BOOT, TIME, MODULE, NET_ADMIN...;
- `seccomp`: no AF_VSOCK socket, port I/O, reboot, modules, kexec, ptrace,
  cross-process memory, mounts, device nodes or new namespaces; and
  no_new_privs, so set-uid binaries cannot regain anything;
- death signals, so the program dies with its tracer.

These functions change the *calling* process irreversibly: only the
launcher (`launch`) calls them, in the processes it forks.
"""

from __future__ import annotations

import ctypes
import os
import signal

from . import capabilities, landlock, namespaces, seccomp
from .ptrace import libc

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4


class SandboxError(Exception):
    """A sandbox step failed; the program must not be executed."""


def _prctl(option: int, arg2: int, what: str) -> None:
    if libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)):
        raise SandboxError(f"{what}: {os.strerror(ctypes.get_errno())}")


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies; SandboxError if it already has."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "PR_SET_PDEATHSIG")
    if os.getppid() != parent_pid:
        raise SandboxError("the parent is gone")


def needs_private_network(choice: str = "auto") -> bool:
    """Whether the program gets a network namespace of its own.

    "auto": only where Landlock cannot keep it from the host's abstract Unix
    sockets (Linux < 6.12), because a private network namespace has only
    loopback and the tools would report no NIC.
    """
    if choice == "auto":
        return not landlock.can_scope()
    return choice == "private"


def enter_namespaces(parent_pid: int, private_network: bool) -> None:
    """In the launcher: die with the tracer; new namespaces for the children."""
    die_with_parent(parent_pid)
    if not private_network and not landlock.can_scope():
        raise SandboxError("the host's network namespace needs Landlock scoping (Linux 6.12) to hide abstract sockets")
    try:
        namespaces.unshare_for_children(private_network)
    except OSError as exc:
        raise SandboxError(f"{exc} (the sandbox needs root or unprivileged user namespaces)") from exc


def harden_init(private_network: bool) -> None:
    """In the PID namespace's init: the mount table, then out of reach.

    Non-dumpable, so that not even a process of the namespace with the same
    uid could open its /proc/1/mem.
    """
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "PR_SET_PDEATHSIG")
    _prctl(PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")
    try:
        namespaces.prepare_mounts()
        if private_network:
            namespaces.loopback_up()
    except OSError as exc:
        raise SandboxError(str(exc)) from exc


def harden_program() -> None:
    """In the program process (PID 2): the walls that survive exec."""
    die_with_parent(1)
    try:
        seccomp.set_no_new_privs()
        if landlock.can_scope():
            landlock.restrict_self()
        capabilities.keep_only()
        seccomp.install_filter()
    except OSError as exc:
        raise SandboxError(str(exc)) from exc
