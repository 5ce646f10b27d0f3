"""The helpers benchmarks use around a trapped guest: its TCLO owner, its CPU clock, its command line."""

from __future__ import annotations

import os
import sys
import time
from types import SimpleNamespace

import pytest
from twisted.internet.task import Clock

from twisted_vmtools.codecs.message import FLAG_COOKIE, PROTO_RPCI, PROTO_TCLO, MessageType
from twisted_vmtools.codecs.registers import BDOOR_MAGIC, BDOOR_PORT, CMD_MESSAGE, Registers, pack16
from twisted_vmtools.vmx.backdoor_host import BackdoorHost
from twisted_vmtools.vmx.endpoints import backdoor_endpoints
from twisted_vmtools.vmx.model import VMX
from twisted_vmtools.vmx.trapped import process_cpu_seconds, tclo_owner, twistd_vmtools


def open_channel(host: BackdoorHost, owner: int, protocol: int) -> None:
    regs = Registers(ax=BDOOR_MAGIC, bx=protocol | FLAG_COOKIE, cx=pack16(MessageType.OPEN, CMD_MESSAGE),
                     dx=BDOOR_PORT)
    assert host.low_bandwidth(owner, regs) is not None


def program_with(host: BackdoorHost) -> SimpleNamespace:
    # What tclo_owner reads of a TrappedProgram: engine.host (the TrappedBackdoorHost).host.
    return SimpleNamespace(engine=SimpleNamespace(host=SimpleNamespace(host=host)))


def test_tclo_owner_is_the_process_that_polls_tclo_not_one_that_only_sends_rpci() -> None:
    host = BackdoorHost(backdoor_endpoints(VMX(Clock())))
    open_channel(host, 4001, PROTO_RPCI)  # a forked helper's RPCI
    open_channel(host, 4000, PROTO_TCLO)
    open_channel(host, 4000, PROTO_RPCI)
    assert tclo_owner(program_with(host)) == 4000


def test_tclo_owner_refuses_to_guess() -> None:
    host = BackdoorHost(backdoor_endpoints(VMX(Clock())))
    with pytest.raises(RuntimeError, match="found \\[\\]"):
        tclo_owner(program_with(host))
    open_channel(host, 1, PROTO_TCLO)
    open_channel(host, 2, PROTO_TCLO)
    with pytest.raises(RuntimeError, match="found \\[1, 2\\]"):
        tclo_owner(program_with(host))


def test_process_cpu_seconds_is_the_process_cpu_clock() -> None:
    # Our own process: the same clock as time.process_time(), read through the pid.
    before = time.process_time()
    sum(range(200_000))
    ours = process_cpu_seconds(os.getpid())
    after = time.process_time()
    assert before <= ours <= after


def test_twistd_vmtools_runs_this_interpreter_without_a_pid_file() -> None:
    argv = twistd_vmtools("--transport", "backdoor", twistd_options=["--profiler=cprofile"])
    assert argv[0] == sys.executable
    assert "--pidfile=" in argv
    assert argv.index("--profiler=cprofile") < argv.index("vmtools") < argv.index("--transport")
    assert argv[-2:] == ["--transport", "backdoor"]
