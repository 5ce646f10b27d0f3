"""Attacks on the trap engine's sandbox, run as a traced program.

    python attacks.py ATTACK [ARGS...]

Each attack prints one line per attempt: `NAME refused ERRNO` or
`NAME ESCAPED`, and exits 0.  Every attempt is harmless even if it got
through: it targets a sacrificial process or socket the test made, opens
without writing, probes a signal with 0 before sending SIGSTOP, and never
writes to a power or sysrq file.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import sys

libc = ctypes.CDLL(None, use_errno=True)
PTRACE_SEIZE = 0x4206
SYS_PTRACE = 101
SYS_PROCESS_VM_READV = 310
SYS_PROCESS_VM_WRITEV = 311
MNT_DETACH = 2


def report(name: str, result: int | None, err: int = 0) -> None:
    # EFAULT: past every permission check, only our made-up address failed.
    if (result is not None and result >= 0) or err == errno.EFAULT:
        print(f"{name} ESCAPED", flush=True)
    else:
        print(f"{name} refused {errno.errorcode.get(err, err)}", flush=True)


def attempt(name: str, action) -> None:  # type: ignore[no-untyped-def]
    try:
        result = action()
    except OSError as exc:
        report(name, None, exc.errno or 0)
    else:
        report(name, result)


def syscall(*args: int) -> int:
    result = int(libc.syscall(*[ctypes.c_long(arg) for arg in args]))
    if result < 0:
        raise OSError(ctypes.get_errno(), "")
    return result


def ptrace_escape(victim: int) -> None:
    """`victim`: a host pid outside the sandbox (a sleep the test started)."""
    buffer = ctypes.create_string_buffer(8)
    iov = (ctypes.c_void_p * 2)(ctypes.addressof(buffer), 8)
    for pid, who in ((victim, "victim"), (1, "init")):
        attempt(f"ptrace-seize-{who}", lambda pid=pid: syscall(SYS_PTRACE, PTRACE_SEIZE, pid, 0, 0))
        for nr, what in ((SYS_PROCESS_VM_READV, "readv"), (SYS_PROCESS_VM_WRITEV, "writev")):
            attempt(f"process-vm-{what}-{who}",
                    lambda pid=pid, nr=nr: syscall(nr, pid, ctypes.addressof(iov), 1, ctypes.addressof(iov), 1, 0))
        attempt(f"proc-mem-{who}", lambda pid=pid: os.open(f"/proc/{pid}/mem", os.O_RDWR))


def vsock_unmask(workdir: str) -> None:
    attempt("umount2-dev-vsock", lambda: syscall(166, ctypes.addressof(ctypes.create_string_buffer(b"/dev/vsock")),
                                                  MNT_DETACH))
    node = os.path.join(workdir, "vsock-node")
    attempt("mknod-10-258", lambda: os.mknod(node, 0o600 | 0o020000, os.makedev(10, 258)))
    attempt("socket-af-vsock", lambda: socket.socket(40, socket.SOCK_STREAM).detach())
    if os.path.lexists(node):
        os.unlink(node)


def init_sockets(*targets: str) -> None:
    """Connect to each path, or abstract name (leading @); send nothing."""
    for target in targets:
        address = "\0" + target[1:] if target.startswith("@") else target
        for kind, label in ((socket.SOCK_STREAM, "stream"), (socket.SOCK_DGRAM, "dgram")):
            with socket.socket(socket.AF_UNIX, kind) as sock:
                attempt(f"connect-{label}-{target}", lambda sock=sock, address=address: sock.connect(address))


def signal_tracer(tracer: int) -> None:
    # Probe first: a SIGSTOP that got through would hang the test run.
    attempt("kill-0-tracer", lambda: os.kill(tracer, 0))
    try:
        os.kill(tracer, 0)
    except OSError:
        attempt("sigstop-tracer", lambda: os.kill(tracer, signal.SIGSTOP))
    signal.pause()  # the tracer's --timeout must still end us


def machine_files() -> None:
    # Opened for writing, never written.
    for path in ("/proc/sysrq-trigger", "/sys/power/state", "/proc/sys/kernel/core_pattern", "/run/initctl"):
        attempt(f"open-{path}", lambda path=path: os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def untraced_child(sleeper: str) -> None:
    """Leave a child the tracer does not follow (CLONE_UNTRACED), then exit."""
    clone_untraced, sigchld = 0x00800000, 17
    try:
        pid = syscall(56, clone_untraced | sigchld, 0, 0, 0, 0)  # a fork, untraced
    except OSError as exc:
        report("clone-untraced", None, exc.errno or 0)
        return
    if pid == 0:
        os.execv(sleeper, [sleeper, "3600"])
    print("clone-untraced ESCAPED", flush=True)  # out of the tracer's sight, not out of the sandbox


ATTACKS = {
    "untraced-child": lambda args: untraced_child(args[0]),
    "ptrace": lambda args: ptrace_escape(int(args[0])),
    "vsock": lambda args: vsock_unmask(args[0]),
    "init-sockets": lambda args: init_sockets(*args),
    "signal-tracer": lambda args: signal_tracer(int(args[0])),
    "machine-files": lambda args: machine_files(),
}

if __name__ == "__main__":
    ATTACKS[sys.argv[1]](sys.argv[2:])
