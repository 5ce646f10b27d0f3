"""The VMX's TCLO queue: commands go to the guest one at a time (or a few, where a stream's guest
says it takes them), each with a Deferred."""

from __future__ import annotations

import math
import typing
from collections import deque
from dataclasses import dataclass, field

from automat import TypeMachineBuilder, pep614
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import Interface

from ..codecs.datamap import MAX_PAYLOAD

DEFAULT_TIMEOUT = 30.0
MAX_COMMAND = MAX_PAYLOAD  # the largest command a guest's stream decoder accepts
# The most commands the VMX keeps in flight on one channel, whatever its guest advertises:
# each may be a 520 KB HGFS packet held in both processes' buffers.
MAX_IN_FLIGHT = 8


class TCLORefused(ValueError):
    """A command no guest could act on, or a timeout no clock can keep: refused before queueing."""


class TCLOTimeout(Exception):
    """The guest did not answer a TCLO command in time."""


class GuestGone(Exception):
    """The guest's TCLO channel closed while a command was in flight."""


class NoGuest(GuestGone):
    """No guest's TCLO channel is connected: a command from outside would only wait out its timeout."""


class ITCLOPusher(Interface):
    """A channel the VMX pushes TCLO commands down (a guest's TCLO stream)."""

    def push(command: bytes) -> None:
        "Send ``command`` to the guest; its reply comes back through `TCLOQueue.reply`."

    def out_of_step() -> None:
        "The guest did not answer in time: a late reply could not be told from the next one's, so close."


@dataclass
class _Pending:
    command: bytes
    reply: Deferred[bytes]
    timeout: float
    timer: IDelayedCall | None = None

    def settle(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


@dataclass
class _Core:
    clock: IReactorTime
    queue: deque[_Pending] = field(default_factory=deque)
    pusher: ITCLOPusher | None = None
    # The commands delivered and not yet answered, oldest first (empty in "free"): a guest
    # answers in command order, so a reply is the oldest's.  `TCLOQueue` reads it to skip
    # the machine where nothing would change (a poll with nothing to take, `busy`): a
    # transition costs about a microsecond to look up, and polls come every 10-100 ms.
    in_flight: deque[_Pending] = field(default_factory=deque)
    # How many may be in flight: one, unless the pushed channel's guest said more.
    depth: int = 1
    log: Logger = field(default_factory=Logger)


class _Inputs(typing.Protocol):
    """What happens to the commands in flight (Automat's typed machines declare their inputs
    with a `typing.Protocol`; nothing outside this module provides it)."""

    def deliver(self, pending: _Pending) -> None:
        "``pending`` goes to the guest (pushed, or handed to a poll)."

    def put_back(self) -> None:
        "The guest refused delivery (an error ack on its poll; polls carry one command)."

    def reply(self) -> _Pending:
        "The guest answered the oldest command in flight (returned); others are still in flight."

    def reply_last(self) -> _Pending:
        "The guest answered the only command in flight (returned)."

    def give_up(self, pending: _Pending) -> tuple[list[_Pending], ITCLOPusher | None]:
        "``pending`` timed out or was cancelled: the others in flight (returned) are lost with the push channel."

    def abandon(self) -> list[_Pending]:
        "The commands in flight (returned) will never be answered: their channel closed."


def _machine() -> typing.Callable[[_Core], _Inputs]:
    #   free --deliver--> in flight --deliver (while fewer than depth) / reply (others left)--> in flight
    #   in flight --reply_last / put_back / give_up / abandon--> free
    #
    # The outputs only move commands about and return what to fire; `TCLOQueue` fires it
    # after the transition, so a caller's callbacks (which may `send`, or close a channel)
    # never run inside one.  An input in a state without a transition for it is a bug in
    # `TCLOQueue` (it checks ``core.in_flight`` first), and Automat raises NoTransition.
    builder = TypeMachineBuilder(_Inputs, _Core)
    free = builder.state("free")
    in_flight = builder.state("in flight")

    @pep614(free.upon(_Inputs.deliver).to(in_flight))
    @pep614(in_flight.upon(_Inputs.deliver).to(in_flight))
    def deliver(machine: _Inputs, core: _Core, pending: _Pending) -> None:
        core.in_flight.append(pending)

    @pep614(in_flight.upon(_Inputs.put_back).to(free))
    def requeue(machine: _Inputs, core: _Core) -> None:
        core.queue.appendleft(core.in_flight.popleft())

    @pep614(in_flight.upon(_Inputs.reply).to(in_flight))
    @pep614(in_flight.upon(_Inputs.reply_last).to(free))
    def settle(machine: _Inputs, core: _Core) -> _Pending:
        pending = core.in_flight.popleft()
        pending.settle()
        return pending

    @pep614(in_flight.upon(_Inputs.abandon).to(free))
    def settle_all(machine: _Inputs, core: _Core) -> list[_Pending]:
        lost = list(core.in_flight)
        core.in_flight.clear()
        for pending in lost:
            pending.settle()
        return lost

    @pep614(in_flight.upon(_Inputs.give_up).to(free))
    def drop(machine: _Inputs, core: _Core, pending: _Pending) -> tuple[list[_Pending], ITCLOPusher | None]:
        # On a polled channel a late reply finds nothing in flight and is dropped.  A pushed
        # stream cannot match a late reply to its command: it is out of step, so it is let
        # go, to start over (and the guest gets a fresh reset), and the commands sent after
        # this one on it are lost with it.
        lost = [other for other in settle_all(machine, core) if other is not pending]
        core.log.warn("TCLO command {command!r} abandoned", command=pending.command[:40])
        stuck, core.pusher = core.pusher, None
        core.depth = 1
        return lost, stuck

    return builder.build()


_build = _machine()


class TCLOQueue:
    """TCLO delivery, for guests that poll (backdoor) or are pushed to (streams).

    `send` queues a command and returns a Deferred firing with the guest's
    whole reply (``OK …``/``ERROR …``).  A push channel registers a `pusher`
    and gets each command as soon as the guest has room; a polling channel
    calls `take` on each poll.  One command is in flight at a time, or up to
    the number a pushed guest said it accepts (`allow`, at most
    `MAX_IN_FLIGHT`); replies come back in command order.  The next goes only
    after a reply (`reply`) or a timeout.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._core = _Core(clock)
        self._machine = _build(self._core)

    def send(self, command: bytes, timeout: float = DEFAULT_TIMEOUT) -> Deferred[bytes]:
        """Queue ``command``; `TCLORefused` (raised, not in the Deferred) if it cannot be sent."""
        check_command(command, timeout)
        pending = _Pending(command, Deferred(lambda _: self._give_up(pending, None)), timeout)
        # The timeout runs from queueing: a guest that never polls must not hang the caller.
        pending.timer = self._core.clock.callLater(timeout, self._expire, pending)
        self._core.queue.append(pending)
        self._push()
        return pending.reply

    @property
    def busy(self) -> bool:
        return bool(self._core.in_flight)

    @property
    def in_flight(self) -> int:
        """Commands sent and not yet answered."""
        return len(self._core.in_flight)

    @property
    def waiting(self) -> int:
        """Commands queued, not yet sent."""
        return len(self._core.queue)

    @property
    def depth(self) -> int:
        """How many commands may be in flight now."""
        return self._core.depth

    @property
    def pushed(self) -> bool:
        """A push channel (a guest's TCLO stream) is attached."""
        return self._core.pusher is not None

    def attach(self, pusher: ITCLOPusher) -> None:
        """A push channel connected: ``pusher.push(command)`` is called for each command.

        One guest, one channel: attaching while another is attached is a caller's bug
        (the listener refuses a second TCLO stream before it gets here).  A new channel
        carries one command at a time until its guest says otherwise (`allow`).
        """
        if self._core.pusher is not None and self._core.pusher is not pusher:
            raise RuntimeError("a TCLO channel is already attached")
        if self._core.pusher is None:
            self._core.depth = 1
        self._core.pusher = pusher
        self._push()

    def allow(self, pusher: ITCLOPusher, in_flight: int) -> None:
        """``pusher``'s guest accepts ``in_flight`` commands at once (capped at `MAX_IN_FLIGHT`)."""
        if self._core.pusher is pusher:
            self._core.depth = max(1, min(in_flight, MAX_IN_FLIGHT))
            self._push()

    def detach(self, pusher: ITCLOPusher) -> None:
        """The channel went away: the commands in flight fail, the queue waits for the next one."""
        if self._core.pusher is pusher:
            self._core.pusher = None
            self._core.depth = 1
            self.abandon(GuestGone("the guest's TCLO channel closed"))

    def take(self) -> bytes | None:
        """For polling channels (and pushes): the next command to deliver, if the guest has room."""
        core = self._core
        if len(core.in_flight) >= core.depth or not core.queue:
            return None
        pending = core.queue.popleft()
        self._machine.deliver(pending)
        return pending.command

    def put_back(self) -> None:
        """The guest refused delivery (error ack): offer the same command again."""
        if self._core.in_flight:
            self._machine.put_back()

    def reply(self, data: bytes) -> bool:
        """The guest's answer to the oldest command in flight; False if none was."""
        in_flight = len(self._core.in_flight)
        if not in_flight:
            return False
        pending = self._machine.reply() if in_flight > 1 else self._machine.reply_last()
        pending.reply.callback(data)
        self._push()
        return True

    def _push(self) -> None:
        pusher = self._core.pusher
        while pusher is not None and pusher is self._core.pusher:
            command = self.take()
            if command is None:
                return
            pusher.push(command)

    def _expire(self, pending: _Pending) -> None:
        pending.timer = None
        self._give_up(pending, TCLOTimeout(f"no reply to {pending.command[:40]!r} within {pending.timeout} s"))

    def _give_up(self, pending: _Pending, error: Exception | None) -> None:
        """Stop waiting for ``pending``: it timed out, or its caller cancelled it (``error`` None:
        the Deferred fails with CancelledError by itself)."""
        lost: list[_Pending] = []
        stuck = None
        if pending in self._core.in_flight:
            lost, stuck = self._machine.give_up(pending)
        elif pending in self._core.queue:  # not sent yet: no state changes
            self._core.queue.remove(pending)
            pending.settle()
        if error is not None:
            pending.reply.errback(error)
        for other in lost:
            other.reply.errback(GuestGone(f"the TCLO channel was dropped: {pending.command[:40]!r} got no reply"))
        if stuck is not None:
            stuck.out_of_step()
        self._push()

    def abandon(self, error: Exception) -> None:
        """The commands in flight will never be answered (their channel closed)."""
        if self._core.in_flight:
            for pending in self._machine.abandon():
                pending.reply.errback(error)

    def fail_all(self, error: Exception) -> None:
        self.abandon(error)
        queue = self._core.queue
        while queue:
            pending = queue.popleft()
            pending.settle()
            pending.reply.errback(error)


def check_command(command: bytes, timeout: float) -> None:
    """Refuse what would block the queue: an empty command (the guest has nothing to answer,
    so the queue waits out the timeout), one larger than a guest accepts, or a timeout that is
    not a positive finite number (a NaN deadline stops every reactor timer).  Explicit checks,
    not asserts: they must hold under ``python -O`` too."""
    if not isinstance(command, bytes):
        raise TCLORefused(f"a TCLO command is bytes, not {type(command).__name__}")
    if not command.lstrip(b" \0"):  # lstrip: a 520 KB HGFS command ending in NUL is not copied
        raise TCLORefused("empty TCLO command")
    if len(command) > MAX_COMMAND:
        raise TCLORefused(f"TCLO command of {len(command)} bytes exceeds the {MAX_COMMAND} a guest accepts")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TCLORefused(f"TCLO timeout must be a number of seconds, not {timeout!r}")
    if not math.isfinite(timeout) or timeout <= 0:
        raise TCLORefused(f"TCLO timeout must be a positive finite number of seconds, not {timeout!r}")
