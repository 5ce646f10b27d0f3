"""The backdoor channel: RPCI and a polled TCLO over the message channel.

Each message-channel operation is a burst of backdoor calls that run
synchronously (microseconds each natively), driven by the state machines in
`codecs.message` through an injected executor: the C extension for real,
an in-memory `BackdoorHost` in tests and benchmarks.

TCLO is polled as vmtoolsd polls it: send the previous reply (or an empty
message, which is how the VMX learns the guest is alive), then receive.  A
command is followed by an immediate poll; an empty poll backs off
10, 20, 40, 80, 100 ms; an error waits 5 s and reopens the channel.  While
the handler's Deferred is pending nothing is polled, so the VMX never has
two commands out.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

from automat import MethodicalMachine
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..backdoor_interface import IBackdoorHost
from ..codecs.message import (
    PROTO_RPCI,
    PROTO_TCLO,
    Backdoor,
    BackdoorCall,
    BackdoorOp,
    BackdoorResult,
    GuestChannel,
    run_steps,
)
from ..codecs.registers import BDOOR_FLAGS_HB, BDOOR_FLAGS_WRITE, MASK64, Registers
from ..codecs.tclo import ERROR_PREFIX
from .detect import BackdoorInterface
from .interfaces import ChannelError, IGuestChannel, ITCLOHandler

T = TypeVar("T")

POLL_DELAYS = (0.01, 0.02, 0.04, 0.08, 0.1)  # after 1, 2, 3, 4, 5+ empty polls in a row
ERROR_DELAY = 5.0
HANDLER_FAILED = ERROR_PREFIX + b"internal error"

# DX low 16 on the hypercall interface: flags instead of a port.
_HYPERCALL_FLAGS = {
    BackdoorOp.LOW_BANDWIDTH: 0,
    BackdoorOp.HB_OUT: BDOOR_FLAGS_HB | BDOOR_FLAGS_WRITE,
    BackdoorOp.HB_IN: BDOOR_FLAGS_HB,
}


def hypercall_dx(call: BackdoorCall) -> int:
    """DX for ``call`` on vmcall/vmmcall: the channel id stays, the port becomes flags."""
    return (call.regs.dx & ~0xFFFF & MASK64) | _HYPERCALL_FLAGS[call.op]


def hardware_executor(interface: BackdoorInterface) -> Backdoor:
    """An executor running the real instructions (C extension) through ``interface``.

    The extension itself refuses unless CPUID says VMware, so a mistake here
    raises OSError rather than executing anything.
    """
    from .. import _backdoor

    mode = {
        BackdoorInterface.PORT: _backdoor.MODE_PORT,
        BackdoorInterface.VMCALL: _backdoor.MODE_VMCALL,
        BackdoorInterface.VMMCALL: _backdoor.MODE_VMMCALL,
    }[interface]
    hypercall = interface is not BackdoorInterface.PORT

    def execute(call: BackdoorCall) -> BackdoorResult:
        r = call.regs
        dx = hypercall_dx(call) if hypercall else r.dx
        if call.op is BackdoorOp.LOW_BANDWIDTH:
            ax, bx, cx, dx, si, di = _backdoor.lb(r.ax, r.bx, r.cx, dx, r.si, r.di, mode)
            return BackdoorResult(Registers(ax, bx, cx, dx, si, di, r.bp))
        if call.op is BackdoorOp.HB_OUT:
            return BackdoorResult(Registers(*_backdoor.hb_out(r.ax, r.bx, dx, r.di, r.bp, call.data, mode)))
        regs, data = _backdoor.hb_in(r.ax, r.bx, dx, r.si, r.bp, r.cx, mode)
        return BackdoorResult(Registers(*regs), data)

    return execute


def host_executor(host: IBackdoorHost, owner: int = 0) -> Backdoor:
    """An executor calling a VMX in memory, as the trap engine would after a trap."""

    def execute(call: BackdoorCall) -> BackdoorResult:
        if call.op is BackdoorOp.LOW_BANDWIDTH:
            regs = host.low_bandwidth(owner, call.regs)
            if regs is None:
                # Real hardware would fault; the trap engine would deliver SIGSEGV.
                raise OSError("not a backdoor call")
            return BackdoorResult(regs)
        if call.op is BackdoorOp.HB_OUT:
            return BackdoorResult(host.high_bandwidth_out(owner, call.regs, call.data))
        regs, data = host.high_bandwidth_in(owner, call.regs)
        return BackdoorResult(regs, data)

    return execute


@implementer(IGuestChannel)
class BackdoorChannel:
    """`IGuestChannel` over the backdoor message channel (RPCI and polled TCLO)."""

    log = Logger()

    def __init__(
        self,
        executor: Backdoor,
        clock: IReactorTime,
        *,
        name: str = "backdoor",
        error_delay: float = ERROR_DELAY,
    ) -> None:
        self.name = name
        self._execute = executor
        self._clock = clock
        self._error_delay = error_delay
        self._rpci = GuestChannel(PROTO_RPCI)
        self._tclo = GuestChannel(PROTO_TCLO)
        self._handler: ITCLOHandler | None = None
        self._poll_call: IDelayedCall | None = None
        self._reply: bytes | None = None  # goes out with the next poll
        self._empty_polls = 0
        self._generation = 0  # one per start: which run of the loop a handler's answer belongs to
        self._stopped = False  # after stop, RPCI is refused too

    def _run(self, steps: Generator[BackdoorCall, BackdoorResult, T]) -> T:
        return run_steps(steps, self._execute)  # type: ignore[return-value]

    def _discard(self, channel: GuestChannel) -> GuestChannel:
        """Close ``channel`` if we can and return a fresh one; the old state is suspect."""
        if channel.is_open:
            try:
                self._run(channel.close())
            except Exception as error:
                self.log.debug("closing a failed channel also failed: {error}", error=error)
        return GuestChannel(channel.protocol)

    # -- RPCI

    def rpci(self, request: bytes) -> Deferred[bytes]:
        if self._stopped:
            return defer.fail(ChannelError("the backdoor channel is stopped"))
        try:
            return defer.succeed(self._rpci_call(request))
        except ChannelError:
            return defer.fail()

    def _rpci_call(self, request: bytes) -> bytes:
        # vmtoolsd keeps one RPCI channel open and restarts it once when a call fails.
        for attempt in (1, 2):
            try:
                if not self._rpci.is_open:
                    self._run(self._rpci.open())
                self._run(self._rpci.send(request))
                return self._run(self._rpci.receive())
            except Exception as error:
                self.log.warn("backdoor RPCI failed (attempt {attempt}): {error}", attempt=attempt, error=error)
                self._rpci = self._discard(self._rpci)
                failure = error
        raise ChannelError(f"backdoor RPCI failed: {failure}") from failure

    def close_rpci(self) -> Deferred[None]:
        """Close the RPCI channel now (freeing the VMX's slot); the next call reopens it."""
        self._rpci = self._discard(self._rpci)
        return defer.succeed(None)

    # -- TCLO: the poll loop, as a state machine
    #
    #   idle --start--> waiting --(poll: a command)--> handling --answered--> waiting
    #                   waiting --(poll: nothing or an error)--> waiting, later
    #   any --stop--> idle; a handler's answer after stop is dropped.

    _loop = MethodicalMachine()

    @_loop.state(initial=True)
    def _idle(self) -> None:
        "Not polling: before start, after stop."

    @_loop.state()
    def _waiting(self) -> None:
        "A poll is scheduled on the clock; the last reply (if any) goes out with it."

    @_loop.state()
    def _handling(self) -> None:
        "The handler has a command; no poll until it answers (the VMX waits too)."

    @_loop.input()
    def _begin(self, handler: ITCLOHandler) -> None:
        "start()"

    @_loop.input()
    def _received(self, command: bytes) -> None:
        "A poll brought a command."

    @_loop.input()
    def _quiet(self, delay: float) -> None:
        "A poll brought nothing, or failed: poll again after ``delay``."

    @_loop.input()
    def _answered(self, reply: bytes) -> None:
        "The handler answered the command."

    @_loop.input()
    def _end(self) -> None:
        "stop()"

    @_loop.output()
    def _take_handler(self, handler: ITCLOHandler) -> None:
        self._handler = handler
        self._generation += 1
        self._schedule(0)

    @_loop.output()
    def _dispatch(self, command: bytes) -> None:
        self._empty_polls = 0
        handler = self._handler
        assert handler is not None
        try:
            answer = handler.handle(command)
        except Exception:
            answer = defer.fail()
        answer.addErrback(self._handler_failed, command)
        answer.addCallback(self._deliver, self._generation)

    @_loop.output()
    def _poll_later(self, delay: float) -> None:
        self._schedule(delay)

    @_loop.output()
    def _reply_at_next_poll(self, reply: bytes) -> None:
        self._reply = reply
        self._schedule(0)

    @_loop.output()
    def _cancel_poll(self) -> None:
        if self._poll_call is not None and self._poll_call.active():
            self._poll_call.cancel()
        self._poll_call = None

    @_loop.output()
    def _drop_handler(self) -> None:
        self._handler = None
        self._reply = None

    _idle.upon(_begin, enter=_waiting, outputs=[_take_handler])
    _waiting.upon(_received, enter=_handling, outputs=[_dispatch])
    _waiting.upon(_quiet, enter=_waiting, outputs=[_poll_later])
    _handling.upon(_answered, enter=_waiting, outputs=[_reply_at_next_poll])
    _idle.upon(_answered, enter=_idle, outputs=[])  # the answer to a command from before stop
    _waiting.upon(_end, enter=_idle, outputs=[_cancel_poll, _drop_handler])
    _handling.upon(_end, enter=_idle, outputs=[_drop_handler])
    _idle.upon(_end, enter=_idle, outputs=[])

    def start(self, tclo: ITCLOHandler) -> None:
        if self._handler is not None:
            raise RuntimeError("the backdoor channel's TCLO loop is already running")
        self._stopped = False
        self._begin(tclo)

    def _schedule(self, delay: float) -> None:
        self._poll_call = self._clock.callLater(delay, self._poll)

    def _poll(self) -> None:
        self._poll_call = None
        reply, self._reply = self._reply, None
        try:
            if not self._tclo.is_open:
                self._run(self._tclo.open())
            # The reply goes out once; if this fails it is lost, as with vmtoolsd.
            self._run(self._tclo.send(reply or b""))
            command = self._run(self._tclo.receive())
        except Exception as error:
            self.log.warn(
                "backdoor TCLO poll failed, retrying in {delay} s: {error}", delay=self._error_delay, error=error
            )
            self._tclo = self._discard(self._tclo)
            self._empty_polls = 0
            self._quiet(self._error_delay)
            return
        if command:
            self._received(command)
            return
        delay = POLL_DELAYS[min(self._empty_polls, len(POLL_DELAYS) - 1)]
        self._empty_polls += 1
        self._quiet(delay)

    def _handler_failed(self, failure: Failure, command: bytes) -> bytes:
        self.log.failure("TCLO handler failed on {command!r}", failure, command=command[:64])
        return HANDLER_FAILED

    def _deliver(self, reply: bytes, generation: int) -> None:
        # A loop stopped and started again must not take a late reply to a command of
        # its previous run for the answer to a new one.
        if generation == self._generation:
            self._answered(reply)

    @property
    def polling(self) -> bool:
        """True while a poll is scheduled (False while a handler is busy, or stopped)."""
        return self._poll_call is not None

    def stop(self) -> Deferred[None]:
        self._stopped = True
        self._end()
        self._tclo = self._discard(self._tclo)
        self._rpci = self._discard(self._rpci)
        return defer.succeed(None)
