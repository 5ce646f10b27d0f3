"""The VMX's TCLO queue: commands go to the guest one at a time, each with a Deferred."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

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


@dataclass
class _Pending:
    command: bytes
    reply: Deferred[bytes]
    timeout: float
    timer: IDelayedCall | None = None
    extra: dict[str, object] = field(default_factory=dict)


class TCLOQueue:
    """Serial TCLO delivery, for guests that poll (backdoor) or are pushed to (streams).

    `send` queues a command and returns a Deferred firing with the guest's
    whole reply (``OK …``/``ERROR …``).  A push channel registers a `pusher`
    and gets each command as soon as the guest is free; a polling channel
    calls `take` on each poll.  Either way one command is in flight at a
    time; the next goes only after the reply (`reply`) or its timeout.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._queue: deque[_Pending] = deque()
        self._inflight: _Pending | None = None
        self._pusher: object | None = None

    def send(self, command: bytes, timeout: float = DEFAULT_TIMEOUT) -> Deferred[bytes]:
        """Queue ``command``; `TCLORefused` (raised, not in the Deferred) if it cannot be sent."""
        check_command(command, timeout)
        pending = _Pending(command, Deferred(lambda _: self._cancel(pending)), timeout)
        # The timeout runs from queueing: a guest that never polls must not hang the caller.
        pending.timer = self._clock.callLater(timeout, self._expire, pending)
        self._queue.append(pending)
        self._push()
        return pending.reply

    @property
    def busy(self) -> bool:
        return self._inflight is not None

    @property
    def pushed(self) -> bool:
        """A push channel (a guest's TCLO stream) is attached."""
        return self._pusher is not None

    def attach(self, pusher: object) -> None:
        """A push channel connected: ``pusher.push(command)`` is called for each command.

        One guest, one channel: attaching while another is attached is a caller's bug
        (the listener refuses a second TCLO stream before it gets here).
        """
        if self._pusher is not None and self._pusher is not pusher:
            raise RuntimeError("a TCLO channel is already attached")
        self._pusher = pusher
        self._push()

    def detach(self, pusher: object) -> None:
        """The channel went away: the command in flight fails, the queue waits for the next one."""
        if self._pusher is pusher:
            self._pusher = None
            self.abandon(GuestGone("the guest's TCLO channel closed"))

    def take(self) -> bytes | None:
        """For polling channels: the next command to deliver, if the guest is free."""
        if self._inflight is not None or not self._queue:
            return None
        self._inflight = self._queue.popleft()
        return self._inflight.command

    def put_back(self) -> None:
        """The guest refused delivery (error ack): offer the same command again."""
        if self._inflight is not None:
            pending, self._inflight = self._inflight, None
            self._queue.appendleft(pending)

    def reply(self, data: bytes) -> bool:
        """The guest's answer to the command in flight; False if none was."""
        pending, self._inflight = self._inflight, None
        if pending is None:
            return False
        self._settle(pending)
        pending.reply.callback(data)
        self._push()
        return True

    def _push(self) -> None:
        if self._pusher is None or self._inflight is not None:
            return
        command = self.take()
        if command is not None:
            self._pusher.push(command)  # type: ignore[attr-defined]

    def _settle(self, pending: _Pending) -> None:
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        pending.timer = None

    def _expire(self, pending: _Pending) -> None:
        pending.timer = None
        self._give_up(pending, TCLOTimeout(f"no reply to {pending.command[:40]!r} within {pending.timeout} s"))

    def _cancel(self, pending: _Pending) -> None:
        # Deferred cancellation: the Deferred itself fails with CancelledError.
        self._give_up(pending, None)

    def _give_up(self, pending: _Pending, error: Exception | None) -> None:
        """Stop waiting for ``pending``: it timed out, or its caller cancelled it."""
        self._settle(pending)
        stuck_pusher = self._pusher if self._inflight is pending else None
        if self._inflight is pending:
            # On a polled channel a late reply finds nothing in flight and is dropped.
            self._inflight = None
            self.log.warn("TCLO command {command!r} abandoned", command=pending.command[:40])
        elif pending in self._queue:
            self._queue.remove(pending)
        if error is not None:
            pending.reply.errback(error)
        if stuck_pusher is not None:
            # A pushed stream cannot match a late reply to its command: it is out of
            # step, so it must start over (and the guest gets a fresh reset).
            self._pusher = None
            stuck_pusher.out_of_step()  # type: ignore[attr-defined]
        self._push()

    def abandon(self, error: Exception) -> None:
        """The command in flight will never be answered (its channel closed)."""
        pending, self._inflight = self._inflight, None
        if pending is not None:
            self._settle(pending)
            pending.reply.errback(error)

    def fail_all(self, error: Exception) -> None:
        self.abandon(error)
        while self._queue:
            pending = self._queue.popleft()
            self._settle(pending)
            pending.reply.errback(error)




def check_command(command: bytes, timeout: float) -> None:
    """Refuse what would block the queue: an empty command (the guest has nothing to answer,
    so the queue waits out the timeout), one larger than a guest accepts, or a timeout that is
    not a positive finite number (a NaN deadline stops every reactor timer).  Explicit checks,
    not asserts: they must hold under ``python -O`` too."""
    if not isinstance(command, bytes):
        raise TCLORefused(f"a TCLO command is bytes, not {type(command).__name__}")
    if not command.strip(b" \0"):
        raise TCLORefused("empty TCLO command")
    if len(command) > MAX_COMMAND:
        raise TCLORefused(f"TCLO command of {len(command)} bytes exceeds the {MAX_COMMAND} a guest accepts")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TCLORefused(f"TCLO timeout must be a number of seconds, not {timeout!r}")
    if not math.isfinite(timeout) or timeout <= 0:
        raise TCLORefused(f"TCLO timeout must be a positive finite number of seconds, not {timeout!r}")
