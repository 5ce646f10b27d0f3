"""Capabilities a traced program keeps: an allow-list, everything else goes.

The guest tools, run as root, act on files and processes on behalf of a
guest operation (copy a file in as its owner, start a program as a user,
kill it): that needs the file-ownership and identity capabilities below.
Nothing they do needs to change the clock, the power state, the network
configuration, mounts, devices, kernel modules or other processes' memory,
so no capability for any of that survives, including ones a newer kernel
adds (the allow-list is applied to every capability the kernel knows).
"""

from __future__ import annotations

import ctypes
import errno
import os

from .ptrace import libc

# <linux/capability.h>
CAP_CHOWN = 0
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
CAP_FOWNER = 3
CAP_FSETID = 4
CAP_KILL = 5
CAP_SETGID = 6
CAP_SETUID = 7
CAP_SETPCAP = 8
CAP_NET_BIND_SERVICE = 10
CAP_MKNOD = 27
CAP_SYS_MODULE = 16
CAP_SYS_RAWIO = 17
CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_SYS_BOOT = 22
CAP_SYS_TIME = 25
CAP_AUDIT_WRITE = 29

KEPT_CAPABILITIES = frozenset(
    {
        CAP_CHOWN,  # file transfers keep the owner the guest operation asks for
        CAP_DAC_OVERRIDE,  # ... and reach the files root may reach
        CAP_DAC_READ_SEARCH,
        CAP_FOWNER,
        CAP_FSETID,
        CAP_KILL,  # end a program a guest operation started (only inside the sandbox's PID namespace)
        CAP_SETGID,  # run a guest program as the authenticated user
        CAP_SETUID,
        CAP_NET_BIND_SERVICE,  # the privileged source port of the RPCI vsock (which the filter refuses anyway)
        CAP_AUDIT_WRITE,  # PAM records a guest login
    }
)

PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_CAP_LAST_CAP = "/proc/sys/kernel/cap_last_cap"


class CapabilityError(OSError):
    """A capability could not be dropped."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _fail(what: str) -> CapabilityError:
    err = ctypes.get_errno()
    return CapabilityError(err, f"{what}: {os.strerror(err)}")


def _capabilities() -> tuple[_CapHeader, ctypes.Array[_CapData]]:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise _fail("capget")
    return header, data


def has_capability(cap: int) -> bool:
    """Whether `cap` is in this process's effective set."""
    _header, data = _capabilities()
    return bool(data[cap // 32].effective & (1 << (cap % 32)))


def last_capability() -> int:
    """The highest capability number this kernel knows."""
    try:
        with open(_CAP_LAST_CAP) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63  # drop every bit; EINVAL for unknown ones is ignored below


def _prctl(option: int, arg2: int, arg3: int = 0) -> int:
    return int(
        libc.prctl(
            ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(0), ctypes.c_ulong(0)
        )
    )


def keep_only(kept: frozenset[int] = KEPT_CAPABILITIES) -> None:
    """Reduce the bounding, permitted, effective and inheritable sets to `kept`
    and clear the ambient set.  Needs CAP_SETPCAP for the bounding set."""
    if _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL) != 0 and ctypes.get_errno() != errno.EINVAL:
        raise _fail("PR_CAP_AMBIENT_CLEAR_ALL")
    for cap in range(last_capability() + 1):
        if cap in kept:
            continue
        # EINVAL: the kernel does not know it (last_capability fell back).
        if _prctl(PR_CAPBSET_DROP, cap) != 0 and ctypes.get_errno() != errno.EINVAL:
            raise _fail(f"PR_CAPBSET_DROP({cap})")
    header, data = _capabilities()
    for word in (0, 1):
        mask = sum(1 << (cap - 32 * word) for cap in kept if 32 * word <= cap < 32 * (word + 1))
        data[word].effective &= mask
        data[word].permitted &= mask
        data[word].inheritable &= mask
    if libc.capset(ctypes.byref(header), data) != 0:
        raise _fail("capset")
