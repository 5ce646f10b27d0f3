"""The sandbox launcher: harden this process, wait for the tracer, exec.

    python -m twisted_vmtools.vmx.trap.launch [--parent PID] [--ready-fd FD --spec-fd FD] [-- CMD ARGS...]

The trap engine starts this small single-threaded process with posix_spawn
(safe from a multi-threaded tracer).  The launcher applies the sandbox and
reports on --ready-fd (a NUL byte, or the error text); the engine then
PTRACE_SEIZEs it and writes the launch spec (argv, environment, working
directory) to the pipe at --spec-fd.  So the program is executed sandboxed
and already traced, or not at all, and the launcher's own exec is over
before tracing starts.

Without --spec-fd it is a standalone wrapper: harden, stop itself with
SIGSTOP (a debugger may attach), then exec CMD ARGS.

Exit status 126: the sandbox could not be applied; 127: exec failed.
"""

from __future__ import annotations

import marshal
import os
import signal
import sys

from . import sandbox

EXIT_SANDBOX_FAILED = 126
EXIT_EXEC_FAILED = 127


def encode_spec(argv: list[bytes], env: dict[bytes, bytes], cwd: bytes | None) -> bytes:
    return marshal.dumps({"argv": argv, "env": env, "cwd": cwd})


def _read_spec(fd: int) -> tuple[list[bytes], dict[bytes, bytes], bytes | None]:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    spec = marshal.loads(b"".join(chunks))
    return list(spec["argv"]), dict(spec["env"]), spec["cwd"]


def _fail(status: int, message: str) -> None:
    os.write(2, f"twisted_vmtools launcher: {message}\n".encode(errors="replace"))
    os._exit(status)


def _restore_signals() -> None:
    # Python ignores SIGPIPE and SIGXFSZ; ignored dispositions survive exec,
    # so give the program the defaults a shell would.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def main(args: list[str]) -> None:
    parent = os.getppid()
    spec_fd: int | None = None
    ready_fd: int | None = None
    while args and args[0] != "--":
        option = args.pop(0)
        if option == "--parent" and args:
            parent = int(args.pop(0))
        elif option == "--spec-fd" and args:
            spec_fd = int(args.pop(0))
        elif option == "--ready-fd" and args:
            ready_fd = int(args.pop(0))
        else:
            _fail(2, f"unknown option {option!r}")
    command = [os.fsencode(arg) for arg in args[1:]]

    try:
        sandbox.apply(parent)
    except (sandbox.SandboxError, OSError) as exc:
        if ready_fd is not None:
            os.write(ready_fd, f"sandbox: {exc}".encode(errors="replace"))
        _fail(EXIT_SANDBOX_FAILED, f"sandbox: {exc}")
    if ready_fd is not None:
        os.write(ready_fd, b"\0")
        os.close(ready_fd)

    env: dict[bytes, bytes] = dict(os.environb)
    cwd: bytes | None = None
    if spec_fd is not None:
        try:
            command, env, cwd = _read_spec(spec_fd)
        except (OSError, ValueError, EOFError, KeyError, TypeError) as exc:
            _fail(EXIT_EXEC_FAILED, f"bad launch spec: {exc}")
    else:
        os.kill(os.getpid(), signal.SIGSTOP)
    if not command:
        _fail(2, "no command")

    _restore_signals()
    try:
        if cwd is not None:
            os.chdir(cwd)
        os.execvpe(command[0], command, env)
    except OSError as exc:
        _fail(EXIT_EXEC_FAILED, f"{os.fsdecode(command[0])}: {exc.strerror}")


if __name__ == "__main__":
    main(sys.argv[1:])
