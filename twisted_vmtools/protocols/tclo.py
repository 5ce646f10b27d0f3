"""TCLO: dispatching the VMX's commands to handlers."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..channels.interfaces import ITCLOCommands
from ..codecs.tclo import BAD_COMMAND, OK_PREFIX, UNKNOWN_COMMAND, TCLOError, TCLOReply, command_name
from ..printable import TRACE_BYTES, abridged

# A body in pieces (a list) is joined once, behind the ``OK``: HGFS file data is not copied twice.
Pieces = list[bytes | memoryview]
Body = bytes | Pieces
HandlerResult = Body | Deferred[bytes] | Deferred[Pieces] | Deferred[Body] | Coroutine[Any, Any, Body]
Handler = Callable[[bytes], HandlerResult]
Observer = Callable[[bytes], Awaitable[object] | None]


class AlreadyRegistered(ValueError):
    """A second handler for a command: one command, one owner (the others observe it)."""


class TCLOHandlerError(Exception):
    """Raise from a handler to answer ``ERROR <message>``."""

    def __init__(self, message: bytes | str) -> None:
        self.body = message.encode() if isinstance(message, str) else message
        super().__init__(self.body.decode("utf-8", "replace"))


@implementer(ITCLOCommands)
class TCLODispatcher:
    """A registry of TCLO command handlers, and of observers of those commands.

    A handler gets the arguments (the text after the first space) and returns
    the reply body as bytes, a Deferred or a coroutine.  It answers
    ``OK <body>``; a `TCLOHandlerError` answers ``ERROR <message>``; any other
    failure is logged and answered ``ERROR <description>``, and the service
    goes on.  Each command has one handler; whoever else must react to it
    (a ``reset``, a ``Set_Option``) uses `observe`.
    """

    log = Logger()

    def __init__(self, *, trace: bool = False) -> None:
        self._handlers: dict[bytes, Handler] = {}
        self._viewers: set[bytes] = set()  # handlers that take their arguments as a view
        self._observers: dict[bytes, list[Observer]] = {}
        self.trace = trace

    def register(self, name: bytes, handler: Handler, *, views: bool = False) -> None:
        """Make ``handler`` answer command ``name``; `AlreadyRegistered` if another one does.

        With ``views``, the handler gets its arguments as a memoryview into the command
        (it must not keep it past its answer): a 520 KB HGFS WriteV3 is not copied to
        split off its name.
        """
        if name in self._handlers:
            raise AlreadyRegistered(f"TCLO command {name!r} already has a handler; observe it instead")
        self._handlers[name] = handler
        if views:
            self._viewers.add(name)

    def unregister(self, name: bytes) -> None:
        self._handlers.pop(name, None)
        self._viewers.discard(name)

    def observe(self, name: bytes, observer: Observer) -> Callable[[], None]:
        """Call ``observer(args)`` after each ``OK`` answer to ``name`` (see `ITCLOCommands.observe`)."""
        observers = self._observers.setdefault(name, [])
        observers.append(observer)

        def unsubscribe() -> None:
            if observer in observers:
                observers.remove(observer)

        return unsubscribe

    def registered(self) -> list[bytes]:
        """The commands that have a handler, in registration order."""
        return list(self._handlers)

    def handle(self, command: bytes) -> Deferred[bytes]:
        if self.trace:
            self.log.info("TCLO ← {text}", text=abridged(command, TRACE_BYTES), command=command)
        replying = self._dispatch(command)
        if self.trace:
            replying.addCallback(self._traced)
        return replying

    def _traced(self, reply: bytes) -> bytes:
        self.log.info("TCLO → {text}", text=abridged(reply, TRACE_BYTES), reply=reply)
        return reply

    def _dispatch(self, command: bytes) -> Deferred[bytes]:
        try:
            name, start = command_name(command)
        except TCLOError:
            return _done(TCLOReply(False, BAD_COMMAND))
        handler = self._handlers.get(name)
        if handler is None:
            return _done(TCLOReply(False, UNKNOWN_COMMAND))
        if name in self._viewers:
            answering = self._answer(handler, name, memoryview(command)[start:])  # type: ignore[arg-type]
        else:
            answering = self._answer(handler, name, command[start:])
        if self._observers.get(name):
            answering.addCallback(self._notify, name, command[start:])
        return answering

    def _answer(self, handler: Handler, name: bytes, args: bytes) -> Deferred[bytes]:
        try:
            result = handler(args)
        except Exception:
            return succeed(self._failed(Failure(), name))
        if isinstance(result, bytes):
            return succeed(OK_PREFIX + result)  # most handlers answer at once: skip the Deferred plumbing
        if isinstance(result, list):
            # A large body in pieces (HGFS file data) is copied once, behind the OK, not twice.
            return succeed(b"".join([OK_PREFIX, *result]))
        running = maybeDeferred(_deferred, result).addCallback(_ok)
        return running.addErrback(self._failed, name)

    def _notify(self, reply: bytes, name: bytes, args: bytes) -> bytes | Deferred[bytes]:
        if not reply.startswith(OK_PREFIX):
            return reply
        return ensureDeferred(self._run_observers(name, args)).addCallback(lambda _: reply)

    async def _run_observers(self, name: bytes, args: bytes) -> None:
        for observer in list(self._observers.get(name, ())):
            try:
                result = observer(args)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                # The command's owner answered; a watcher's trouble is its own.
                self.log.failure("an observer of TCLO {name!r} failed", name=name)

    def _failed(self, failure: Failure, name: bytes) -> bytes:
        if failure.check(TCLOHandlerError):
            return TCLOReply(False, failure.value.body).encode()  # type: ignore[union-attr]
        self.log.failure("TCLO handler for {name!r} failed", failure, name=name)
        return TCLOReply(False, failure.getErrorMessage().encode("utf-8", "replace")).encode()


def _ok(body: object) -> bytes:
    if isinstance(body, bytes):
        return OK_PREFIX + body
    if isinstance(body, list):
        return b"".join([OK_PREFIX, *body])
    raise TypeError(f"TCLO handler answered {type(body).__name__}, not bytes")


def _deferred(result: HandlerResult) -> Deferred[Any]:  # whichever Deferred the handler made: `_ok` checks
    if isinstance(result, Deferred):
        return result
    if inspect.iscoroutine(result):
        return ensureDeferred(result)
    raise TypeError(f"TCLO handler returned {type(result).__name__}, not bytes")


def _done(reply: TCLOReply) -> Deferred[bytes]:
    return succeed(reply.encode())
