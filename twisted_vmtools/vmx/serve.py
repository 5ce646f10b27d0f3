"""`vmtools-sim serve` and `vmtools-sim run`: a VMX on a socket, optionally with a trapped guest."""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..exit_codes import UsageError
from .model import VMX
from .run_directory import run_directory
from .simulator import SimulatorService
from .trapped import spawn_guest

log = Logger()


async def run_program(
    reactor: object, vmx: VMX, program: list[str], *, high_bandwidth: bool = True, timeout: float | None = None
) -> int:
    """Run ``program`` under the trap engine as a guest of ``vmx``; its exit code."""
    if not program:
        raise UsageError("give the program to run after --: run -- PROGRAM [ARGS...]")
    trapped = spawn_guest(reactor, vmx, program, high_bandwidth=high_bandwidth, timeout=timeout)
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
    timeout: float | None = None,
    socket_group: int | None = None,
    allow_remote: bool = False,
    on_listening: Callable[[], None] | None = None,
) -> int:
    """Serve at ``where`` until stopped, or with ``trap`` until the program ends (its exit code).

    `CannotListen` at once if ``where`` cannot be listened on; ``on_listening``
    runs once it is (the command line begins its log there: a failure prints
    one sentence, not a log).
    """
    vmx = VMX(reactor, ping_interval=ping_interval)
    simulator = SimulatorService(
        reactor, where, vmx=vmx, trace=trace, socket_group=socket_group, allow_remote=allow_remote
    )
    simulator.startService()
    if on_listening is not None:
        on_listening()
    try:
        if trap is not None:
            code = await run_program(reactor, vmx, trap, high_bandwidth=high_bandwidth, timeout=timeout)
            log.info("trapped guest exited with {code}", code=code)
            return code
        forever: Deferred[int] = Deferred()
        return await forever
    finally:
        await simulator.stopService()


async def run_trapped(
    reactor: IReactorTime,
    program: list[str],
    *,
    trace: bool = False,
    high_bandwidth: bool = True,
    timeout: float | None = None,
) -> int:
    """`vmtools-sim run`: a private VMX (socket in a temporary directory) for one program.

    Directories left by runs that were killed are removed first (see `run_directory`).
    """
    with run_directory() as directory:
        return await serve(
            reactor,
            os.path.join(directory, "vmx.sock"),
            trace=trace,
            trap=program,
            high_bandwidth=high_bandwidth,
            timeout=timeout,
        )
