"""Landlock scoping: the traced tree may not reach out of its own domain.

Any Landlock domain already keeps its processes from ptracing (and so from
opening /proc/<pid>/mem of) a process outside it.  From ABI 6 (Linux 6.12)
a domain can also be *scoped*: connecting to an abstract Unix socket created
outside the domain, and signalling a process outside it, fail with EPERM.
Abstract sockets live in the network namespace, not the file system, so
this is what keeps a program that shares the host's network (and so reports
the host's NICs as real tools do) from the abstract sockets of the host's
init, D-Bus or container runtime.  No file system rule is added: the
ruleset only scopes.
"""

from __future__ import annotations

import ctypes
import os

from .ptrace import libc

SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET = 1
LANDLOCK_SCOPE_SIGNAL = 2
SCOPE_ABI = 6


class LandlockError(OSError):
    """The Landlock domain could not be entered."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


def abi_version() -> int:
    """The kernel's Landlock ABI (0: none, or disabled)."""
    version = int(
        libc.syscall(
            ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
            None,
            ctypes.c_size_t(0),
            ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION),
        )
    )
    return max(version, 0)


def can_scope() -> bool:
    """Whether abstract Unix sockets and signals can be scoped to a domain."""
    return abi_version() >= SCOPE_ABI


def restrict_self() -> None:
    """Enter a domain scoping abstract Unix sockets and signals.

    Needs no_new_privs (or CAP_SYS_ADMIN); irreversible, inherited by every
    descendant.
    """
    attr = _RulesetAttr(0, 0, LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL)
    fd = int(
        libc.syscall(
            ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
            ctypes.c_uint32(0),
        )
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise LandlockError(err, f"landlock_create_ruleset: {os.strerror(err)}")
    try:
        if libc.syscall(ctypes.c_long(SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(fd), ctypes.c_uint32(0)) != 0:
            err = ctypes.get_errno()
            raise LandlockError(err, f"landlock_restrict_self: {os.strerror(err)}")
    finally:
        os.close(fd)
