"""The trap engine against small C programs (tests/vmx/trap/programs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from twisted_vmtools.vmx.trap import engine as engine_module
from twisted_vmtools.vmx.trap.cpuid import cpuid_faulting_available
from twisted_vmtools.vmx.trap.engine import HostIsVMwareError, TrapEngine

pytestmark = pytest.mark.slow  # processes: see pyproject.toml's markers


def run(host, argv, output=None, **options):
    if output is not None:
        options["stdout"] = output[0]
    engine = TrapEngine(host, timeout=options.pop("timeout", 20), **options)
    status = engine.run(argv)
    text = output[1].read_text() if output is not None else ""
    return status, text, engine


def test_cpuid_looks_like_vmware(programs, host, output):
    status, text, engine = run(host, [programs.trapped, "cpuid"], output)
    assert status == 0
    assert "hypervisor bit 1" in text
    assert "signature VMwareVMware max 0x40000010" in text
    # Never advertise VMCALL/VMMCALL (ECX bits 0/1 of the timing leaf).
    assert "ecx 0 edx 0" in text
    assert "leaf 0x40000100 0 0 0 0" in text  # the real hypervisor stays hidden
    assert_program_cpuids(engine.statistics)


def assert_program_cpuids(stats):
    """The five CPUIDs of `trapped cpuid` were answered, on either path.

    With CPUID faulting every CPUID of the process traps (the loader's and
    libc's too), so only the hypervisor leaves count exactly everywhere;
    with int3 breakpoints exactly the program's own five trap.
    """
    assert stats.hypervisor_leaves == {0x40000000: 1, 0x40000010: 1, 0x40000100: 1}
    assert stats.cpuid_leaves[0] >= 1 and stats.cpuid_leaves[1] >= 1
    if stats.faulting_images:
        assert stats.cpuid >= 5
    else:
        assert stats.cpuid == 5


def test_getversion(programs, host, output):
    status, text, engine = run(host, [programs.trapped, "getversion"], output)
    assert status == 0, text
    assert "GETVERSION eax=6 ebx=0x564d5868 ecx=2" in text
    assert engine.statistics.low_bandwidth == 2
    assert host.exited == [engine._main_pid]


def test_high_bandwidth_rep_semantics(programs, host, output):
    status, text, engine = run(host, [programs.trapped, "hb"], output)
    assert status == 0, text
    assert "echo hello, high bandwidth" in text
    assert host.stored == b"hello, high bandwidth"
    # The unreadable-buffer `rep outsb` is counted but never reaches the host.
    assert engine.statistics.high_bandwidth_out == 2
    assert engine.statistics.high_bandwidth_in == 1


@pytest.mark.parametrize(
    ("mode", "expected", "seen"),
    [
        ("wrongmagic", 42, "SIGSEGV code=128"),  # its own handler sees the #GP
        ("wrongport", 42, "SIGSEGV code=128"),
        ("nullderef", 43, "SIGSEGV code=1 addr=(nil)"),
        ("xenprobe", 44, "SIGILL"),
        ("sigusr1", 128 + signal.SIGUSR1, ""),
    ],
)
def test_other_signals_reach_the_program(programs, host, output, mode, expected, seen):
    status, text, engine = run(host, [programs.trapped, mode], output)
    assert status == expected
    assert seen in text
    assert engine.statistics.backdoor_traps == 0
    assert engine.statistics.signals_delivered == 1


def test_threads(programs, host, output):
    status, text, engine = run(host, [programs.trapped, "threads"], output)
    assert (status, text) == (0, "threads done, 0 failures\n")
    assert engine.statistics.low_bandwidth == 8000
    assert engine.statistics.threads == 9


def test_fork_then_exec(programs, host, output):
    status, text, engine = run(host, [programs.trapped, "forkexec"], output)
    assert status == 0, text
    assert "fork+exec child status 0" in text
    # Parent, child before exec (patched code inherited), child after exec x2.
    assert engine.statistics.low_bandwidth == 4
    assert engine.statistics.processes == 2
    child = (host.owners - {engine._main_pid}).pop()
    assert host.exited.count(child) == 2  # at its exec, then at its exit


def test_vfork(programs, host, output):
    status, text, _engine = run(host, [programs.trapped, "vfork"], output)
    assert status == 0, text
    assert "vfork child status 0" in text


def test_exec_from_a_thread(programs, host, output):
    status, text, engine = run(host, [programs.trapped, "threadexec"], output)
    assert status == 0, text
    assert "GETVERSION eax=6" in text
    assert engine.statistics.execs == 2


def test_group_stop_and_continue(programs, host, output):
    status, text, _engine = run(host, [programs.trapped, "stop"], output)
    assert status == 0, text
    assert "continued" in text


@pytest.mark.parametrize("mode", ["int3", "auto"])
def test_library_loaded_later(programs, host, output, mode):
    # dlmain has no backdoor code; libbd.so, dlopen'ed, has: with int3
    # breakpoints its CPUID site is found via r_brk, with faulting it traps anyway.
    status, text, engine = run(host, [programs.dlmain, programs.bdlib], output, cpuid_mode=mode)
    assert (status, text) == (0, "bd_check 0\n")
    stats = engine.statistics
    assert stats.hypervisor_leaves == {0x40000000: 1}
    if mode == "int3":
        assert (stats.faulting_images, stats.cpuid, stats.loader_hits >= 2) == (0, 1, True)


def test_sandbox(programs, host, output):
    status, text, _engine = run(host, [programs.trapped, "sandbox"], output)
    assert "sandbox ok" in text, text
    assert status == 0
    assert "iopl(3) = -1 errno 1" in text


def test_exit_status_and_environment(programs, host, output, tmp_path: Path):
    status, _text, _engine = run(host, [programs.trapped, "exit", "7"])
    assert status == 7
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GREETING": "hi"}
    status, text, _engine = run(host, ["sh", "-c", 'echo "$GREETING"; pwd'], output, env=env, cwd=str(tmp_path))
    assert status == 0
    assert text == f"hi\n{tmp_path}\n"


def test_missing_program(host, tmp_path: Path):
    errors = tmp_path / "stderr"
    with errors.open("wb") as stderr:
        status, _text, _engine = run(host, [str(tmp_path / "nothing")], stderr=stderr.fileno())
    assert status == 127
    assert b"No such file" in errors.read_bytes()


def _running(executable: str) -> list[int]:
    """Host pids of live processes executing `executable`.  (The tree runs in
    a PID namespace of its own: the pids it prints are not the host's.)"""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/exe") != executable:
                continue
            with open(f"/proc/{entry}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def test_timeout_terminates_the_tree(programs, host, output):
    status, text, engine = run(host, [programs.trapped, "sleep"], output, timeout=0.5)
    assert status == 128 + signal.SIGTERM
    assert engine.timed_out
    assert text.startswith("child ")
    assert not _running(programs.trapped)  # the child ignored SIGTERM: killed when the program ended


def test_timeout_escalates_to_sigkill(programs, host, output):
    status, _text, engine = run(host, [programs.trapped, "sleep-ignoring-term"], output, timeout=0.3, grace=0.3)
    assert status == 128 + signal.SIGKILL
    assert engine.timed_out


def test_terminate_from_another_thread(programs, host, output):
    engine = TrapEngine(host, stdout=output[0])
    threading.Timer(0.3, engine.terminate).start()
    assert engine.run([programs.trapped, "sleep"]) == 128 + signal.SIGTERM
    assert not engine.timed_out


def test_unpinned(programs, host, output):
    status, _text, engine = run(host, [programs.trapped, "getversion"], output, pin_cpu=False)
    assert status == 0
    assert engine.statistics.low_bandwidth == 2


def test_refuses_a_real_vmware_host(monkeypatch, host):
    monkeypatch.setattr(engine_module, "hypervisor_signature", lambda: b"VMwareVMware")
    with pytest.raises(HostIsVMwareError):
        TrapEngine(host)


def test_host_may_decline(programs, output):
    class Declining:
        def low_bandwidth(self, owner, regs):
            return None

    status, text, _engine = run(Declining(), [programs.trapped, "getversion"], output)
    assert status == 128 + signal.SIGSEGV  # no handler installed: the program dies


def test_cpuid_fault_mode(programs, host, output):
    # Where the CPU lacks CPUID faulting the injected arch_prctl fails and
    # the engine falls back to int3, transparently.
    status, text, engine = run(host, [programs.trapped, "cpuid"], output, cpuid_mode="fault")
    assert status == 0
    assert "signature VMwareVMware max 0x40000010" in text
    assert_program_cpuids(engine.statistics)
    faulting = int(cpuid_faulting_available())
    assert (engine.statistics.faulting_images, engine.statistics.breakpoint_images) == (faulting, 1 - faulting)


def test_int3_mode_never_faults(programs, host, output):
    status, _text, engine = run(host, [programs.trapped, "cpuid"], output, cpuid_mode="int3")
    assert status == 0
    assert (engine.statistics.faulting_images, engine.statistics.breakpoint_images) == (0, 1)
    assert engine.statistics.cpuid == 5  # exactly the program's own


class InterruptedArming(TrapEngine):
    """Sends signals to the tracee at its exec stop, just before the engine
    single-steps it to arm CPUID faulting: the race `terminate` runs into
    (its SIGCONT makes every seized tracee report a PTRACE_EVENT_STOP first)."""

    def __init__(self, host, signals, **options):
        super().__init__(host, **options)
        self.signals = signals

    def _arm_cpuid_faulting(self, thread, deferred):
        for sig in self.signals:
            os.kill(thread.tid, sig)
        return super()._arm_cpuid_faulting(thread, deferred)


@pytest.mark.parametrize(
    ("signals", "expected"),
    [
        ((signal.SIGCONT,), 0),  # the notification stop used to leave the step trap queued: 133
        ((signal.SIGTERM, signal.SIGCONT), 128 + signal.SIGTERM),
        ((signal.SIGUSR1,), 128 + signal.SIGUSR1),  # held back during the step, then delivered
        ((signal.SIGUSR2, signal.SIGUSR1), 128 + signal.SIGUSR1),  # the lower number is dequeued first
        ((signal.SIGKILL,), 128 + signal.SIGKILL),
    ],
)
def test_signals_while_arming_never_leave_a_trap(programs, host, signals, expected):
    # "fault" mode steps the tracee at its first exec on every host (where
    # faulting is unavailable the injected arch_prctl fails, after the steps).
    engine = InterruptedArming(host, signals, cpuid_mode="fault", timeout=20)
    assert engine.run([programs.trapped, "getversion"]) == expected


def test_death_during_a_step_keeps_the_exit_status(programs, host, monkeypatch):
    # Killed while single-stepped: the step's own wait reaps the death, which must
    # still reach the loop (it used to be lost: "the program's exit status was lost").
    from twisted_vmtools.vmx.trap import ptrace

    step = ptrace.singlestep

    def step_then_kill(tid):
        step(tid)
        os.kill(tid, signal.SIGKILL)

    monkeypatch.setattr(ptrace, "singlestep", step_then_kill)
    engine = TrapEngine(host, cpuid_mode="fault", timeout=20)
    assert engine.run([programs.trapped, "getversion"]) == 128 + signal.SIGKILL


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["int3", "fault", "auto"])
def test_terminate_at_once_ends_by_sigterm_every_time(programs, host, mode):
    # `vmtools-sim run --timeout 0`: SIGTERM and SIGCONT land while the
    # engine is still setting up the program, stepping it or not.
    for _ in range(20):
        engine = TrapEngine(host, timeout=0, cpuid_mode=mode)
        assert engine.run([programs.trapped, "sleep"]) == 128 + signal.SIGTERM


TRACER = """
import sys
from conftest import FakeHost
from twisted_vmtools.vmx.trap.engine import TrapEngine
TrapEngine(FakeHost()).run(sys.argv[1:])
"""


def test_the_tree_dies_with_its_tracer(programs, tmp_path):
    # PTRACE_O_EXITKILL (and PDEATHSIG): SIGKILL the tracer mid-run and
    # neither the program nor its (SIGTERM-ignoring) child survives.
    tracer = subprocess.Popen(
        [sys.executable, "-c", TRACER, programs.trapped, "sleep"],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parent,
    )
    assert tracer.stdout is not None
    assert tracer.stdout.readline().startswith(b"child ")
    assert len(_running(programs.trapped)) == 2  # the program and its child
    tracer.kill()
    tracer.wait()
    deadline = time.monotonic() + 5
    while _running(programs.trapped) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(programs.trapped)
