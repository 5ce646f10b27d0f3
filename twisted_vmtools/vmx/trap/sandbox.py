"""The sandbox every traced program runs in, applied before it is executed.

A traced guest-tools program believes it runs on VMware.  Nothing it then
does may reach real hardware or the real hypervisor: no I/O privilege
(iopl/ioperm, /dev/port via CAP_SYS_RAWIO), no vsock to the real host, no
clock, reboot or module changes.  The pieces:

- a private mount namespace with /dev/vsock covered by /dev/null (the tools
  fall back to opening /dev/vsock when socket(AF_VSOCK) fails);
- a seccomp filter that only returns errors (never traps, so the tracer need
  not handle seccomp stops);
- capabilities dropped from the bounding, effective, permitted, inheritable
  and ambient sets, and no_new_privs so set-uid binaries cannot regain them;
- PR_SET_PDEATHSIG so the program dies with its tracer.

These functions change the *calling* process irreversibly: only the launcher
calls them, in the child, right before execve.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import struct

from .ptrace import libc

AF_VSOCK = 40

# x86-64 system call numbers.
SYS_SOCKET = 41
SYS_SOCKETPAIR = 53
SYS_REBOOT = 169
SYS_IOPL = 172
SYS_IOPERM = 173
SYS_INIT_MODULE = 175
SYS_DELETE_MODULE = 176
SYS_KEXEC_LOAD = 246
SYS_FINIT_MODULE = 313
SYS_KEXEC_FILE_LOAD = 320
SYS_IO_URING_SETUP = 425
X32_SYSCALL_BIT = 0x40000000

FORBIDDEN_SYSCALLS = (
    SYS_IOPL,
    SYS_IOPERM,
    SYS_REBOOT,
    SYS_INIT_MODULE,
    SYS_FINIT_MODULE,
    SYS_DELETE_MODULE,
    SYS_KEXEC_LOAD,
    SYS_KEXEC_FILE_LOAD,
)

AUDIT_ARCH_X86_64 = 0xC000003E

# Capabilities (<linux/capability.h>).
CAP_SYS_MODULE = 16
CAP_SYS_RAWIO = 17
CAP_SYS_BOOT = 22
CAP_SYS_TIME = 25
DROPPED_CAPABILITIES = (CAP_SYS_RAWIO, CAP_SYS_BOOT, CAP_SYS_TIME, CAP_SYS_MODULE)
CAP_SYS_ADMIN = 21
CAP_SETPCAP = 8

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_LOWER = 3
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

CLONE_NEWNS = 0x00020000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

# Classic BPF.
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JSET_K = 0x45
_RET_K = 0x06
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
_OFFSET_NR = 0
_OFFSET_ARCH = 4
_OFFSET_ARG0_LOW = 16


libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
libc.unshare.argtypes = [ctypes.c_int]


class SandboxError(Exception):
    """A sandbox step failed; the program must not be executed."""


def seccomp_program() -> bytes:
    """The BPF filter as packed `struct sock_filter` entries.

    Layout (jump offsets are relative to the next instruction):
      arch != x86-64           -> kill the process
      x32 system call          -> ENOSYS
      socket/socketpair(40, …) -> EAFNOSUPPORT
      forbidden system calls   -> EPERM
      io_uring_setup           -> ENOSYS (io_uring can create sockets
                                  without passing through this filter)
      everything else          -> allow
    """
    forbidden = list(FORBIDDEN_SYSCALLS)
    code: list[tuple[int, int, int, int]] = [
        (_LD_W_ABS, 0, 0, _OFFSET_ARCH),
        (_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        (_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        (_LD_W_ABS, 0, 0, _OFFSET_NR),
        (_JSET_K, 0, 1, X32_SYSCALL_BIT),
        (_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.ENOSYS),
        (_JEQ_K, 0, 1, SYS_IO_URING_SETUP),
        (_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.ENOSYS),
    ]
    # Each forbidden call: jump to the shared EPERM return placed after the
    # list.  Remaining instructions after entry i: (n - 1 - i) compares, then
    # the socket checks (2), the ALLOW return (1) -> EPERM is next.
    count = len(forbidden)
    for i, nr in enumerate(forbidden):
        code.append((_JEQ_K, (count - 1 - i) + 3, 0, nr))
    code += [
        (_JEQ_K, 3, 0, SYS_SOCKET),
        (_JEQ_K, 2, 0, SYS_SOCKETPAIR),
        (_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        (_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM),
        # socket family check: domain is an int, so the low 32 bits decide.
        (_LD_W_ABS, 0, 0, _OFFSET_ARG0_LOW),
        (_JEQ_K, 0, 1, AF_VSOCK),
        (_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EAFNOSUPPORT),
        (_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
    return b"".join(struct.pack("<HBBI", *insn) for insn in code)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(err)}")


def _prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return int(
        libc.prctl(
            ctypes.c_int(option),
            ctypes.c_ulong(arg2),
            ctypes.c_ulong(arg3),
            ctypes.c_ulong(arg4),
            ctypes.c_ulong(arg5),
        )
    )


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _capabilities() -> tuple[_CapHeader, ctypes.Array[_CapData]]:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(libc.capget(ctypes.byref(header), data), "capget")
    return header, data


def has_capability(cap: int) -> bool:
    _header, data = _capabilities()
    return bool(data[cap // 32].effective & (1 << (cap % 32)))


def private_mounts() -> None:
    """A private mount namespace with /dev/vsock covered by /dev/null.

    Needs CAP_SYS_ADMIN.  Without it (an unprivileged tracer) the program
    cannot open /dev/vsock in a useful way either, so the step is skipped.
    """
    if not has_capability(CAP_SYS_ADMIN):
        return
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    if os.path.exists("/dev/vsock"):
        _check(libc.mount(b"/dev/null", b"/dev/vsock", None, MS_BIND, None), "bind /dev/null on /dev/vsock")


def drop_capabilities() -> None:
    can_drop_bounding = has_capability(CAP_SETPCAP)
    for cap in DROPPED_CAPABILITIES:
        if _prctl(PR_CAPBSET_DROP, cap) != 0:
            err = ctypes.get_errno()
            # EINVAL: the kernel does not know the capability; EPERM without
            # CAP_SETPCAP, where no_new_privs keeps it out of reach anyway.
            if err != errno.EINVAL and (err != errno.EPERM or can_drop_bounding):
                raise SandboxError(f"PR_CAPBSET_DROP({cap}): {os.strerror(err)}")
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_LOWER, cap)
    header, data = _capabilities()
    for cap in DROPPED_CAPABILITIES:
        mask = ~(1 << (cap % 32)) & 0xFFFFFFFF
        word = data[cap // 32]
        word.effective &= mask
        word.permitted &= mask
        word.inheritable &= mask
    _check(libc.capset(ctypes.byref(header), data), "capset")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_seccomp_filter() -> None:
    _check(_prctl(PR_SET_NO_NEW_PRIVS, 1), "PR_SET_NO_NEW_PRIVS")
    program = seccomp_program()
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    _check(_prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog)), "seccomp filter")


def die_with_parent(parent_pid: int) -> None:
    _check(_prctl(PR_SET_PDEATHSIG, signal.SIGKILL), "PR_SET_PDEATHSIG")
    if os.getppid() != parent_pid:
        # The tracer died before the death signal was armed.
        raise SandboxError("the tracer is gone")


def apply(parent_pid: int) -> None:
    """Harden the calling process; raises SandboxError if any step fails."""
    die_with_parent(parent_pid)
    private_mounts()
    drop_capabilities()
    install_seccomp_filter()
