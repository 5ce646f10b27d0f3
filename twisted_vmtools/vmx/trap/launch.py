"""The sandbox launcher: three processes between the tracer and the program.

    python -m twisted_vmtools.vmx.trap.launch [--parent PID] [--network auto|host|private]
        [--ready-fd FD --spec-fd FD] [-- CMD ARGS...]

The trap engine starts it with posix_spawn (safe from a multi-threaded
tracer, see `Launcher`).  Then:

1. the *launcher* (in the host's namespaces) arms its death signal, unshares
   new PID, mount and IPC namespaces for its children (see `namespaces`),
   forks the init, and waits for it: its exit status is the init's;
2. the *init* (PID 1 of the new namespace, non-dumpable, outside every
   filter) builds the mount table, forks the program process and reaps
   whatever is orphaned inside the namespace until nothing is left; it then
   exits with the program's status, and the kernel kills anything that
   still lives in the namespace;
3. the *program process* (PID 2) keeps only the allowed capabilities,
   enters the Landlock domain and the seccomp filter, reports on --ready-fd
   (a NUL byte: its pid reaches the tracer, translated, as the message's
   SCM_CREDENTIALS; or the error text), waits for the engine to
   PTRACE_SEIZE it and write the launch spec (argv, environment, working
   directory) to --spec-fd, and executes the program.  So the program is
   executed sandboxed and already traced, or not at all.

Without --spec-fd it is a standalone wrapper: the same chain, then CMD ARGS
executed untraced in the sandbox.

Exit status 126: the sandbox could not be applied; 127: exec failed.
"""

from __future__ import annotations

import marshal
import os
import select
import signal
import socket
import struct
import sys
from collections.abc import Sequence

from . import sandbox

EXIT_SANDBOX_FAILED = 126
EXIT_EXEC_FAILED = 127
SPEC_FD = 3
READY_FD = 4
NETWORK_CHOICES = ("auto", "host", "private")
# Keyboard and hang-up signals reach the whole foreground process group:
# the launcher and the init ignore them so that only the program (and the
# tracer) decide what they mean.
_SHIELDED_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTERM, signal.SIGTSTP)
_UCRED = struct.Struct("iII")
# Sent by the tracer to the launcher: kill the init, and so the namespace.
TEARDOWN_SIGNAL = signal.SIGUSR1


class LaunchError(Exception):
    """The launcher reported a failure, or died without a report."""


# -- the tracer's side -------------------------------------------------------


class Launcher:
    """A launcher started for the tracer: its pid, then the program's.

    `ready()` blocks until the program process is sandboxed and returns its
    pid (as the tracer sees it); `send_spec` lets it execute; `reap` waits
    for the launcher once the program tree is gone.
    """

    def __init__(self, stdio: Sequence[int | None], package_root: str | None = None) -> None:
        env = dict(os.environ)
        if package_root is not None:
            # The launcher runs as `python -m twisted_vmtools...`.
            env["PYTHONPATH"] = os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH"))))
        spec_read, self._spec_write = os.pipe()
        self._ready, ready_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # The kernel then attaches the sender's credentials to each message,
        # its pid translated into our PID namespace.
        self._ready.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        actions: list[tuple[int, int, int]] = [
            (os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(stdio) if fd is not None
        ]
        actions.append((os.POSIX_SPAWN_DUP2, spec_read, SPEC_FD))
        actions.append((os.POSIX_SPAWN_DUP2, ready_child.fileno(), READY_FD))
        catchable = set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
        command = [
            sys.executable,
            "-m",
            __name__,
            "--parent",
            str(os.getpid()),
            "--spec-fd",
            str(SPEC_FD),
            "--ready-fd",
            str(READY_FD),
        ]
        try:
            # posix_spawn (vfork + exec in glibc) is safe in a multi-threaded
            # process; the sandbox work happens in the launcher, not here.
            self.pid = os.posix_spawn(
                sys.executable, command, env, file_actions=actions, setsigmask=(), setsigdef=catchable
            )
        except BaseException:
            os.close(self._spec_write)
            self._ready.close()
            raise
        finally:
            os.close(spec_read)
            ready_child.close()
        self._reaped = False

    def ready(self) -> int:
        """The sandboxed program process's pid; LaunchError if it failed."""
        try:
            message, ancillary, _flags, _address = self._ready.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
        finally:
            self._ready.close()
        if message != b"\0":
            raise LaunchError(message.decode(errors="replace") or "the launcher died without a report")
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(data) >= _UCRED.size:
                pid, _uid, _gid = _UCRED.unpack_from(data)
                if pid > 0:
                    return int(pid)
        raise LaunchError("the launcher's report carries no credentials")

    def send_spec(self, spec: bytes) -> None:
        try:
            os.write(self._spec_write, spec)
        except OSError:
            pass  # the program process died; the tracer sees its exit
        finally:
            os.close(self._spec_write)
            self._spec_write = -1

    def abort(self) -> None:
        """Kill the launcher (its init and the namespace die with it) and reap it."""
        if self._spec_write >= 0:
            os.close(self._spec_write)
            self._spec_write = -1
        if not self._reaped:
            os.kill(self.pid, signal.SIGKILL)  # our own, unreaped child: the pid is still ours
        self.reap()

    def reap(self, grace: float = 2.0) -> int | None:
        """Wait for the launcher: it exits once nothing is left in the namespace.

        A process the tracer does not follow (a clone with CLONE_UNTRACED)
        could keep the namespace alive: after `grace` seconds the launcher
        is told (TEARDOWN_SIGNAL) to kill its init, which takes the whole
        namespace with it; the launcher exits once that is done.
        """
        if self._reaped:
            return None
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:
            pidfd = None  # already reaped by a wait for any child
        if pidfd is not None:
            try:
                exited, _, _ = select.select([pidfd], [], [], grace)
                if not exited:
                    signal.pidfd_send_signal(pidfd, TEARDOWN_SIGNAL)
            finally:
                os.close(pidfd)
        self._reaped = True
        try:
            _pid, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            return None
        return status


def encode_spec(argv: list[bytes], env: dict[bytes, bytes], cwd: bytes | None) -> bytes:
    return marshal.dumps({"argv": argv, "env": env, "cwd": cwd})


# -- the launcher process ----------------------------------------------------


def _read_spec(fd: int) -> tuple[list[bytes], dict[bytes, bytes], bytes | None]:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    spec = marshal.loads(b"".join(chunks))
    return list(spec["argv"]), dict(spec["env"]), spec["cwd"]


def _fail(status: int, message: str, ready_fd: int | None = None) -> None:
    if ready_fd is not None:
        try:
            os.write(ready_fd, message.encode(errors="replace"))
        except OSError:
            pass
    os.write(2, f"twisted_vmtools launcher: {message}\n".encode(errors="replace"))
    os._exit(status)


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def _detach_stdio() -> None:
    # The launcher and the init must not keep the program's pipes open.
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _restore_signals() -> None:
    # Ignored dispositions survive exec: Python ignores SIGPIPE and SIGXFSZ,
    # and the shielded signals were ignored above.  Give the program the
    # defaults a shell would.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, *_SHIELDED_SIGNALS):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


class _Options:
    def __init__(self, args: list[str]) -> None:
        self.parent = os.getppid()
        self.spec_fd: int | None = None
        self.ready_fd: int | None = None
        self.network = "auto"
        while args and args[0] != "--":
            option = args.pop(0)
            if not args:
                _fail(2, f"option {option!r} needs a value")
            value = args.pop(0)
            if option == "--parent":
                self.parent = int(value)
            elif option == "--spec-fd":
                self.spec_fd = int(value)
            elif option == "--ready-fd":
                self.ready_fd = int(value)
            elif option == "--network" and value in NETWORK_CHOICES:
                self.network = value
            else:
                _fail(2, f"bad option {option} {value!r}")
        self.command = [os.fsencode(arg) for arg in args[1:]]
        if self.spec_fd is None and not self.command:
            _fail(2, "no command")


def main(args: list[str]) -> None:
    options = _Options(args)
    for sig in _SHIELDED_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    private_network = sandbox.needs_private_network(options.network)
    try:
        sandbox.enter_namespaces(options.parent, private_network)
        init = os.fork()
    except (sandbox.SandboxError, OSError) as exc:
        _fail(EXIT_SANDBOX_FAILED, f"sandbox: {exc}", options.ready_fd)
    if init == 0:
        _init(options, private_network)
    signal.signal(TEARDOWN_SIGNAL, lambda _sig, _frame: os.kill(init, signal.SIGKILL))
    for fd in (options.ready_fd, options.spec_fd):
        if fd is not None:
            os.close(fd)
    _detach_stdio()
    _pid, status = os.waitpid(init, 0)
    os._exit(_exit_code(status))


def _init(options: _Options, private_network: bool) -> None:
    try:
        sandbox.harden_init(private_network)
        program = os.fork()
    except (sandbox.SandboxError, OSError) as exc:
        _fail(EXIT_SANDBOX_FAILED, f"sandbox: {exc}", options.ready_fd)
    if program == 0:
        _program(options)
    for fd in (options.ready_fd, options.spec_fd):
        if fd is not None:
            os.close(fd)
    _detach_stdio()
    code = EXIT_EXEC_FAILED
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid == program:
            code = _exit_code(status)
    os._exit(code)


def _program(options: _Options) -> None:
    # A signal the tracer sends before the exec must act as it would after.
    _restore_signals()
    ready_fd = options.ready_fd
    try:
        sandbox.harden_program()
    except (sandbox.SandboxError, OSError) as exc:
        _fail(EXIT_SANDBOX_FAILED, f"sandbox: {exc}", ready_fd)
    command, env, cwd = options.command, dict(os.environb), None
    if ready_fd is not None:
        with socket.socket(fileno=ready_fd) as ready:
            ready.sendmsg([b"\0"])
    if options.spec_fd is not None:
        try:
            command, env, cwd = _read_spec(options.spec_fd)
        except (OSError, ValueError, EOFError, KeyError, TypeError) as exc:
            _fail(EXIT_EXEC_FAILED, f"bad launch spec: {exc}")
    if not command:
        _fail(2, "no command")
    try:
        if cwd is not None:
            os.chdir(cwd)
        os.execvpe(command[0], command, env)
    except OSError as exc:
        _fail(EXIT_EXEC_FAILED, f"{os.fsdecode(command[0])}: {exc.strerror}")


if __name__ == "__main__":
    main(sys.argv[1:])
