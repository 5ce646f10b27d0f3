"""The simulated VMX's backdoor as the trap engine's threads see it.

The trap engine calls its `IBackdoorHost` from a tracer thread, with the
traced program stopped on the faulting instruction.  The register-level work
(`BackdoorHost`, `HostChannels`: cookies, 4-byte chunks, sizes) is pure and
runs right there, under a lock; only what touches the VMX model (whose
Deferreds and queues belong to the reactor) crosses to the reactor thread.
Of those crossings only `next_message` and opening a channel must wait for
an answer; the others are queued with `callFromThread`, which keeps their
order, so a reply computed from a queued `message_received` is in place
before the `next_message` that fetches it.  One RPCI round trip with
high-bandwidth transfers thus waits on the reactor once, not five times.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet.task import deferLater
from twisted.internet.threads import blockingCallFromThread

from ..codecs.message import PROTO_TCLO, ChannelEndpoint
from ..codecs.registers import Registers
from .backdoor_host import BackdoorHost
from .endpoints import backdoor_endpoints
from .model import VMX


class ReactorEndpoint:
    """A `ChannelEndpoint` living in the reactor, called from a tracer thread."""

    def __init__(self, reactor: Any, endpoint: ChannelEndpoint) -> None:
        self._reactor = reactor
        self._endpoint = endpoint

    def message_received(self, data: bytes) -> None:
        self._reactor.callFromThread(self._endpoint.message_received, data)

    def next_message(self) -> bytes | None:
        return blockingCallFromThread(self._reactor, self._endpoint.next_message)  # type: ignore[no-any-return]

    def message_delivered(self, data: bytes) -> None:
        self._reactor.callFromThread(self._endpoint.message_delivered, data)

    def message_refused(self, data: bytes) -> None:
        self._reactor.callFromThread(self._endpoint.message_refused, data)

    def closed(self) -> None:
        self._reactor.callFromThread(self._endpoint.closed)


class TrappedBackdoorHost:
    """An `IBackdoorHost` for tracer threads over a VMX that lives in the reactor.

    ``host`` is the register-level `BackdoorHost` (its ``counts`` say how many
    instructions of each kind were emulated).  One lock serialises the tracer
    threads of all the programs trapped against this VMX.
    """

    def __init__(self, reactor: Any, vmx: VMX, *, high_bandwidth: bool = True) -> None:
        make_endpoint = backdoor_endpoints(vmx)

        def endpoints(protocol: int, owner: int) -> ChannelEndpoint | None:
            endpoint = blockingCallFromThread(reactor, make_endpoint, protocol, owner)
            return None if endpoint is None else ReactorEndpoint(reactor, endpoint)

        self.host = BackdoorHost(endpoints, high_bandwidth=high_bandwidth)
        self._lock = threading.Lock()

    def low_bandwidth(self, owner: int, regs: Registers) -> Registers | None:
        with self._lock:
            return self.host.low_bandwidth(owner, regs)

    def high_bandwidth_out(self, owner: int, regs: Registers, data: bytes) -> Registers:
        with self._lock:
            return self.host.high_bandwidth_out(owner, regs, data)

    def high_bandwidth_in(self, owner: int, regs: Registers) -> tuple[Registers, bytes]:
        with self._lock:
            return self.host.high_bandwidth_in(owner, regs)

    def owner_exited(self, owner: int) -> None:
        with self._lock:
            self.host.owner_exited(owner)


_shared_cpu: int | None = None


def shared_cpu() -> int:
    """One CPU for the reactor thread, the tracer and the traced programs.

    Every wait on the VMX goes tracee → tracer thread → reactor thread and
    back; on one CPU those hand-offs are plain context switches, across CPUs
    they are wake-ups (measured: 1.8× more TCLO round trips per second when
    all three share a CPU).  Pins the calling (reactor) thread, once.
    """
    global _shared_cpu
    if _shared_cpu is None:
        _shared_cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {_shared_cpu})  # this thread only
    return _shared_cpu


def spawn_guest(reactor: Any, vmx: VMX, argv: list[str], *, high_bandwidth: bool = True, **options: Any) -> Any:
    """Start ``argv`` under the trap engine as a guest of ``vmx`` (a `TrappedProgram`).

    Without ``high_bandwidth`` every message moves in 4-byte low-bandwidth
    calls, as on a VMX that does not offer ``rep insb/outsb`` transfers.
    """
    from .trap import spawn_trapped

    options.setdefault("pin_cpu", shared_cpu())
    return spawn_trapped(reactor, TrappedBackdoorHost(reactor, vmx, high_bandwidth=high_bandwidth), argv, **options)


def twistd_vmtools(*options: str, logfile: str = os.devnull, twistd_options: Sequence[str] = ()) -> list[str]:
    """The command line of ``twistd -n vmtools OPTIONS`` with this interpreter.

    No pid file, so runs may overlap; ``twistd_options`` go before the plugin
    name (e.g. ``--profile=PATH --profiler=cprofile --savestats``).
    """
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
            "--logfile", logfile, *twistd_options, "vmtools", *options]


async def until_running(reactor: Any, vmx: VMX, timeout: float = 30.0) -> None:
    """Wait until ``vmx`` sees tools running (they answered reset and Capabilities_Register)."""
    deadline = reactor.seconds() + timeout
    while not vmx.running:
        if reactor.seconds() > deadline:
            raise TimeoutError(f"the guest tools did not answer the VMX within {timeout:g} s")
        await deferLater(reactor, 0.02, lambda: None)


def tclo_owner(program: Any) -> int:
    """The pid of the process polling TCLO in a `spawn_guest` program: the daemon, not a helper it forked."""
    channels = program.engine.host.host.channels.channels.values()
    owners = {channel.owner for channel in channels if channel.protocol == PROTO_TCLO}
    if len(owners) != 1:
        raise RuntimeError(f"expected one process polling TCLO, found {sorted(owners)}")
    return int(owners.pop())


def process_cpu_seconds(pid: int) -> float:
    """User + system time of all of process ``pid``'s threads, to the nanosecond.

    /proc's tick counts (psutil's cpu_times) move in 10 ms steps, too coarse
    for a few hundred TCLO round trips; the process's CPU-time clock (what
    clock_getcpuclockid(3) returns: CPUCLOCK_SCHED of the whole process) is exact.
    """
    return time.clock_gettime(((~pid) << 3) | 2)
