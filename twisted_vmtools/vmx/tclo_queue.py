"""The VMX's TCLO queue: commands go to the guest one at a time, each with a Deferred."""

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
    # The "in flight" state's command, None in "free".  `TCLOQueue` reads it to skip the
    # machine where nothing would change (a poll with nothing to take, `busy`): a transition
    # costs about a microsecond to look up, and polls come every 10-100 ms.
    in_flight: _Pending | None = None
    log: Logger = field(default_factory=Logger)


class _Inputs(typing.Protocol):
    """What happens to the command in flight (Automat's typed machines declare their inputs
    with a `typing.Protocol`; nothing outside this module provides it)."""

    def deliver(self, pending: _Pending) -> None:
        "``pending`` goes to the guest (pushed, or handed to a poll)."

    def put_back(self) -> None:
        "The guest refused delivery (an error ack on its poll)."

    def reply(self) -> _Pending:
        "The guest answered the command in flight (returned)."

    def give_up(self) -> ITCLOPusher | None:
        "The command in flight timed out or was cancelled: the push channel now out of step."

    def abandon(self) -> _Pending:
        "The command in flight (returned) will never be answered: its channel closed."


def _machine() -> typing.Callable[[_Core], _Inputs]:
    #   free --deliver--> in flight --reply / put_back / give_up / abandon--> free
    #
    # The outputs only move commands about and return what to fire; `TCLOQueue` fires it
    # after the transition, so a caller's callbacks (which may `send`, or close a channel)
    # never run inside one.  An input in a state without a transition for it is a bug in
    # `TCLOQueue` (it checks ``core.in_flight`` first), and Automat raises NoTransition.
    builder = TypeMachineBuilder(_Inputs, _Core)
    free = builder.state("free")
    in_flight = builder.state("in flight")

    @pep614(free.upon(_Inputs.deliver).to(in_flight))
    def deliver(machine: _Inputs, core: _Core, pending: _Pending) -> None:
        core.in_flight = pending

    @pep614(in_flight.upon(_Inputs.put_back).to(free))
    def requeue(machine: _Inputs, core: _Core) -> None:
        core.queue.appendleft(core.in_flight)  # type: ignore[arg-type]  # set in "in flight"
        core.in_flight = None

    @pep614(in_flight.upon(_Inputs.reply).to(free))
    @pep614(in_flight.upon(_Inputs.abandon).to(free))
    def settle(machine: _Inputs, core: _Core) -> _Pending:
        pending, core.in_flight = core.in_flight, None
        assert pending is not None
        pending.settle()
        return pending

    @pep614(in_flight.upon(_Inputs.give_up).to(free))
    def drop(machine: _Inputs, core: _Core) -> ITCLOPusher | None:
        # On a polled channel a late reply finds nothing in flight and is dropped.  A pushed
        # stream cannot match a late reply to its command: it is out of step, so it is let
        # go, to start over (and the guest gets a fresh reset).
        pending = settle(machine, core)
        core.log.warn("TCLO command {command!r} abandoned", command=pending.command[:40])
        stuck, core.pusher = core.pusher, None
        return stuck

    return builder.build()


_build = _machine()


class TCLOQueue:
    """Serial TCLO delivery, for guests that poll (backdoor) or are pushed to (streams).

    `send` queues a command and returns a Deferred firing with the guest's
    whole reply (``OK …``/``ERROR …``).  A push channel registers a `pusher`
    and gets each command as soon as the guest is free; a polling channel
    calls `take` on each poll.  Either way one command is in flight at a
    time (the machine's "in flight" state); the next goes only after the
    reply (`reply`) or its timeout.
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
        return self._core.in_flight is not None

    @property
    def pushed(self) -> bool:
        """A push channel (a guest's TCLO stream) is attached."""
        return self._core.pusher is not None

    def attach(self, pusher: ITCLOPusher) -> None:
        """A push channel connected: ``pusher.push(command)`` is called for each command.

        One guest, one channel: attaching while another is attached is a caller's bug
        (the listener refuses a second TCLO stream before it gets here).
        """
        if self._core.pusher is not None and self._core.pusher is not pusher:
            raise RuntimeError("a TCLO channel is already attached")
        self._core.pusher = pusher
        self._push()

    def detach(self, pusher: ITCLOPusher) -> None:
        """The channel went away: the command in flight fails, the queue waits for the next one."""
        if self._core.pusher is pusher:
            self._core.pusher = None
            self.abandon(GuestGone("the guest's TCLO channel closed"))

    def take(self) -> bytes | None:
        """For polling channels: the next command to deliver, if the guest is free."""
        core = self._core
        if core.in_flight is not None or not core.queue:
            return None
        pending = core.queue.popleft()
        self._machine.deliver(pending)
        return pending.command

    def put_back(self) -> None:
        """The guest refused delivery (error ack): offer the same command again."""
        if self._core.in_flight is not None:
            self._machine.put_back()

    def reply(self, data: bytes) -> bool:
        """The guest's answer to the command in flight; False if none was."""
        if self._core.in_flight is None:
            return False
        self._machine.reply().reply.callback(data)
        self._push()
        return True

    def _push(self) -> None:
        pusher = self._core.pusher
        if pusher is not None:
            command = self.take()
            if command is not None:
                pusher.push(command)

    def _expire(self, pending: _Pending) -> None:
        pending.timer = None
        self._give_up(pending, TCLOTimeout(f"no reply to {pending.command[:40]!r} within {pending.timeout} s"))

    def _give_up(self, pending: _Pending, error: Exception | None) -> None:
        """Stop waiting for ``pending``: it timed out, or its caller cancelled it (``error`` None:
        the Deferred fails with CancelledError by itself)."""
        stuck = None
        if pending is self._core.in_flight:
            stuck = self._machine.give_up()
        elif pending in self._core.queue:  # not sent yet: no state changes
            self._core.queue.remove(pending)
            pending.settle()
        if error is not None:
            pending.reply.errback(error)
        if stuck is not None:
            stuck.out_of_step()
        self._push()

    def abandon(self, error: Exception) -> None:
        """The command in flight will never be answered (its channel closed)."""
        if self._core.in_flight is not None:
            self._machine.abandon().reply.errback(error)

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
