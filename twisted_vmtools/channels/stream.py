"""The stream channel: vsock framing over any Twisted stream endpoint.

This is how a guest reaches `vmtools-sim` (``unix:PATH``, ``tcp:HOST:PORT``).
Two connections, as on vsock: TCLO (the VMX pushes commands, the guest
answers each and sends a heartbeat PING every second) and RPCI (requests and
replies in order).  The TCLO connection is kept up by a `ClientService`, so
when the VMX goes away the guest reconnects with back-off and the tools
service keeps running.  The wire format is in docs/stream-transport.md.
"""

from __future__ import annotations

from collections import deque

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..codecs.datamap import PacketType, VsockPacket, VsockPacketError
from ..codecs.stream import StreamKind
from ..codecs.tclo import ERROR_PREFIX
from .framing import PacketProtocol
from .interfaces import ChannelError, IGuestChannel, ITCLOHandler

HEARTBEAT_INTERVAL = 1.0
RPCI_TIMEOUT = 30.0
MALFORMED_REPLY = b"ERROR malformed packet"


class GuestTCLOProtocol(PacketProtocol):
    """The guest's end of a TCLO connection: answer each command, then keep a heartbeat."""

    # What the guest writes first to name the channel; empty where the port says it (vsock).
    preamble = StreamKind.TCLO.preamble

    def __init__(self, handler: ITCLOHandler, clock: IReactorTime) -> None:
        super().__init__()
        self._handler = handler
        self._heartbeat = LoopingCall(self._ping)
        self._heartbeat.clock = clock
        self._busy: Deferred[bytes] | None = None
        self._backlog: deque[bytes] = deque()
        self._connected = False

    def connectionMade(self) -> None:
        self._connected = True
        if self.preamble:
            self.transport.write(self.preamble)  # type: ignore[union-attr]

    def packetReceived(self, packet: VsockPacket) -> None:
        if packet.type is PacketType.PING or packet.payload is None:
            return
        self._backlog.append(packet.payload)
        self._next()

    def badPacket(self, error: VsockPacketError) -> None:
        super().badPacket(error)
        # One reply per command keeps the VMX's queue in step, even for garbage.
        self._backlog.append(b"")
        self._next()

    def _next(self) -> None:
        if self._busy is not None or not self._backlog:
            return
        command = self._backlog.popleft()
        if not command:
            self._answer(MALFORMED_REPLY)
            self._next()
            return
        self._busy = self._handler.handle(command)
        # ITCLOHandler.handle never fails, but a reply must go out whatever a handler does.
        self._busy.addErrback(lambda failure: ERROR_PREFIX + failure.getErrorMessage().encode("utf-8", "replace"))
        self._busy.addCallback(self._answered)

    def _answered(self, reply: bytes) -> None:
        self._busy = None
        self._answer(reply)
        self._next()

    def _answer(self, reply: bytes) -> None:
        if not self._connected:
            return
        self.sendPacket(VsockPacket.data(reply))
        if not self._heartbeat.running:
            self._heartbeat.start(HEARTBEAT_INTERVAL, now=False)

    def _ping(self) -> None:
        self.sendPacket(VsockPacket.ping())

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self._connected = False
        self._backlog.clear()
        if self._heartbeat.running:
            self._heartbeat.stop()


class GuestRPCIProtocol(PacketProtocol):
    """The guest's end of an RPCI connection: requests out, replies back in order."""

    preamble = StreamKind.RPCI.preamble

    def __init__(self) -> None:
        super().__init__()
        self._waiting: deque[Deferred[bytes]] = deque()
        self.lost = False

    def connectionMade(self) -> None:
        if self.preamble:
            self.transport.write(self.preamble)  # type: ignore[union-attr]

    def request(self, data: bytes) -> Deferred[bytes]:
        if self.lost:
            return defer.fail(ChannelError("RPCI connection is closed"))
        waiting: Deferred[bytes] = Deferred()
        self._waiting.append(waiting)
        self.sendPacket(VsockPacket.data(data))
        return waiting

    def packetReceived(self, packet: VsockPacket) -> None:
        if packet.type is PacketType.PING or packet.payload is None:
            return
        if not self._waiting:
            self.log.warn("unexpected RPCI reply {reply!r}", reply=packet.payload[:64])
            return
        self._waiting.popleft().callback(packet.payload)

    def badPacket(self, error: VsockPacketError) -> None:
        # The reply's frame was intact but its content was not: fail that call only.
        if self._waiting:
            self._waiting.popleft().errback(ChannelError(f"malformed RPCI reply: {error}"))

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.lost = True
        while self._waiting:
            self._waiting.popleft().errback(ChannelError(f"RPCI connection lost: {reason.getErrorMessage()}"))


class _TCLOFactory(Factory):
    noisy = False

    def __init__(self, handler: ITCLOHandler, clock: IReactorTime) -> None:
        self.handler = handler
        self.clock = clock

    def buildProtocol(self, addr: object) -> GuestTCLOProtocol:
        return GuestTCLOProtocol(self.handler, self.clock)


@implementer(IGuestChannel)
class StreamChannel:
    """An `IGuestChannel` over a stream endpoint (``unix:PATH`` or ``tcp:HOST:PORT``)."""

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        description: str | None = None,
        *,
        endpoint: IStreamClientEndpoint | None = None,
        rpci_timeout: float = RPCI_TIMEOUT,
        max_retry_delay: float = 5.0,
    ) -> None:
        if endpoint is None:
            if description is None:
                raise ValueError("StreamChannel needs a description or an endpoint")
            endpoint = clientFromString(reactor, description)
        self.name = description or repr(endpoint)
        self._reactor = reactor
        self._endpoint = endpoint
        self._rpci_timeout = rpci_timeout
        self._max_retry_delay = max_retry_delay
        self._rpci: GuestRPCIProtocol | None = None
        self._connect_lock = defer.DeferredLock()
        self._tclo: ClientService | None = None

    # -- RPCI

    def rpci(self, request: bytes) -> Deferred[bytes]:
        connection = self._rpci
        if connection is not None and not connection.lost:
            return self._timed(connection, connection.request(request))  # the usual case: no lock, no coroutine
        return defer.ensureDeferred(self._rpci_call(request))

    async def _rpci_call(self, request: bytes) -> bytes:
        connection = await self._rpci_connection()
        return await self._timed(connection, connection.request(request))

    def _timed(self, connection: GuestRPCIProtocol, reply: Deferred[bytes]) -> Deferred[bytes]:
        def timed_out(failure: Failure) -> Failure:
            if failure.check(defer.TimeoutError):
                # The stream is out of step now: start a fresh one for the next call.
                connection.transport.loseConnection()  # type: ignore[union-attr]
                return Failure(ChannelError(f"no RPCI reply within {self._rpci_timeout} s"))
            return failure

        reply.addTimeout(self._rpci_timeout, self._reactor)  # type: ignore[arg-type]
        return reply.addErrback(timed_out)

    async def _rpci_connection(self) -> GuestRPCIProtocol:
        # The lock makes concurrent first calls share one connect.
        async with self._connect_lock:
            if self._rpci is None or self._rpci.lost:
                factory = Factory.forProtocol(GuestRPCIProtocol)
                try:
                    connected = await self._endpoint.connect(factory)
                    assert isinstance(connected, GuestRPCIProtocol)
                    self._rpci = connected
                except Exception as error:
                    raise ChannelError(f"cannot reach the VMX at {self.name}: {error}") from error
            return self._rpci  # type: ignore[return-value]  # set just above

    # -- TCLO

    def start(self, tclo: ITCLOHandler) -> None:
        self._tclo = ClientService(
            self._endpoint,
            _TCLOFactory(tclo, self._reactor),
            retryPolicy=backoffPolicy(initialDelay=0.1, maxDelay=self._max_retry_delay),
            clock=self._reactor,
        )
        self._tclo.startService()

    def stop(self) -> Deferred[None]:
        stopping: list[Deferred[None]] = []
        if self._tclo is not None:
            stopping.append(self._tclo.stopService())
            self._tclo = None
        if self._rpci is not None:
            self._rpci.transport.loseConnection()  # type: ignore[union-attr]
            self._rpci = None
        return defer.gatherResults(stopping).addCallback(lambda _: None)
