"""ctypes bindings for the Linux x86-64 ptrace API and its companions.

Only what the trap engine needs: the requests, the register file, siginfo,
wait-status decoding and cross-process memory access.  Every call that can
race with the death of a tracee raises `TraceeGone` (ESRCH) so the engine can
treat "the tracee vanished" as an ordinary event rather than an error.
"""

from __future__ import annotations

import ctypes
import errno
import os

# Not ctypes.util.find_library: it runs ldconfig/gcc in subprocesses, which
# the launcher (a traced process) must not do.
libc = ctypes.CDLL("libc.so.6", use_errno=True)

# Requests (<sys/ptrace.h>).
PTRACE_CONT = 7
PTRACE_KILL = 8
PTRACE_SINGLESTEP = 9
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_SETSIGINFO = 0x4203
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208

# Options.
PTRACE_O_TRACEFORK = 0x02
PTRACE_O_TRACEVFORK = 0x04
PTRACE_O_TRACECLONE = 0x08
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_EXITKILL = 0x100000

# Events (status >> 16).
PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_STOP = 128

# wait flags: __WALL sees threads as well as processes; __WNOTHREAD keeps
# this thread from reaping children of *other* threads of the tracer process
# (e.g. the Twisted reactor's own spawned processes).
WALL = 0x40000000
WNOTHREAD = 0x20000000

SI_KERNEL = 0x80

# Clone flags that tell a thread or a vfork-style child from a plain fork.
CLONE_VM = 0x00000100
CLONE_THREAD = 0x00010000
CLONE_VFORK = 0x00004000

SYS_fork = 57
SYS_vfork = 58
SYS_clone = 56
SYS_clone3 = 435
SYS_arch_prctl = 158


class TraceeGone(Exception):
    """The tracee no longer exists (or is not stopped for us any more)."""


class UserRegs(ctypes.Structure):
    """`struct user_regs_struct` for x86-64."""

    _fields_ = [
        (name, ctypes.c_ulonglong)
        for name in (
            "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax "
            "rip cs eflags rsp ss fs_base gs_base ds es fs gs"
        ).split()
    ]

    # Declared for type checkers; ctypes provides them at run time.
    r15: int
    r14: int
    r13: int
    r12: int
    rbp: int
    rbx: int
    r11: int
    r10: int
    r9: int
    r8: int
    rax: int
    rcx: int
    rdx: int
    rsi: int
    rdi: int
    orig_rax: int
    rip: int
    cs: int
    eflags: int
    rsp: int
    ss: int
    fs_base: int
    gs_base: int
    ds: int
    es: int
    fs: int
    gs: int


class SigInfo(ctypes.Structure):
    """The head of `siginfo_t`: enough for SIGSEGV/SIGILL/SIGTRAP (si_addr)."""

    _fields_ = [
        ("si_signo", ctypes.c_int),
        ("si_errno", ctypes.c_int),
        ("si_code", ctypes.c_int),
        ("_pad0", ctypes.c_int),
        ("si_addr", ctypes.c_ulonglong),
        ("_rest", ctypes.c_byte * (128 - 24)),
    ]

    si_signo: int
    si_errno: int
    si_code: int
    si_addr: int


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_ptrace = libc.ptrace
_ptrace.restype = ctypes.c_long
_ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]

_process_vm_readv = libc.process_vm_readv
_process_vm_readv.restype = ctypes.c_ssize_t
_process_vm_readv.argtypes = [
    ctypes.c_int,
    ctypes.POINTER(IoVec),
    ctypes.c_ulong,
    ctypes.POINTER(IoVec),
    ctypes.c_ulong,
    ctypes.c_ulong,
]
_process_vm_writev = libc.process_vm_writev
_process_vm_writev.restype = ctypes.c_ssize_t
_process_vm_writev.argtypes = _process_vm_readv.argtypes


def ptrace(request: int, tid: int, addr: int = 0, data: int | ctypes.c_void_p = 0) -> int:
    # No PEEK requests are used, so -1 always means failure.
    result = _ptrace(request, tid, addr, data)
    if result == -1:
        err = ctypes.get_errno()
        if err == errno.ESRCH:
            raise TraceeGone(tid)
        raise OSError(err, f"ptrace({request:#x}, {tid}): {os.strerror(err)}")
    return int(result)


def seize(tid: int, options: int) -> None:
    ptrace(PTRACE_SEIZE, tid, 0, options)


def cont(tid: int, sig: int = 0) -> None:
    ptrace(PTRACE_CONT, tid, 0, sig)


def listen(tid: int) -> None:
    ptrace(PTRACE_LISTEN, tid, 0, 0)


def singlestep(tid: int) -> None:
    ptrace(PTRACE_SINGLESTEP, tid, 0, 0)


def get_regs(tid: int) -> UserRegs:
    regs = UserRegs()
    ptrace(PTRACE_GETREGS, tid, 0, ctypes.addressof(regs))
    return regs


def set_regs(tid: int, regs: UserRegs) -> None:
    ptrace(PTRACE_SETREGS, tid, 0, ctypes.addressof(regs))


def get_siginfo(tid: int) -> SigInfo:
    info = SigInfo()
    ptrace(PTRACE_GETSIGINFO, tid, 0, ctypes.addressof(info))
    return info


def set_siginfo(tid: int, info: SigInfo) -> None:
    ptrace(PTRACE_SETSIGINFO, tid, 0, ctypes.addressof(info))


def get_event_msg(tid: int) -> int:
    value = ctypes.c_ulong()
    ptrace(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(value))
    return value.value


def read_memory(pid: int, address: int, size: int) -> bytes | None:
    """Read tracee memory honouring its page protections; None on failure.

    Used for high-bandwidth buffers, where a bad pointer must turn into a
    failed transfer, not an exception.
    """
    if size == 0:
        return b""
    buffer = ctypes.create_string_buffer(size)
    local = IoVec(ctypes.cast(buffer, ctypes.c_void_p), size)
    remote = IoVec(address, size)
    done = _process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if done != size:
        return None
    return buffer.raw


def write_memory(pid: int, address: int, data: bytes) -> bool:
    """Write tracee memory honouring its page protections (not for code)."""
    if not data:
        return True
    buffer = ctypes.create_string_buffer(data, len(data))
    local = IoVec(ctypes.cast(buffer, ctypes.c_void_p), len(data))
    remote = IoVec(address, len(data))
    done = _process_vm_writev(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    return done == len(data)


def wait_any() -> tuple[int, int]:
    """Wait for the next event of any of this thread's children or tracees."""
    return os.waitpid(-1, WALL | WNOTHREAD)
