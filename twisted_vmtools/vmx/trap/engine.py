"""The trap engine: run a program and emulate its VMware backdoor.

One tracer thread (whichever calls `TrapEngine.run`) launches the program in
the sandbox (see `launch`), PTRACE_SEIZEs it and then follows every thread,
fork, vfork and exec of the tree.  It intercepts:

- SIGSEGV (#GP, si_code SI_KERNEL) at `in eax,dx` (ED) on port 0x5658 and at
  `rep insb` / `rep outsb` (F3 6C / F3 6E) on port 0x5659, with EAX = the
  magic: the host answers, the engine writes the registers back, skips the
  instruction and suppresses the signal;
- CPUID, so the program sees a VMware CPU: either by CPUID faulting (SIGSEGV
  at 0F A2, re-armed after every exec) where the CPU offers it, or by int3
  breakpoints over the `cpuid` instructions of every loaded object whose code
  contains the backdoor magic; objects loaded later are found through a
  breakpoint on ld.so's `_dl_debug_state` (the debugger hook r_brk).

Every other signal is delivered unchanged.  Breakpoints are emulated, never
restored and single-stepped, so other threads never run unpatched code.
"""

from __future__ import annotations

import os
import signal
import struct
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from twisted.logger import Logger

from twisted_vmtools.codecs.registers import (
    BDOOR_MAGIC,
    BDOOR_PORT,
    BDOORHB_PORT,
    MASK32,
    MASK64,
    Registers,
)

from . import elf, ptrace
from .cpuid import HYPERVISOR_BASE, VMWARE_SIGNATURE, VMwareCPUID, cpuid_faulting_available, hypervisor_signature
from .interfaces import IBackdoorHost
from .launch import Launcher, LaunchError, encode_spec
from .process import (
    AddressSpace,
    Breakpoint,
    BreakpointKind,
    Mapping,
    Process,
    Thread,
    read_auxv,
    read_maps,
)

AT_BASE = 7
# si_code of a single-step SIGTRAP: TRAP_TRACE after an instruction,
# TRAP_BRKPT when the step is reported at system call exit.
STEP_CODES = frozenset((1, 2))
ARCH_SET_CPUID = 0x1012
LOADER_HOOK = "_dl_debug_state"
INT3 = b"\xcc"
CPUID_INSN = b"\x0f\xa2"
IN_EAX_DX = 0xED
REP_INSB = b"\xf3\x6c"
REP_OUTSB = b"\xf3\x6e"
# A high-bandwidth transfer larger than this is treated as unreadable: the
# VMX caps messages at 64 KiB, and the tracer must not allocate what a
# buggy guest's RCX asks for.
MAX_HB_TRANSFER = 16 * 1024 * 1024
GROUP_STOP_SIGNALS = frozenset((signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU))
TRACE_OPTIONS = (
    ptrace.PTRACE_O_TRACECLONE
    | ptrace.PTRACE_O_TRACEFORK
    | ptrace.PTRACE_O_TRACEVFORK
    | ptrace.PTRACE_O_TRACEEXEC
    | ptrace.PTRACE_O_EXITKILL
)


@dataclass(frozen=True)
class _Deferred:
    """A signal (or job-control stop) that arrived while the engine stepped a
    tracee, held back until the step is over."""

    signal: int
    info: ptrace.SigInfo | None  # None: a group stop, to be raised again


class TrapEngineError(Exception):
    """The engine cannot run a program."""


class HostIsVMwareError(TrapEngineError):
    """This machine is a real VMware VM: backdoor instructions would not fault
    but reach the real VMX, so emulating them is impossible and unsafe."""


@dataclass
class TrapStatistics:
    """Counts of what the engine did during one run."""

    low_bandwidth: int = 0  # `in eax,dx` emulated
    high_bandwidth_out: int = 0  # `rep outsb` emulated
    high_bandwidth_in: int = 0  # `rep insb` emulated
    cpuid: int = 0  # CPUID emulations (int3 or faulting)
    loader_hits: int = 0  # r_brk breakpoint hits
    breakpoints_planted: int = 0
    signals_delivered: int = 0
    processes: int = 0
    threads: int = 0
    execs: int = 0
    cpuid_leaves: dict[int, int] = field(default_factory=dict)  # CPUID emulations per leaf (EAX)
    faulting_images: int = 0  # exec'd images whose every CPUID faults (cpuid_fault)
    breakpoint_images: int = 0  # exec'd images whose backdoor objects get int3 over their CPUIDs

    @property
    def backdoor_traps(self) -> int:
        return self.low_bandwidth + self.high_bandwidth_out + self.high_bandwidth_in

    @property
    def hypervisor_leaves(self) -> dict[int, int]:
        """CPUID emulations per leaf of the hypervisor range (0x4xxxxxxx).

        Only code probing for a hypervisor asks these, so the counts are the
        same on both paths; the other leaves' counts are not: with faulting
        every CPUID traps, the dynamic loader's and libc's included.
        """
        return {leaf: n for leaf, n in self.cpuid_leaves.items() if leaf & 0xF0000000 == HYPERVISOR_BASE}

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _package_root() -> str:
    # The launcher runs as `python -m twisted_vmtools...`; make sure the
    # interpreter finds this very copy of the package.
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _to_registers(regs: ptrace.UserRegs) -> Registers:
    return Registers(ax=regs.rax, bx=regs.rbx, cx=regs.rcx, dx=regs.rdx, si=regs.rsi, di=regs.rdi, bp=regs.rbp)


def _executable(tid: int) -> str:
    try:
        return os.readlink(f"/proc/{tid}/exe")
    except OSError:
        return "?"


def exit_code(status: int) -> int:
    """A wait status as a shell reports it (signal death -> 128 + signal)."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


class TrapEngine:
    """Runs one program tree under the trap emulator.

    `host` provides `IBackdoorHost`; its methods are called from the thread
    that calls `run`.  `pin_cpu` pins the tracer thread and the traced tree
    to one CPU (True: the first CPU this thread may use; an int: that CPU;
    False: no pinning) because a ptrace round trip between two CPUs costs
    about three times more.  `timeout` (seconds of wall clock) ends the tree
    with SIGTERM, then SIGKILL after `grace` seconds.  stdin/stdout/stderr
    are file descriptors for the program (None: inherit).  `cpuid_mode` is
    "auto" (faulting where available, else int3), "fault" or "int3".
    `trace` logs every emulated instruction.
    """

    log = Logger(namespace="twisted_vmtools.vmx.trap")

    def __init__(
        self,
        host: IBackdoorHost,
        *,
        pin_cpu: bool | int = True,
        timeout: float | None = None,
        grace: float = 2.0,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        env: dict[str, str] | dict[bytes, bytes] | None = None,
        cwd: str | bytes | None = None,
        cpuid_mode: str = "auto",
        trace: bool = False,
    ) -> None:
        signature = hypervisor_signature()
        if signature == VMWARE_SIGNATURE:
            raise HostIsVMwareError("refusing to run on a real VMware VM: backdoor instructions would reach its VMX")
        if cpuid_mode not in ("auto", "fault", "int3"):
            raise ValueError(f"cpuid_mode must be auto, fault or int3, not {cpuid_mode!r}")
        self.host = host
        self.pin_cpu = pin_cpu
        self.timeout = timeout
        self.grace = grace
        self.stdio = (stdin, stdout, stderr)
        self.env = env
        self.cwd = cwd
        self.trace = trace
        self.use_faulting = cpuid_mode == "fault" or (cpuid_mode == "auto" and cpuid_faulting_available())
        self.cpuid = VMwareCPUID()
        self.statistics = TrapStatistics()
        self.timed_out = False

        self._threads: dict[int, Thread] = {}
        self._processes: dict[int, Process] = {}
        self._parked: dict[int, int] = {}  # tid -> wait status of unannounced new tracees
        self._pidfds: dict[int, int] = {}  # tgid -> pidfd, for race-free kill from any thread
        self._lock = threading.Lock()
        self._terminating = False
        self._kill_scheduled = False
        self._killing = False  # from now on every process of the tree gets SIGKILL
        self._started = False
        self._main_pid = 0
        self._launcher: Launcher | None = None
        self._main_status: int | None = None
        self._timers: list[threading.Timer] = []
        self._exits: list[tuple[int, int]] = []  # exit statuses consumed by a targeted wait

    # -- public API ---------------------------------------------------------

    def run(self, argv: Sequence[str | bytes]) -> int:
        """Run `argv` to completion; return its exit status (128+sig if killed)."""
        if self._started:
            raise TrapEngineError("a TrapEngine runs one program; create another")
        if not argv:
            raise ValueError("empty argv")
        self._started = True
        saved_affinity = os.sched_getaffinity(0)
        cpu = self._choose_cpu(saved_affinity)
        try:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})  # this thread only
            self._launch([os.fsencode(a) for a in argv], cpu)
            if self.timeout is not None:
                self._start_timer(self.timeout, self._on_timeout)
            with self._lock:
                terminating = self._terminating
            if terminating:
                self.terminate()
            self._loop()
        finally:
            with self._lock:
                self._killing = True
                timers = list(self._timers)
            for timer in timers:
                timer.cancel()
            self._reap_everything()
            if self._launcher is not None:
                self._launcher.reap()  # it exits once its namespace is empty
            if cpu is not None:
                os.sched_setaffinity(0, saved_affinity)
        if self._main_status is None:
            raise TrapEngineError("the program's exit status was lost")
        return exit_code(self._main_status)

    def terminate(self) -> None:
        """End the whole tree: SIGTERM now, SIGKILL after the grace period.

        Thread-safe; may be called before, during or after `run`.
        """
        with self._lock:
            self._terminating = True
            schedule_kill = self._started and not self._kill_scheduled
            self._kill_scheduled |= schedule_kill
        self._signal_all(signal.SIGTERM)
        self._signal_all(signal.SIGCONT)  # a stopped program must see its SIGTERM
        if schedule_kill:
            self._start_timer(self.grace, self._kill_all)

    def _kill_all(self) -> None:
        with self._lock:
            self._killing = True
        self._signal_all(signal.SIGKILL)

    # -- launching ----------------------------------------------------------

    def _choose_cpu(self, allowed: set[int]) -> int | None:
        if isinstance(self.pin_cpu, bool):
            if not self.pin_cpu:
                return None
            # The CPU the scheduler runs us on now is likely the least busy.
            current = int(ptrace.libc.sched_getcpu())
            return current if current in allowed else min(allowed)
        return self.pin_cpu

    def _launch(self, argv: list[bytes], cpu: int | None) -> None:
        if self.env is None:
            env = dict(os.environb)
        else:
            env = {os.fsencode(k): os.fsencode(v) for k, v in self.env.items()}
        cwd = os.fsencode(self.cwd) if self.cwd is not None else None

        launcher = Launcher(self.stdio, _package_root())
        try:
            # The program process reports once it is sandboxed, before it
            # executes anything: tracing starts there, so only the
            # program's own exec is ever seen.
            pid = launcher.ready()
            if cpu is not None:
                os.sched_setaffinity(pid, {cpu})
            ptrace.seize(pid, TRACE_OPTIONS)
        except (OSError, ptrace.TraceeGone, LaunchError) as exc:
            launcher.abort()
            if isinstance(exc, LaunchError):
                raise TrapEngineError(f"launcher failed: {exc}") from exc
            raise TrapEngineError(f"cannot trace the launcher: {exc}") from exc
        self._launcher = launcher
        self._main_pid = pid
        process = self._add_process(pid, AddressSpace(pid))
        self._add_thread(pid, process)
        launcher.send_spec(encode_spec(argv, env, cwd))

    def _add_process(self, tgid: int, space: AddressSpace) -> Process:
        process = Process(tgid, space)
        space.users += 1
        self._processes[tgid] = process
        self.statistics.processes += 1
        try:
            pidfd = os.pidfd_open(tgid)
        except OSError:
            pidfd = None
        if pidfd is not None:
            with self._lock:
                self._pidfds[tgid] = pidfd
                killing = self._killing
            if killing:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return process

    def _add_thread(self, tid: int, process: Process) -> Thread:
        thread = Thread(tid, process)
        self._threads[tid] = thread
        process.threads.add(tid)
        self.statistics.threads += 1
        return thread

    # -- termination --------------------------------------------------------

    def _start_timer(self, delay: float, action: object) -> None:
        timer = threading.Timer(delay, action)  # type: ignore[arg-type]
        timer.daemon = True
        with self._lock:
            self._timers.append(timer)
        timer.start()

    def _on_timeout(self) -> None:
        self.timed_out = True
        self.log.warn("program timed out after {timeout} s; terminating", timeout=self.timeout)
        self.terminate()

    def _signal_all(self, sig: int) -> None:
        with self._lock:
            for pidfd in self._pidfds.values():
                try:
                    signal.pidfd_send_signal(pidfd, sig)
                except OSError:
                    pass  # already dead

    def _forget_pidfd(self, tgid: int) -> None:
        with self._lock:
            pidfd = self._pidfds.pop(tgid, None)
        if pidfd is not None:
            os.close(pidfd)

    def _reap_everything(self) -> None:
        """Leave nothing behind, even if the loop ended by an exception."""
        self._signal_all(signal.SIGKILL)
        # Parked tracees whose parent died before announcing them are stopped
        # tracees of ours, so their pids cannot be reused under us.
        for tid in list(self._parked):
            try:
                os.kill(tid, signal.SIGKILL)
            except OSError:
                pass
        while self._threads or self._parked:
            try:
                tid, status = ptrace.wait_any()
            except ChildProcessError:
                break
            self._handle(tid, status)
        for process in list(self._processes.values()):
            self._end_process(process)

    # -- the event loop -----------------------------------------------------

    def _loop(self) -> None:
        while self._threads:
            try:
                tid, status = ptrace.wait_any()
            except ChildProcessError:
                break
            self._handle(tid, status)

    def _handle(self, tid: int, status: int) -> None:
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self._on_exit(tid, status)
            return
        if not os.WIFSTOPPED(status):
            return
        thread = self._threads.get(tid)
        if thread is None:
            # A new thread or child can report its first stop before its
            # parent's clone/fork event names it: park it until then.
            self._parked[tid] = status
            return
        try:
            self._on_stop(thread, status)
        except ptrace.TraceeGone:
            pass  # killed meanwhile; its exit will be reported
        except OSError as exc:
            self.log.failure("trap engine error on thread {tid}: {exc}", tid=tid, exc=exc)
            self._resume(tid)
        while self._exits:  # reported to a targeted wait (`_step`) meanwhile
            self._on_exit(*self._exits.pop(0))

    def _resume(self, tid: int, sig: int = 0) -> None:
        try:
            ptrace.cont(tid, sig)
        except (ptrace.TraceeGone, OSError):
            pass

    def _on_stop(self, thread: Thread, status: int) -> None:
        sig = os.WSTOPSIG(status)
        event = status >> 16
        if event == 0:
            self._on_signal(thread, sig)
        elif event == ptrace.PTRACE_EVENT_STOP:
            if sig in GROUP_STOP_SIGNALS:
                # A job-control stop: stay stopped but let SIGCONT through.
                ptrace.listen(thread.tid)
            else:
                ptrace.cont(thread.tid)
        elif event in (ptrace.PTRACE_EVENT_FORK, ptrace.PTRACE_EVENT_VFORK, ptrace.PTRACE_EVENT_CLONE):
            self._on_spawn(thread, event)
            ptrace.cont(thread.tid)
        elif event == ptrace.PTRACE_EVENT_EXEC:
            ptrace.cont(thread.tid, self._on_exec(thread))
        else:
            ptrace.cont(thread.tid)

    def _on_exit(self, tid: int, status: int) -> None:
        self._parked.pop(tid, None)
        thread = self._threads.pop(tid, None)
        if thread is None:
            return
        process = thread.process
        process.threads.discard(tid)
        # A leader's exit is reported only once its whole group is gone.
        if tid == process.tgid or not process.threads:
            self._end_process(process)
            if process.tgid == self._main_pid:
                self._main_status = status
                self.log.debug("program exited: {code}", code=exit_code(status))
                # The program is done: nothing it started may outlive it.
                self._kill_all()

    def _end_process(self, process: Process) -> None:
        for tid in process.threads:
            self._threads.pop(tid, None)
        process.threads.clear()
        if self._processes.pop(process.tgid, None) is None:
            return
        self._owner_done(process)
        process.space.release()
        self._forget_pidfd(process.tgid)

    def _owner_done(self, process: Process) -> None:
        if process.used_backdoor:
            process.used_backdoor = False
            try:
                self.host.owner_exited(process.tgid)
            except Exception:
                self.log.failure("IBackdoorHost.owner_exited({owner}) failed", owner=process.tgid)

    # -- threads, forks, execs ----------------------------------------------

    def _clone_flags(self, thread: Thread, event: int) -> int:
        regs = ptrace.get_regs(thread.tid)
        number = regs.orig_rax
        if number == ptrace.SYS_clone:
            return int(regs.rdi)
        if number == ptrace.SYS_clone3:
            raw = ptrace.read_memory(thread.tid, regs.rdi, 8)
            if raw is not None:
                return int(struct.unpack("<Q", raw)[0])
        if number == ptrace.SYS_vfork or event == ptrace.PTRACE_EVENT_VFORK:
            return ptrace.CLONE_VM | ptrace.CLONE_VFORK
        if event == ptrace.PTRACE_EVENT_CLONE:
            return ptrace.CLONE_VM | ptrace.CLONE_THREAD
        return 0

    def _on_spawn(self, thread: Thread, event: int) -> None:
        new = ptrace.get_event_msg(thread.tid)
        flags = self._clone_flags(thread, event)
        parent = thread.process
        if flags & ptrace.CLONE_THREAD:
            process = parent
        else:
            if flags & ptrace.CLONE_VM:
                space = parent.space
            else:
                try:
                    space = parent.space.fork(new)
                except OSError:
                    # The child is already gone; its exit will come.
                    space = parent.space
            process = self._add_process(new, space)
        self._add_thread(new, process)
        status = self._parked.pop(new, None)
        if status is not None:
            self._handle(new, status)

    def _on_exec(self, thread: Thread) -> int:
        process = thread.process
        former = ptrace.get_event_msg(thread.tid)
        # Exec by a non-leader: the other threads are gone and the execing
        # thread now carries the leader's tid.
        for tid in process.threads - {thread.tid}:
            self._threads.pop(tid, None)
        process.threads = {thread.tid}
        if former != thread.tid:
            self._threads.pop(former, None)
        self.statistics.execs += 1
        if self.trace:
            self.log.debug("exec in {tgid}: {path}", tgid=process.tgid, path=_executable(thread.tid))
        self._owner_done(process)
        process.space.release()
        process.space = AddressSpace(thread.tid)
        process.space.users += 1
        return self._setup_image(thread)

    # -- CPUID interception setup ------------------------------------------

    def _setup_image(self, thread: Thread) -> int:
        """Arrange CPUID interception in a new image; a signal to deliver, or 0."""
        space = thread.process.space
        deferred: list[_Deferred] = []
        try:
            if self.use_faulting and self._arm_cpuid_faulting(thread, deferred):
                space.cpuid_faulting = True
                self.statistics.faulting_images += 1
                return self._replay(thread, deferred)
            self.statistics.breakpoint_images += 1
            maps = read_maps(thread.tid)
            base = read_auxv(thread.tid).get(AT_BASE, 0)
            if base:
                self._plant_loader_hook(thread.tid, space, maps, base)
            self._scan(thread, maps)
        except BaseException:
            self._replay(thread, deferred, resend_all=True)
            raise
        return self._replay(thread, deferred)

    def _arm_cpuid_faulting(self, thread: Thread, deferred: list[_Deferred]) -> bool:
        """Make CPUID fault in the freshly exec'd image (execve resets it).

        Injects `arch_prctl(ARCH_SET_CPUID, 0)` at the entry point.  At the
        exec stop the process has exactly one thread, so single-stepping a
        temporary `syscall` there is race-free.  The first step only leaves
        execve (the kernel reports a step at system call exit, and would
        overwrite RAX with execve's result); the second runs the injected
        call.  Signals that stop the tracee meanwhile are held in `deferred`
        for `_replay`.  Returns whether faulting is armed.
        """
        tid = thread.tid
        space = thread.process.space
        self._step(tid, deferred)
        saved = ptrace.get_regs(tid)
        original = space.read(saved.rip, 2)
        regs = ptrace.get_regs(tid)
        regs.rax, regs.rdi, regs.rsi = ptrace.SYS_arch_prctl, ARCH_SET_CPUID, 0
        space.write(saved.rip, b"\x0f\x05")
        try:
            ptrace.set_regs(tid, regs)
            self._step(tid, deferred)
            after = ptrace.get_regs(tid)
        finally:
            try:
                space.write(saved.rip, original)
                ptrace.set_regs(tid, saved)
            except (OSError, ptrace.TraceeGone):
                pass  # it died mid-step (SIGKILL): nothing left to restore
        result = after.rax
        if result == 0:
            return True
        self.log.info(
            "CPUID faulting refused ({errno}) in {tgid}; using int3 breakpoints",
            errno=-(result - (1 << 64)) if result >> 63 else result,
            tgid=thread.process.tgid,
        )
        self.use_faulting = False
        return False

    def _step(self, tid: int, deferred: list[_Deferred]) -> None:
        """Single-step `tid` until its step trap is reported, and consume it.

        Other stops may come first, and are never allowed to leave the step
        trap behind: the trap is queued (SIGTRAP) by then, and would later be
        delivered to the program, killing it.  A PTRACE_EVENT_STOP (the trap
        notification a SIGCONT sends every seized tracee; `terminate` sends
        one) is reported before any queued signal, and a signal may be
        dequeued before the trap is raised.  So: step again until the trap
        comes; signals are held back (suppressed now, replayed afterwards),
        job-control stops likewise, notifications dropped.
        """
        while True:
            ptrace.singlestep(tid)
            _, status = os.waitpid(tid, ptrace.WALL)
            if not os.WIFSTOPPED(status):
                self._exits.append((tid, status))
                raise ptrace.TraceeGone(tid)
            sig, event = os.WSTOPSIG(status), status >> 16
            if event == ptrace.PTRACE_EVENT_STOP:
                if sig in GROUP_STOP_SIGNALS:
                    deferred.append(_Deferred(sig, None))
                continue
            if event:
                continue  # no other event can come from a step here
            info = ptrace.get_siginfo(tid)
            if sig == signal.SIGTRAP and info.si_code in STEP_CODES:
                return
            deferred.append(_Deferred(sig, info))

    def _replay(self, thread: Thread, deferred: list[_Deferred], resend_all: bool = False) -> int:
        """Give back the signals `_step` held: the first to deliver on resuming
        (with its own siginfo, the tracee being in a signal stop), the rest
        sent again."""
        first = 0
        for held in deferred:
            if not first and not resend_all and held.info is not None:
                try:
                    ptrace.set_siginfo(thread.tid, held.info)
                except (OSError, ptrace.TraceeGone):
                    continue
                first = held.signal
                self.statistics.signals_delivered += 1
                continue
            try:
                os.kill(thread.process.tgid, held.signal)  # our stopped tracee: the pid is still its own
            except OSError:
                pass
        deferred.clear()
        return first

    def _plant_loader_hook(self, tid: int, space: AddressSpace, maps: list[Mapping], base: int) -> None:
        loader = next((m for m in maps if m.start == base and m.offset == 0 and m.path), None)
        if loader is None:
            return
        try:
            info = elf.analyse(self._object_path(loader, tid), (LOADER_HOOK,))
        except (OSError, elf.ELFError) as exc:
            self.log.warn("cannot read the dynamic loader {path}: {exc}", path=loader.path, exc=exc)
            return
        offset = info.symbols.get(LOADER_HOOK)
        address = self._address_of(maps, loader.key, offset) if offset is not None else None
        if address is None:
            self.log.warn(
                "no {hook} in {path}: libraries loaded later stay unpatched", hook=LOADER_HOOK, path=loader.path
            )
            return
        # The hook is an empty function: `ret`, or `endbr64; ret` with CET.
        # Only then is emulating a `ret` exact.
        code = space.read(address, 5)
        if code[:1] == b"\xc3":
            original = code[:1]
        elif code == b"\xf3\x0f\x1e\xfa\xc3":
            original = code
        else:
            self.log.warn("{hook} is not an empty function; not hooking it", hook=LOADER_HOOK)
            return
        self._plant(space, address, Breakpoint(BreakpointKind.LOADER, len(original), original, loader.key))

    @staticmethod
    def _object_path(mapping: Mapping, tid: int) -> str:
        # The path in maps may be stale (" (deleted)", replaced file); the
        # map_files link always opens the mapped file itself.
        try:
            if os.stat(mapping.path).st_ino == mapping.inode:
                return mapping.path
        except OSError:
            pass
        return f"/proc/{tid}/map_files/{mapping.start:x}-{mapping.end:x}"

    @staticmethod
    def _address_of(maps: list[Mapping], key: tuple[int, int], offset: int) -> int | None:
        for m in maps:
            if m.key == key and "x" in m.perms and m.offset <= offset < m.offset + (m.end - m.start):
                return m.start + offset - m.offset
        return None

    def _scan(self, thread: Thread, maps: list[Mapping]) -> None:
        """Plant int3 over the `cpuid`s of newly mapped backdoor objects."""
        space = thread.process.space
        present: dict[tuple[int, int], Mapping] = {}
        for m in maps:
            if m.inode and "x" in m.perms and m.path.startswith("/"):
                present.setdefault(m.key, m)
        space.forget_objects(set(present))
        for key, mapping in present.items():
            if key in space.objects:
                continue
            space.objects.add(key)
            try:
                info = elf.analyse(self._object_path(mapping, thread.tid))
            except (OSError, elf.ELFError):
                continue
            if not info.has_backdoor:
                continue
            planted = 0
            for offset in info.cpuid_offsets:
                address = self._address_of(maps, key, offset)
                if address is not None:
                    planted += self._plant(space, address, Breakpoint(BreakpointKind.CPUID, 2, CPUID_INSN, key))
            self.log.info(
                "backdoor code in {path} (pid {tgid}): {planted} cpuid breakpoints",
                path=mapping.path,
                tgid=thread.process.tgid,
                planted=planted,
            )

    def _plant(self, space: AddressSpace, address: int, breakpoint: Breakpoint) -> int:
        try:
            current = space.read(address, len(breakpoint.original))
            if current == breakpoint.original:
                space.write(address, INT3)
            elif not (current[:1] == INT3 and current[1:] == breakpoint.original[1:] and address in space.breakpoints):
                self.log.warn(
                    "unexpected bytes {code} at {address:#x}; not patched", code=current.hex(), address=address
                )
                return 0
        except OSError:
            return 0
        space.breakpoints[address] = breakpoint
        self.statistics.breakpoints_planted += 1
        return 1

    # -- signals: the emulation proper ---------------------------------------

    def _on_signal(self, thread: Thread, sig: int) -> None:
        if sig == signal.SIGSEGV and self._on_segv(thread):
            return
        if sig == signal.SIGTRAP and self._on_int3(thread):
            return
        self.statistics.signals_delivered += 1
        ptrace.cont(thread.tid, sig)

    def _on_segv(self, thread: Thread) -> bool:
        if ptrace.get_siginfo(thread.tid).si_code != ptrace.SI_KERNEL:
            return False  # a page fault: the program's own business
        regs = ptrace.get_regs(thread.tid)
        try:
            code = thread.process.space.read(regs.rip, 2)
        except OSError:
            return False
        if code == CPUID_INSN and thread.process.space.cpuid_faulting:
            self._emulate_cpuid(thread, regs, regs.rip + 2)
            return True
        if regs.rax & MASK32 != BDOOR_MAGIC:
            return False
        port = regs.rdx & 0xFFFF
        if code[0] == IN_EAX_DX and port == BDOOR_PORT:
            return self._low_bandwidth(thread, regs)
        if code == REP_OUTSB and port == BDOORHB_PORT:
            return self._high_bandwidth_out(thread, regs)
        if code == REP_INSB and port == BDOORHB_PORT:
            return self._high_bandwidth_in(thread, regs)
        return False

    def _on_int3(self, thread: Thread) -> bool:
        if ptrace.get_siginfo(thread.tid).si_code != ptrace.SI_KERNEL:
            return False
        regs = ptrace.get_regs(thread.tid)
        address = regs.rip - 1
        space = thread.process.space
        breakpoint = space.breakpoints.get(address)
        if breakpoint is None:
            return False
        try:
            current = space.read(address, breakpoint.length)
        except OSError:
            return False
        if current != INT3 + breakpoint.original[1:]:
            return False  # overwritten since (JIT, reloaded code): not ours
        if breakpoint.kind is BreakpointKind.CPUID:
            self._emulate_cpuid(thread, regs, address + breakpoint.length)
            return True
        # The loader hook: do the `ret`, then look for new objects before the
        # loader runs any of their code.
        self.statistics.loader_hits += 1
        (regs.rip,) = struct.unpack("<Q", space.read(regs.rsp, 8))
        regs.rsp = (regs.rsp + 8) & MASK64
        self._scan(thread, read_maps(thread.tid))
        ptrace.set_regs(thread.tid, regs)
        ptrace.cont(thread.tid)
        return True

    def _emulate_cpuid(self, thread: Thread, regs: ptrace.UserRegs, resume: int) -> None:
        leaf, subleaf = regs.rax & MASK32, regs.rcx & MASK32
        regs.rax, regs.rbx, regs.rcx, regs.rdx = self.cpuid(leaf, subleaf)
        regs.rip = resume
        ptrace.set_regs(thread.tid, regs)
        ptrace.cont(thread.tid)
        stats = self.statistics
        stats.cpuid += 1
        stats.cpuid_leaves[leaf] = stats.cpuid_leaves.get(leaf, 0) + 1
        if self.trace:
            self.log.debug(
                "cpuid {leaf:#x}/{subleaf:#x} in {tid} -> {eax:#x} {ebx:#x} {ecx:#x} {edx:#x}",
                leaf=leaf, subleaf=subleaf, tid=thread.tid,
                eax=regs.rax, ebx=regs.rbx, ecx=regs.rcx, edx=regs.rdx,
            )  # fmt: skip

    def _low_bandwidth(self, thread: Thread, regs: ptrace.UserRegs) -> bool:
        owner = thread.process.tgid
        thread.process.used_backdoor = True
        before = _to_registers(regs)
        try:
            result = self.host.low_bandwidth(owner, before)
        except Exception:
            self.log.failure("IBackdoorHost.low_bandwidth failed; delivering SIGSEGV")
            return False
        if result is None:
            return False
        regs.rax, regs.rbx, regs.rcx = result.ax & MASK32, result.bx & MASK32, result.cx & MASK32
        regs.rdx, regs.rsi, regs.rdi = result.dx & MASK32, result.si & MASK32, result.di & MASK32
        regs.rip += 1
        ptrace.set_regs(thread.tid, regs)
        ptrace.cont(thread.tid)
        self.statistics.low_bandwidth += 1
        if self.trace:
            self._trace("in", thread, before, result)
        return True

    def _high_bandwidth_out(self, thread: Thread, regs: ptrace.UserRegs) -> bool:
        owner = thread.process.tgid
        thread.process.used_backdoor = True
        before = _to_registers(regs)
        count = regs.rcx
        data = ptrace.read_memory(thread.tid, regs.rsi, count) if count <= MAX_HB_TRANSFER else None
        if data is None:
            # What a VMX does with an unreadable buffer: report failure.
            result = before.with_(bx=regs.rbx & 0xFFFF)
            moved = 0
        else:
            try:
                result = self.host.high_bandwidth_out(owner, before, data)
            except Exception:
                self.log.failure("IBackdoorHost.high_bandwidth_out failed; delivering SIGSEGV")
                return False
            moved = len(data)
        regs.rax, regs.rbx, regs.rdx = result.ax & MASK32, result.bx & MASK32, result.dx & MASK32
        regs.rdi = result.di & MASK32  # the displaced cookie
        regs.rsi = (regs.rsi + moved) & MASK64
        regs.rcx = 0
        regs.rip += 2
        ptrace.set_regs(thread.tid, regs)
        ptrace.cont(thread.tid)
        self.statistics.high_bandwidth_out += 1
        if self.trace:
            self._trace("rep outsb", thread, before, result, moved)
        return True

    def _high_bandwidth_in(self, thread: Thread, regs: ptrace.UserRegs) -> bool:
        owner = thread.process.tgid
        thread.process.used_backdoor = True
        before = _to_registers(regs)
        try:
            result, data = self.host.high_bandwidth_in(owner, before)
        except Exception:
            self.log.failure("IBackdoorHost.high_bandwidth_in failed; delivering SIGSEGV")
            return False
        data = bytes(data[: regs.rcx])
        if ptrace.write_memory(thread.tid, regs.rdi, data):
            moved = len(data)
        else:
            result = result.with_(bx=result.bx & 0xFFFF)  # status 0: transfer failed
            moved = 0
        regs.rax, regs.rbx, regs.rdx = result.ax & MASK32, result.bx & MASK32, result.dx & MASK32
        regs.rsi = result.si & MASK32  # the displaced cookie
        regs.rdi = (regs.rdi + moved) & MASK64
        regs.rcx = 0
        regs.rip += 2
        ptrace.set_regs(thread.tid, regs)
        ptrace.cont(thread.tid)
        self.statistics.high_bandwidth_in += 1
        if self.trace:
            self._trace("rep insb", thread, before, result, moved)
        return True

    def _trace(self, what: str, thread: Thread, before: Registers, after: Registers, size: int = -1) -> None:
        self.log.debug(
            "{what} by {tid} (pid {tgid}): {before} -> {after}{size}",
            what=what,
            tid=thread.tid,
            tgid=thread.process.tgid,
            before=before,
            after=after,
            size=f" ({size} bytes)" if size >= 0 else "",
        )
