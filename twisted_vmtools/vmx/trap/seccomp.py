"""The sandbox's seccomp filter: what a traced program may not ask the kernel.

The filter only returns errors (never traps), so the tracer need not handle
seccomp stops.  It is the second wall behind the namespaces and the dropped
capabilities: each refused call here is also refused by the kernel for
another reason (no capability, an invisible pid), except the AF_VSOCK
socket, which only this filter keeps from the real hypervisor.
"""

from __future__ import annotations

import ctypes
import errno
import struct

from .ptrace import libc

AF_VSOCK = 40

# x86-64 system call numbers.
SYS_SOCKET = 41
SYS_SOCKETPAIR = 53
SYS_PTRACE = 101
SYS_MKNOD = 133
SYS_PIVOT_ROOT = 155
SYS_MOUNT = 165
SYS_UMOUNT2 = 166
SYS_REBOOT = 169
SYS_IOPL = 172
SYS_IOPERM = 173
SYS_INIT_MODULE = 175
SYS_DELETE_MODULE = 176
SYS_KEXEC_LOAD = 246
SYS_MKNODAT = 259
SYS_UNSHARE = 272
SYS_SETNS = 308
SYS_PROCESS_VM_READV = 310
SYS_PROCESS_VM_WRITEV = 311
SYS_FINIT_MODULE = 313
SYS_KEXEC_FILE_LOAD = 320
SYS_IO_URING_SETUP = 425
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432
SYS_FSPICK = 433
SYS_PIDFD_GETFD = 438
SYS_MOUNT_SETATTR = 442
X32_SYSCALL_BIT = 0x40000000

# Port I/O, power, kernel code.
HARDWARE_SYSCALLS = (
    SYS_IOPL,
    SYS_IOPERM,
    SYS_REBOOT,
    SYS_INIT_MODULE,
    SYS_FINIT_MODULE,
    SYS_DELETE_MODULE,
    SYS_KEXEC_LOAD,
    SYS_KEXEC_FILE_LOAD,
)
# Reaching into another process: its memory, its file descriptors.
PROCESS_SYSCALLS = (SYS_PTRACE, SYS_PROCESS_VM_READV, SYS_PROCESS_VM_WRITEV, SYS_PIDFD_GETFD)
# Undoing the sandbox's mount table (the /dev/vsock mask, the hidden
# /run/systemd) or making a device node of the real vsock.
MOUNT_SYSCALLS = (
    SYS_MOUNT,
    SYS_UMOUNT2,
    SYS_PIVOT_ROOT,
    SYS_OPEN_TREE,
    SYS_MOVE_MOUNT,
    SYS_FSOPEN,
    SYS_FSCONFIG,
    SYS_FSMOUNT,
    SYS_FSPICK,
    SYS_MOUNT_SETATTR,
    SYS_MKNOD,
    SYS_MKNODAT,
)
# Leaving the sandbox's namespaces for fresh ones.
NAMESPACE_SYSCALLS = (SYS_UNSHARE, SYS_SETNS)
FORBIDDEN_SYSCALLS = HARDWARE_SYSCALLS + PROCESS_SYSCALLS + MOUNT_SYSCALLS + NAMESPACE_SYSCALLS

AUDIT_ARCH_X86_64 = 0xC000003E

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

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
# A conditional jump's offsets are one byte.
_MAX_JUMP = 255


class SeccompError(OSError):
    """The filter could not be installed."""


def seccomp_program() -> bytes:
    """The BPF filter as packed `struct sock_filter` entries.

    Layout (jump offsets are relative to the next instruction):
      arch != x86-64           -> kill the process
      x32 system call          -> ENOSYS
      io_uring_setup           -> ENOSYS (io_uring can create sockets
                                  without passing through this filter)
      forbidden system calls   -> EPERM
      socket/socketpair(40, …) -> EAFNOSUPPORT
      everything else          -> allow
    """
    forbidden = list(FORBIDDEN_SYSCALLS)
    if len(forbidden) + 3 > _MAX_JUMP:
        raise ValueError("too many forbidden system calls for one-byte jumps")
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
    # Each forbidden call jumps to the shared EPERM return placed after the
    # list.  Instructions left after entry i: (n - 1 - i) compares, the two
    # socket checks and the ALLOW return; EPERM is next.
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


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> None:
    if libc.prctl(
        ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(0), ctypes.c_ulong(0)
    ):
        err = ctypes.get_errno()
        raise SeccompError(err, f"prctl({option}): {errno.errorcode.get(err, err)}")


def set_no_new_privs() -> None:
    """Set-uid and file capabilities stop working: nothing exec'd regains privilege."""
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


def install_filter() -> None:
    set_no_new_privs()
    program = seccomp_program()
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))
