"""The backdoor channel: RPCI and a polled TCLO over the message channel.

Each message-channel operation is a burst of backdoor calls that run
synchronously (microseconds each natively), driven by the state machines in
`codecs.message` through an injected executor: the C extension for real,
an in-memory `BackdoorHost` in tests and benchmarks.

TCLO is polled as vmtoolsd polls it: send the previous reply (or an empty
message, which is how the VMX learns the guest is alive), then receive.  A
command is followed by an immediate poll (in the same reactor turn when the
handler answers at once); an empty poll backs off 10, 20, 40, 80, 100 ms
(vmtoolsd's pacing), and after two idle seconds to 200 ms; an error waits 5 s
and reopens the channel.  While
the handler's Deferred is pending nothing is polled, so the VMX never has
two commands out.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Protocol, TypeVar

from automat import TypeMachineBuilder
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
    DirectBackdoor,
    ExchangeStopped,
    ExchangeWords,
    GuestChannel,
    exchange_by_calls,
    run_steps,
)
from ..codecs.registers import BDOOR_FLAGS_HB, BDOOR_FLAGS_WRITE, MASK64, Registers
from ..codecs.tclo import ERROR_PREFIX
from .detect import BackdoorInterface
from .interfaces import ChannelError, IGuestChannel, ITCLOHandler

T = TypeVar("T")

# After 1, 2, 3, 4 empty polls in a row: vmtoolsd's pacing (RpcIn's delay starts at 10 ms, doubles,
# and stops at 100 ms), then 100 ms for two seconds; after that, while nothing comes, 200 ms.  An
# idle poll costs this Python process about twice what it costs vmtoolsd (a reactor turn from
# sleep, cache-cold), so a long-idle guest polls half as often: the VMX hears from it 5 times a
# second rather than 10 (a vsock guest's heartbeat is once a second), and a command arriving
# after a quiet spell waits up to 200 ms instead of 100 before it is fetched; from then on the
# pace is vmtoolsd's again.
POLL_DELAYS = (0.01, 0.02, 0.04, 0.08) + (0.1,) * 20 + (0.2,)
_LAST_DELAY = len(POLL_DELAYS) - 1
COMMANDS_PER_TURN = 8  # commands answered at once and polled after within one reactor turn
ERROR_DELAY = 5.0
HANDLER_FAILED = ERROR_PREFIX + b"internal error"

LOW_BANDWIDTH, HB_OUT = BackdoorOp.LOW_BANDWIDTH, BackdoorOp.HB_OUT

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

    On the I/O port it is also a `DirectBackdoor` (`PortBackdoor`), which the
    channel's hot paths call without building a `BackdoorCall` per instruction.
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
    lb, hb_out, hb_in = _backdoor.lb, _backdoor.hb_out, _backdoor.hb_in
    new = tuple.__new__  # named tuples without their Python-level __new__, as in codecs.message

    def execute(call: BackdoorCall) -> BackdoorResult:
        op, r, data = call
        ax, bx, cx, dx, si, di, bp = r
        if hypercall:
            dx = hypercall_dx(call)
        if op is LOW_BANDWIDTH:
            return new(BackdoorResult, (new(Registers, (*lb(ax, bx, cx, dx, si, di, mode), bp)), b""))
        if op is HB_OUT:
            return new(BackdoorResult, (new(Registers, hb_out(ax, bx, dx, di, bp, data, mode)), b""))
        regs, data = hb_in(ax, bx, dx, si, bp, cx, mode)
        return new(BackdoorResult, (new(Registers, regs), data))

    if hypercall:
        return execute  # DX carries flags there: the direct calls take the port's registers only
    return PortBackdoor(execute, _backdoor)


class PortBackdoor:
    """The backdoor I/O port through the C extension: an executor, and a `DirectBackdoor`."""

    def __init__(self, execute: Backdoor, extension: Any) -> None:
        self._execute = execute
        # The extension's functions themselves (their mode defaults to the port): no Python in between.
        self.lb = extension.lb
        self.hb_out = extension.hb_out
        self.hb_in = extension.hb_in
        # A whole exchange in C, back to back: under the trap engine no Python runs between its
        # traps, so the tracer is not left idle (and halting) between them, as with vmtoolsd.
        # An extension built before it had that call gets the same calls made from Python.
        self.exchange = getattr(extension, "exchange", None) or self._exchange_by_calls

    def _exchange_by_calls(self, payload: bytes, words: ExchangeWords, /) -> bytes | ExchangeStopped:
        return exchange_by_calls(self, payload, words)

    def __call__(self, call: BackdoorCall) -> BackdoorResult:
        return self._execute(call)


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
        # The direct calls when the executor makes them (the I/O port, DirectCalls in tests).
        self._direct = executor if isinstance(executor, DirectBackdoor) else None
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
        self._in_poll = False  # a poll is under way: an immediate answer needs no new timer
        self._poll_again = False
        self._immediate: tuple[bytes, int] | None = None  # a handler's answer given at once, and its run
        self._loop = PollLoop(self)

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
                if self._direct is not None:
                    return self._rpci.exchange_direct(request, self._direct)
                return self._run(self._rpci.exchange(request))
            except Exception as error:
                self.log.warn("backdoor RPCI failed (attempt {attempt}): {error}", attempt=attempt, error=error)
                self._rpci = self._discard(self._rpci)
                failure = error
        raise ChannelError(f"backdoor RPCI failed: {failure}") from failure

    def close_rpci(self) -> Deferred[None]:
        """Close the RPCI channel now (freeing the VMX's slot); the next call reopens it."""
        self._rpci = self._discard(self._rpci)
        return defer.succeed(None)

    # -- TCLO: the poll loop, the state machine `PollLoop` (below the class) drives

    def start(self, tclo: ITCLOHandler) -> None:
        if self._handler is not None:
            raise RuntimeError("the backdoor channel's TCLO loop is already running")
        self._stopped = False
        self._loop.begin(tclo)

    def _take_handler(self, handler: ITCLOHandler) -> None:
        self._handler = handler
        self._generation += 1
        self._schedule(0)

    def _dispatch(self, command: bytes) -> None:
        self._empty_polls = 0
        handler = self._handler
        assert handler is not None
        try:
            answer = handler.handle(command)
        except Exception:
            answer = defer.fail()
        generation = self._generation
        if answer.called and isinstance(answer.result, bytes):
            # Answered at once (most commands): the poll delivers it once this transition is
            # over, rather than through the Deferred's callbacks and a postponed machine input.
            self._immediate = (answer.result, generation)
            return
        answer.addCallbacks(
            self._deliver, self._handler_failed, callbackArgs=(generation,), errbackArgs=(command, generation)
        )

    def _reply_at_next_poll(self, reply: bytes) -> None:
        self._reply = reply
        if self._in_poll:
            # Answered at once: the poll under way sends it now, without a reactor turn
            # in between (vmtoolsd goes round its main loop; the VMX sees no difference).
            self._poll_again = True
        else:
            self._schedule(0)

    def _cancel_poll(self) -> None:
        if self._poll_call is not None and self._poll_call.active():
            self._poll_call.cancel()
        self._poll_call = None

    def _drop_handler(self) -> None:
        self._handler = None
        self._reply = None
        self._poll_again = False

    def _schedule(self, delay: float) -> None:
        self._poll_call = self._clock.callLater(delay, self._poll)

    def _poll(self) -> None:
        self._poll_call = None
        self._in_poll = True
        try:
            for _ in range(COMMANDS_PER_TURN):
                self._poll_again = False
                self._poll_once()
                if not self._poll_again:
                    return
            self._poll_again = False
        finally:
            self._in_poll = False
        self._schedule(0)  # a busy VMX: let the reactor run before the next one

    def _poll_once(self) -> None:
        reply, self._reply = self._reply, None
        tclo = self._tclo
        try:
            if tclo.id is None:
                self._run(tclo.open())
            # The reply goes out once; if this fails it is lost, as with vmtoolsd.
            if self._direct is not None:
                command = tclo.exchange_direct(reply or b"", self._direct)
            else:
                command = self._run(tclo.exchange(reply or b""))
        except Exception as error:
            self.log.warn(
                "backdoor TCLO poll failed, retrying in {delay} s: {error}", delay=self._error_delay, error=error
            )
            self._tclo = self._discard(self._tclo)
            self._empty_polls = 0
            self._loop.quiet(self._error_delay)
            return
        if command:
            self._loop.received(command)
            if self._immediate is not None:
                (reply, generation), self._immediate = self._immediate, None
                self._deliver(reply, generation)
            return
        delay = POLL_DELAYS[min(self._empty_polls, _LAST_DELAY)]
        self._empty_polls += 1
        self._loop.quiet(delay)

    def _handler_failed(self, failure: Failure, command: bytes, generation: int) -> None:
        self.log.failure("TCLO handler failed on {command!r}", failure, command=command[:64])
        self._deliver(HANDLER_FAILED, generation)

    def _deliver(self, reply: bytes, generation: int) -> None:
        # A loop stopped and started again must not take a late reply to a command of
        # its previous run for the answer to a new one.
        if generation == self._generation:
            self._loop.answered(reply)

    @property
    def polling(self) -> bool:
        """True while a poll is scheduled (False while a handler is busy, or stopped)."""
        return self._poll_call is not None

    def stop(self) -> Deferred[None]:
        self._stopped = True
        # At once, not only by the machine: called from a handler, stop's input waits until the
        # command's transition is over, and a start right after it must find the loop stopped.
        self._drop_handler()
        self._loop.end()
        self._tclo = self._discard(self._tclo)
        self._rpci = self._discard(self._rpci)
        return defer.succeed(None)


class PollInputs(Protocol):
    """What happens to the TCLO poll loop."""

    def begin(self, handler: ITCLOHandler) -> None:
        "start()"

    def received(self, command: bytes) -> None:
        "A poll brought a command."

    def quiet(self, delay: float) -> None:
        "A poll brought nothing, or failed: poll again after ``delay``."

    def answered(self, reply: bytes) -> None:
        "The handler answered the command."

    def end(self) -> None:
        "stop()"


# The poll loop as a state machine:
#
#   idle --begin--> waiting --received--> handling --answered--> waiting
#                   waiting --quiet--> waiting (a poll scheduled after the delay)
#   any --end--> idle; an answer after end (to a command from before) is dropped.
#
# A TypeMachine rather than a MethodicalMachine: every poll feeds it an input, and a
# MethodicalMachine input costs ~8 µs (it copies its function on each access) against
# ~1 µs, which showed in the guest's CPU per idle poll and per TCLO command.
_builder = TypeMachineBuilder(PollInputs, BackdoorChannel)
_idle = _builder.state("idle")  # not polling: before start, after stop
_waiting = _builder.state("waiting")  # a poll is scheduled; the last reply (if any) goes out with it
_handling = _builder.state("handling")  # the handler has a command; no poll until it answers (the VMX waits too)


# Automat finds a transition by a linear scan of a set (its order follows hashes, not
# this file): few transitions keep that scan short.
@_waiting.upon(PollInputs.quiet).loop()
def _poll_later(loop: PollInputs, channel: BackdoorChannel, delay: float) -> None:
    channel._schedule(delay)


@_waiting.upon(PollInputs.received).to(_handling)
def _handle(loop: PollInputs, channel: BackdoorChannel, command: bytes) -> None:
    channel._dispatch(command)


@_handling.upon(PollInputs.answered).to(_waiting)
def _reply(loop: PollInputs, channel: BackdoorChannel, reply: bytes) -> None:
    channel._reply_at_next_poll(reply)


@_idle.upon(PollInputs.begin).to(_waiting)
def _start_polling(loop: PollInputs, channel: BackdoorChannel, handler: ITCLOHandler) -> None:
    channel._take_handler(handler)


_idle.upon(PollInputs.answered).loop().returns(None)  # the answer to a command from before stop


@_waiting.upon(PollInputs.end).to(_idle)
def _stop_waiting(loop: PollInputs, channel: BackdoorChannel) -> None:
    channel._cancel_poll()
    channel._drop_handler()


@_handling.upon(PollInputs.end).to(_idle)
def _stop_handling(loop: PollInputs, channel: BackdoorChannel) -> None:
    channel._drop_handler()


_idle.upon(PollInputs.end).loop().returns(None)
PollLoop = _builder.build()
