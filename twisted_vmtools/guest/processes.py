"""`ProcessManager`: the programs guest operations start, and Python functions started as processes.

OS programs go through ``reactor.spawnProcess`` (``/bin/sh -c``, as vmtoolsd's
ProcMgr runs them; as the authenticated user; stdio on /dev/null), so the
reactor never waits on them.  Python callables registered by name start as
"processes" with their own stdin/stdout/stderr (`ProcessIO`), which the HGFS
server exposes as ``/proc/<pid>/stdin|stdout|stderr``.  Every process we
started keeps its exit code and end time for `REAP_AFTER` seconds after it
exits, as vmtoolsd keeps them; `list` shows the guest's other processes too.
"""

from __future__ import annotations

import errno
import inspect
import os
import shlex
import signal
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import psutil
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..codecs.vix import ProcessInfo, VixCode
from .accounts import GuestUser
from .hgfs_proc import IProcessTable
from .roundtrip import PROGRAM as ROUND_TRIP
from .roundtrip import RoundTrip
from .vix_errors import VixOperationError

REAP_AFTER = 5 * 60.0  # vmtoolsd's VIX_TOOLS_EXITED_PROGRAM_REAP_TIME
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL, as ProcMgr_KillByPid waits
MAX_OUTPUT = 16 * 1024 * 1024  # what one stream of a Python process may buffer
SHELL = "/bin/sh"
KILLED_EXIT_CODE = -1  # a program ended by a signal has no exit status


class StreamClosed(Exception):
    """Writing to a stream whose end has been closed."""


class OutputStream:
    """What a process writes (stdout, stderr): buffered until read, closed when it exits."""

    def __init__(self, limit: int = MAX_OUTPUT) -> None:
        self._chunks = bytearray()
        self._limit = limit
        self.closed = False
        self.dropped = 0  # bytes beyond the limit: counted, never silently mistaken for output

    def write(self, data: bytes) -> None:
        if self.closed:
            raise StreamClosed("output stream closed")
        room = self._limit - len(self._chunks)
        self._chunks += data[: max(0, room)]
        self.dropped += max(0, len(data) - max(0, room))

    def close(self) -> None:
        self.closed = True

    @property
    def size(self) -> int:
        return len(self._chunks)

    def read(self, size: int = -1) -> bytes:
        """Take up to ``size`` bytes (all if negative) off the front."""
        size = len(self._chunks) if size < 0 else size
        data = bytes(self._chunks[:size])
        del self._chunks[:size]
        return data


class InputStream:
    """What a process reads (stdin): written by HGFS uploads, closed to signal EOF."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._readers: list[Deferred[None]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed:
            raise StreamClosed("stdin closed")
        self._buffer += data
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        readers, self._readers = self._readers, []
        for reader in readers:
            reader.callback(None)

    async def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes, or everything until EOF if ``size`` is negative; b"" only at EOF."""
        while not self.closed and (size < 0 or not self._buffer):
            waiting: Deferred[None] = Deferred()
            self._readers.append(waiting)
            await waiting
        size = len(self._buffer) if size < 0 else size
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


@dataclass
class ProcessIO:
    """The three streams of a process started with I/O (Python processes)."""

    stdin: InputStream = field(default_factory=InputStream)
    stdout: OutputStream = field(default_factory=OutputStream)
    stderr: OutputStream = field(default_factory=OutputStream)


@dataclass
class ManagedProcess:
    """A process this manager started: what ListProcessesEx reports, and how it ended."""

    pid: int
    cmd: str
    command_line: str
    owner: str
    start_time: int
    io: ProcessIO | None = None
    exit_code: int | None = None
    end_time: int | None = None
    _ended: list[Deferred[ManagedProcess]] = field(default_factory=list, repr=False)
    _stop: Callable[[bool], None] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def when_ended(self) -> Deferred[ManagedProcess]:
        """Fires with this record once the process has exited (at once if it has)."""
        if not self.running:
            ended: Deferred[ManagedProcess] = Deferred()
            ended.callback(self)
            return ended
        waiting: Deferred[ManagedProcess] = Deferred()
        self._ended.append(waiting)
        return waiting

    def info(self) -> ProcessInfo:
        return ProcessInfo(self.pid, self.command_line, self.owner, self.start_time, self.cmd,
                           self.exit_code or 0, self.end_time or 0)


@dataclass
class PythonProcess:
    """What a Python function started as a process receives."""

    pid: int
    name: str
    arguments: str
    environment: dict[str, str]
    working_directory: str
    user: GuestUser
    io: ProcessIO

    @property
    def stdin(self) -> InputStream:
        return self.io.stdin

    @property
    def stdout(self) -> OutputStream:
        return self.io.stdout

    @property
    def stderr(self) -> OutputStream:
        return self.io.stderr


PythonFunction = Callable[[PythonProcess], "Awaitable[int | None] | int | None"]


@dataclass(frozen=True)
class StartRequest:
    """What StartProgram asks: a program (absolute path, or a registered function's name) and how to run it."""

    program_path: str
    arguments: str = ""
    working_directory: str | None = None
    environment: dict[str, str] = field(default_factory=dict)


class _Watcher(ProcessProtocol):
    def __init__(self, manager: ProcessManager, record: ManagedProcess) -> None:
        self.manager = manager
        self.record = record

    def processEnded(self, reason: Failure) -> None:  # noqa: N802 (Twisted's name)
        status = getattr(reason.value, "exitCode", None)
        signalled = getattr(reason.value, "signal", None)
        code = KILLED_EXIT_CODE if signalled is not None or status is None else int(status)
        self.manager._ended(self.record, code)


def _first_pseudo_pid() -> int:
    """Pseudo-pids for Python processes start above the kernel's pid_max: they never name a real process."""
    try:
        with open("/proc/sys/kernel/pid_max") as limit:
            return int(limit.read()) + 1
    except (OSError, ValueError):
        return (1 << 22) + 1


@implementer(IProcessTable)
class ProcessManager:
    """Starts, watches, lists and kills the processes of guest operations.

    ``reactor`` provides spawnProcess and time; ``clock`` (default: the
    reactor) is what reaping and kill escalation run on, and ``now`` gives
    wall-clock seconds for start and end times.
    """

    log = Logger()

    def __init__(self, reactor: object, *, clock: object | None = None, now: Callable[[], float] = time.time) -> None:
        self.reactor = reactor
        self.clock = clock or reactor
        self.now = now
        self.functions: dict[str, PythonFunction] = {}
        self._processes: dict[int, ManagedProcess] = {}
        self._next_pseudo_pid = _first_pseudo_pid()
        self._reapers: dict[int, IDelayedCall] = {}
        # Built in, as in the Go toolbox: HTTP to a server inside the guest over stdin/stdout.
        self.register(ROUND_TRIP, RoundTrip(reactor))

    # -- registration ------------------------------------------------------------------------

    def register(self, name: str, function: PythonFunction) -> None:
        """Make ``function`` startable as a process called ``name`` (a name without ``/``)."""
        if "/" in name or not name:
            raise ValueError(f"a Python process name must be non-empty and contain no '/': {name!r}")
        self.functions[name] = function

    # -- queries -------------------------------------------------------------------------------

    def get(self, pid: int) -> ManagedProcess | None:
        """A process this manager started (still running, or exited less than `REAP_AFTER` ago)."""
        return self._processes.get(pid)

    def started(self) -> list[ManagedProcess]:
        return list(self._processes.values())

    def list(self, pids: tuple[int, ...] = ()) -> Deferred[list[ProcessInfo]]:
        """Ours (with exit code and end time) and the guest's others; only ``pids`` if given.

        Reading /proc for hundreds of processes takes tens of milliseconds:
        with a real reactor it happens in its thread pool.
        """
        ours = {p.pid: p.info() for p in self._processes.values()}
        wanted = set(pids)
        pool = getattr(self.reactor, "getThreadPool", None)
        if pool is None:  # a Clock in tests: read in place
            reading: Deferred[list[ProcessInfo]] = maybeDeferred(_system_processes, wanted)
        else:
            reading = deferToThreadPool(self.reactor, pool(), _system_processes, wanted)  # type: ignore[arg-type]
        return reading.addCallback(lambda others: _merged(ours, wanted, others))

    # -- starting ------------------------------------------------------------------------------

    def start(self, request: StartRequest, user: GuestUser) -> ManagedProcess:
        """Start at once and return the record (its pid is known now); `VixOperationError` if it cannot."""
        function = self.functions.get(request.program_path)
        if function is not None:
            return self._start_function(request, function, user)
        return self._spawn(request, user)

    def _check_program(self, request: StartRequest, user: GuestUser, cwd: str) -> None:
        if not user.is_service_user and os.geteuid() != 0:
            raise VixOperationError(VixCode.GUEST_USER_PERMISSIONS,
                                    f"the tools do not run as root: cannot start programs as {user.name}")
        path = request.program_path
        if not os.path.isabs(path) or not os.path.exists(path):
            raise VixOperationError(VixCode.FILE_NOT_FOUND, f"no program {path!r}")
        if not _may_execute(path, user):
            raise VixOperationError(VixCode.GUEST_USER_PERMISSIONS, f"{user.name} may not execute {path!r}")
        if not os.path.isdir(cwd):
            raise VixOperationError(VixCode.NOT_A_DIRECTORY, f"working directory {cwd!r} is not a directory")
        if not _may_enter(cwd, user):
            raise VixOperationError(VixCode.FILE_ACCESS_ERROR, f"{user.name} may not enter {cwd!r}", errno.EACCES)

    def _spawn(self, request: StartRequest, user: GuestUser) -> ManagedProcess:
        cwd = request.working_directory or user.home
        self._check_program(request, user, cwd)
        command_line = shlex.quote(request.program_path) + (f" {request.arguments}" if request.arguments else "")
        # ListProcessesEx shows a started program as vmtoolsd does: the path quoted, then the arguments.
        shown = f'"{request.program_path}"' + (f" {request.arguments}" if request.arguments else "")
        record = ManagedProcess(0, os.path.basename(request.program_path), shown, user.name, int(self.now()))
        identity = {} if user.is_service_user else {"uid": user.uid, "gid": user.gid}
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            transport = self.reactor.spawnProcess(  # type: ignore[attr-defined]
                _Watcher(self, record), SHELL, [SHELL, "-c", command_line],
                env=user.environment(request.environment), path=cwd,
                childFDs={0: devnull, 1: devnull, 2: devnull}, **identity,
            )
        except OSError as error:
            raise VixOperationError.from_os_error(error) from None
        finally:
            os.close(devnull)
        record.pid = transport.pid
        record._stop = lambda force: _signal_transport(transport, force)
        self._processes[record.pid] = record
        self.log.info("started {pid} for {user}: {command!r}", pid=record.pid, user=user.name, command=command_line)
        return record

    def _start_function(self, request: StartRequest, function: PythonFunction, user: GuestUser) -> ManagedProcess:
        pid = self._next_pseudo_pid
        self._next_pseudo_pid += 1
        io = ProcessIO()
        name = request.program_path
        record = ManagedProcess(pid, name, name + (f" {request.arguments}" if request.arguments else ""),
                                user.name, int(self.now()), io)
        context = PythonProcess(pid, name, request.arguments, user.environment(request.environment),
                                request.working_directory or user.home, user, io)
        running = maybeDeferred(_call, function, context)
        record._stop = lambda force: running.cancel()
        self._processes[pid] = record
        running.addCallbacks(lambda code: self._function_done(record, code), lambda f: self._function_failed(record, f))
        return record

    def _function_done(self, record: ManagedProcess, code: object) -> None:
        self._ended(record, code if isinstance(code, int) else 0)

    def _function_failed(self, record: ManagedProcess, failure: Failure) -> None:
        from twisted.internet.defer import CancelledError

        if failure.check(CancelledError):
            self._ended(record, KILLED_EXIT_CODE)
            return
        if record.io is not None and record.io.stderr.size == 0 and not record.io.stderr.closed:
            record.io.stderr.write(failure.getErrorMessage().encode("utf-8", "replace") + b"\n")
        self.log.failure("Python process {name} failed", failure, name=record.cmd)
        self._ended(record, 1)

    def _ended(self, record: ManagedProcess, code: int) -> None:
        if not record.running:
            return
        record.exit_code = code
        record.end_time = int(self.now())
        if record.io is not None:
            record.io.stdout.close()
            record.io.stderr.close()
            record.io.stdin.close()
        self._reapers[record.pid] = self.clock.callLater(REAP_AFTER, self._reap, record.pid)  # type: ignore[attr-defined]
        waiting, record._ended = record._ended, []
        for ended in waiting:
            ended.callback(record)

    def _reap(self, pid: int) -> None:
        self._reapers.pop(pid, None)
        self._processes.pop(pid, None)

    # -- killing -------------------------------------------------------------------------------

    def kill(self, pid: int, user: GuestUser) -> None:
        """SIGTERM, then SIGKILL after `KILL_GRACE` (a Python process is cancelled); errors as vmtoolsd's."""
        if pid == os.getpid():
            raise VixOperationError(VixCode.GUEST_USER_PERMISSIONS, "refusing to kill the tools themselves")
        record = self._processes.get(pid)
        if record is not None:
            if not record.running:
                raise VixOperationError(VixCode.NO_SUCH_PROCESS, f"process {pid} has exited")
            if user.uid != 0 and user.name != record.owner:
                raise VixOperationError(VixCode.GUEST_USER_PERMISSIONS, f"{user.name} may not kill {pid}")
            assert record._stop is not None
            record._stop(False)
            self.clock.callLater(KILL_GRACE, self._escalate, record)  # type: ignore[attr-defined]
            return
        self._kill_other(pid, user)

    def _escalate(self, record: ManagedProcess) -> None:
        if record.running and record._stop is not None:
            record._stop(True)

    def _kill_other(self, pid: int, user: GuestUser) -> None:
        try:
            target = psutil.Process(pid)
            uids = target.uids()
            created = target.create_time()
        except (psutil.NoSuchProcess, ValueError, OverflowError):
            raise VixOperationError(VixCode.NO_SUCH_PROCESS, f"no process {pid}") from None
        except psutil.AccessDenied:
            raise VixOperationError(VixCode.GUEST_USER_PERMISSIONS, f"cannot inspect process {pid}") from None
        # The kernel's rule for kill(2), applied for the user we act as (the service may be root).
        if user.uid != 0 and user.uid not in (uids.real, uids.saved):
            raise VixOperationError(VixCode.GUEST_USER_PERMISSIONS, f"{user.name} may not kill {pid}")
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            raise VixOperationError(VixCode.NO_SUCH_PROCESS, f"no process {pid}") from None
        except PermissionError:
            raise VixOperationError(VixCode.GUEST_USER_PERMISSIONS, f"may not kill {pid}") from None
        self.clock.callLater(KILL_GRACE, _kill_if_same, pid, created)  # type: ignore[attr-defined]

    def stop(self) -> None:
        """The service stops: cancel timers (running programs are left to run, as vmtoolsd leaves them)."""
        for reaper in self._reapers.values():
            if reaper.active():
                reaper.cancel()
        self._reapers.clear()


def _merged(ours: dict[int, ProcessInfo], wanted: set[int], others: list[ProcessInfo]) -> list[ProcessInfo]:
    infos = [info for pid, info in ours.items() if not wanted or pid in wanted]
    infos += [proc for proc in others if proc.pid not in ours]
    return sorted(infos, key=lambda info: info.pid)


def _call(function: PythonFunction, context: PythonProcess) -> object:
    """Run ``function``; a coroutine becomes a Deferred, so that cancelling it reaches the coroutine."""
    result = function(context)
    if inspect.iscoroutine(result):
        return ensureDeferred(result)
    if isinstance(result, Deferred) or not inspect.isawaitable(result):
        return result
    return ensureDeferred(_await(result))


async def _await(awaitable: Awaitable[object]) -> object:
    return await awaitable


def _signal_transport(transport: object, force: bool) -> None:
    try:
        transport.signalProcess("KILL" if force else "TERM")  # type: ignore[attr-defined]
    except Exception:  # ProcessExitedAlready: it ended between our check and the signal
        pass


def _kill_if_same(pid: int, created: float) -> None:
    """SIGKILL ``pid`` if it is still the process we sent SIGTERM (not a new one with a reused pid)."""
    try:
        if psutil.Process(pid).create_time() == created:
            os.kill(pid, signal.SIGKILL)
    except (psutil.Error, OSError):
        pass


def _allowed(st: os.stat_result, user: GuestUser, bits: int) -> bool:
    """Whether ``user`` has ``bits`` (r=4, w=2, x=1) on a file with ``st``, by the owner/group/other rule."""
    if user.uid == 0:
        return not bits & 1 or bool(st.st_mode & 0o111) or stat.S_ISDIR(st.st_mode)
    if st.st_uid == user.uid:
        return (st.st_mode >> 6) & bits == bits
    if st.st_gid in user.groups:
        return (st.st_mode >> 3) & bits == bits
    return st.st_mode & bits == bits


def _may_execute(path: str, user: GuestUser) -> bool:
    try:
        return _allowed(os.stat(path), user, 1)
    except OSError:
        return False


def _may_enter(path: str, user: GuestUser) -> bool:
    """Whether ``user`` could chdir to ``path``: search permission on it and every directory above.

    Twisted changes directory before it drops to the user, so this is checked here, as the user.
    """
    current = os.path.realpath(path)
    while True:
        try:
            if not _allowed(os.stat(current), user, 1):
                return False
        except OSError:
            return False
        parent = os.path.dirname(current)
        if parent == current:
            return True
        current = parent


def _system_processes(wanted: set[int]) -> list[ProcessInfo]:
    """The guest's processes as ListProcessesEx reports them (vmtoolsd lists every process)."""
    infos = []
    iterator = (psutil.Process(pid) for pid in wanted if psutil.pid_exists(pid)) if wanted else psutil.process_iter()
    for proc in iterator:
        try:
            with proc.oneshot():
                cmdline = proc.cmdline()
                name = proc.name()
                owner = proc.username()
                start = int(proc.create_time())
        except (psutil.Error, OSError, KeyError):
            continue  # gone, a zombie, or an owner without a name: skip as vmtoolsd skips unreadable ones
        infos.append(ProcessInfo(proc.pid, " ".join(cmdline) if cmdline else f"[{name}]", owner, start, name))
    return infos
