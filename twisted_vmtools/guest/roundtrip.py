"""``http.RoundTrip``: the guest's half of HTTP over guest operations (the Go toolbox's program of that name).

Started as a Python process with ``host:port`` as its arguments, it connects
to that address from inside the guest, copies its stdin to the connection
(never half-closed: many servers take that for a hang-up) and the
connection's reply to its stdout until the server closes.  It exits 0, or 1
with one line on stderr when the connection is refused, fails or goes idle
for longer than its timeout.  Output waiting to be read is bounded: past
`HIGH_WATER` buffered bytes the connection is paused until the reader drains it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    from .processes import PythonProcess

PROGRAM = "http.RoundTrip"
DEFAULT_TIMEOUT = 60.0  # seconds without a byte either way before the round trip gives up
HIGH_WATER = 4 << 20  # stdout bytes waiting for the VMX before the server is paused
LOW_WATER = 1 << 20
DRAIN_POLL = 0.01
STDIN_CHUNK = 1 << 16


class RoundTripError(Exception):
    """The round trip could not be made (bad address, refused, timed out)."""


def parse_address(arguments: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) → (host, port); anything else is a `RoundTripError`."""
    host, colon, port = arguments.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or "/" in host or any(c.isspace() for c in host) or not port.isdigit() \
            or not 0 < int(port) < 65536:
        raise RoundTripError(f"http.RoundTrip: the argument must be host:port, not {arguments!r}")
    return host, int(port)


@implementer(IHalfCloseableProtocol)
class _Relay(Protocol):
    """The guest's connection to the server: what it receives goes to the process's stdout."""

    def __init__(self, process: PythonProcess, clock: IReactorTime, timeout: float) -> None:
        self.process = process
        self.clock = clock
        self.timeout = timeout
        self.done: Deferred[None] = Deferred(lambda _: self._abort())  # killing the process drops the connection
        self.timed_out = False
        self._idle: Any = None
        self._paused = False

    def connectionMade(self) -> None:  # noqa: N802 (Twisted's name)
        self.touch()

    def touch(self) -> None:
        """Restart the idle timer: the exchange moved."""
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.timeout)
        elif not self.done.called:
            self._idle = self.clock.callLater(self.timeout, self._expire)

    def _expire(self) -> None:
        self.timed_out = True
        self._abort()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.touch()
        self.process.stdout.write(data)
        if not self._paused and self.process.stdout.size > HIGH_WATER:
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]
            self.clock.callLater(DRAIN_POLL, self._drain)

    def _drain(self) -> None:
        if self.done.called:
            return
        if self.process.stdout.size > LOW_WATER:
            self.clock.callLater(DRAIN_POLL, self._drain)
            return
        self._paused = False
        self.touch()  # a slow reader is not an idle server
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:  # noqa: N802 (the server finished; stdin may still be flowing)
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:  # noqa: N802
        pass

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: N802, B008
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        if self.done.called:
            return  # killed: the process already ended
        if self.timed_out:
            self.done.errback(RoundTripError(f"http.RoundTrip: no reply within {self.timeout:g} s"))
        elif reason.check(ConnectionDone) or self.process.stdout.closed:
            self.done.callback(None)
        else:
            self.done.errback(RoundTripError(f"http.RoundTrip: connection lost: {reason.getErrorMessage()}"))


def _cancellable(connecting: Deferred[Any]) -> Deferred[Any]:
    """``connecting``, but cancelling it fails with CancelledError (a cancelled HostnameEndpoint says
    "DNS lookup failed", which would read as the connection's own error)."""

    def cancel(guarded: Deferred[Any]) -> None:
        guarded.errback(CancelledError())
        connecting.cancel()

    guarded: Deferred[Any] = Deferred(cancel)

    def settle(result: object) -> None:
        if not guarded.called:
            guarded.callback(result)

    connecting.addBoth(settle)
    return guarded


class RoundTrip:
    """The ``http.RoundTrip`` process function: ``RoundTrip(reactor)(process)``."""

    def __init__(self, reactor: Any, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.reactor = reactor
        self.timeout = timeout

    def __call__(self, process: PythonProcess) -> Deferred[int]:
        return ensureDeferred(self.run(process))

    async def run(self, process: PythonProcess) -> int:
        host, port = parse_address(process.arguments)
        relay = _Relay(process, self.reactor, self.timeout)
        endpoint = HostnameEndpoint(self.reactor, host, port, timeout=max(1, int(self.timeout)))
        try:
            await _cancellable(endpoint.connect(Factory.forProtocol(lambda: relay)))
        except CancelledError:
            raise  # killed while connecting: not a connection error
        except Exception as error:
            raise RoundTripError(f"http.RoundTrip: cannot connect to {host}:{port}: {error}") from None
        pumping = ensureDeferred(self._pump_stdin(process, relay))
        pumping.addErrback(lambda failure: failure.trap(CancelledError))  # stopped when the exchange ends
        try:
            await relay.done
        finally:
            pumping.cancel()
        return 0

    async def _pump_stdin(self, process: PythonProcess, relay: _Relay) -> None:
        transport: Any = relay.transport
        while not relay.done.called:
            data = await process.stdin.read(STDIN_CHUNK)
            if not data:
                break
            relay.touch()
            transport.write(data)
        # No half-close at stdin's end: an HTTP request delimits itself, and servers that do not
        # half-close (twisted.web among them) would take the EOF for a hang-up and drop a slow reply.
