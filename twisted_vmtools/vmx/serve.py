"""`vmtools-sim serve` and `vmtools-sim run`: a VMX on a socket, optionally with a trapped guest."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger

from ..codecs.backdoor import Registers
from .backdoor import BackdoorHost
from .endpoints import backdoor_endpoints
from .model import VMX
from .simulator import SimulatorService

log = Logger()


class ReactorBackdoorHost:
    """An `IBackdoorHost` for the trap engine's thread: every call runs in the reactor thread.

    The VMX's state (TCLO queue, Deferreds) belongs to the reactor, and a
    trapped instruction must block until the VMX has answered, which is
    exactly `blockingCallFromThread`.
    """

    def __init__(self, reactor: object, host: BackdoorHost) -> None:
        self._reactor = reactor
        self.host = host

    def low_bandwidth(self, owner: int, regs: Registers) -> Registers | None:
        return blockingCallFromThread(self._reactor, self.host.low_bandwidth, owner, regs)  # type: ignore[arg-type]

    def high_bandwidth_out(self, owner: int, regs: Registers, data: bytes) -> Registers:
        return blockingCallFromThread(  # type: ignore[no-any-return]
            self._reactor, self.host.high_bandwidth_out, owner, regs, data  # type: ignore[arg-type]
        )

    def high_bandwidth_in(self, owner: int, regs: Registers) -> tuple[Registers, bytes]:
        return blockingCallFromThread(  # type: ignore[no-any-return]
            self._reactor, self.host.high_bandwidth_in, owner, regs  # type: ignore[arg-type]
        )

    def owner_exited(self, owner: int) -> None:
        blockingCallFromThread(self._reactor, self.host.owner_exited, owner)  # type: ignore[arg-type]


def trapped_host(reactor: object, vmx: VMX, *, high_bandwidth: bool = True) -> ReactorBackdoorHost:
    """The backdoor of ``vmx`` for the trap engine; without ``high_bandwidth`` every
    message moves in 4-byte low-bandwidth calls, as on a VMX that does not offer HB."""
    host = BackdoorHost(backdoor_endpoints(vmx), high_bandwidth=high_bandwidth)  # type: ignore[arg-type]
    return ReactorBackdoorHost(reactor, host)


_shared_cpu: int | None = None


def shared_cpu() -> int:
    """One CPU for the reactor thread, the tracer and the traced programs.

    Every trapped instruction goes tracee → tracer thread → reactor thread and
    back; on one CPU those hand-offs are plain context switches, across CPUs
    they are wake-ups (measured: 1.8× more TCLO round trips per second when
    all three share a CPU).  Pins the calling (reactor) thread, once.
    """
    global _shared_cpu
    if _shared_cpu is None:
        _shared_cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {_shared_cpu})  # this thread only
    return _shared_cpu


def spawn_guest(reactor: object, vmx: VMX, argv: list[str], *, high_bandwidth: bool = True, **options: Any) -> Any:
    """Start ``argv`` under the trap engine as a guest of ``vmx`` (a `TrappedProgram`)."""
    from .trap import spawn_trapped

    host = trapped_host(reactor, vmx, high_bandwidth=high_bandwidth)
    options.setdefault("pin_cpu", shared_cpu())
    return spawn_trapped(reactor, host, argv, **options)


async def run_program(reactor: object, vmx: VMX, program: list[str], *, high_bandwidth: bool = True) -> int:
    """Run ``program`` under the trap engine as a guest of ``vmx``; its exit code."""
    if not program:
        raise SystemExit("vmtools-sim: give the program to run after --")
    trapped = spawn_guest(reactor, vmx, program, high_bandwidth=high_bandwidth)
    try:
        return int(await trapped.ended)
    finally:
        trapped.terminate()


async def serve(
    reactor: IReactorTime,
    where: str,
    *,
    trace: bool = False,
    ping_interval: float = 5.0,
    trap: list[str] | None = None,
    high_bandwidth: bool = True,
) -> int:
    vmx = VMX(reactor, ping_interval=ping_interval)
    simulator = SimulatorService(reactor, where, vmx=vmx, trace=trace)
    simulator.startService()
    try:
        if trap is not None:
            code = await run_program(reactor, vmx, trap, high_bandwidth=high_bandwidth)
            log.info("trapped guest exited with {code}", code=code)
            return code
        forever: Deferred[int] = Deferred()
        return await forever
    finally:
        await simulator.stopService()


async def run_trapped(
    reactor: IReactorTime, program: list[str], *, trace: bool = False, high_bandwidth: bool = True
) -> int:
    """`vmtools-sim run`: a private VMX (socket in a temporary directory) for one program."""
    with tempfile.TemporaryDirectory(prefix="vmtools-sim-") as directory:
        return await serve(
            reactor, os.path.join(directory, "vmx.sock"), trace=trace, trap=program, high_bandwidth=high_bandwidth
        )
