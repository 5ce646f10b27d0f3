"""The guest's ends of the framed RPCI and TCLO connections (stream and vsock alike)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from ..codecs.datamap import MALFORMED_PACKET, PacketType, VsockPacket, VsockPacketError
from ..codecs.stream import StreamKind
from ..codecs.tclo import ERROR_PREFIX
from ..framing import PacketProtocol
from .interfaces import ChannelError, ITCLOHandler

HEARTBEAT_INTERVAL = 1.0
MALFORMED_REPLY = ERROR_PREFIX + MALFORMED_PACKET
# TCLO commands a guest handles at once on the stream transport (the VMX caps what it accepts):
# enough to keep both processes busy during an HGFS transfer, with a few 520 KB packets buffered.
STREAM_IN_FLIGHT = 4


class _Answer:
    """One command's place in the reply order; ``reply`` is set when its handler has answered."""

    __slots__ = ("reply",)

    def __init__(self, reply: bytes | None = None) -> None:
        self.reply = reply


class GuestTCLOProtocol(PacketProtocol):
    """The guest's end of a TCLO connection: answer each command, then keep a heartbeat.

    Up to ``max_in_flight`` commands are handled at once, in arrival order, and
    their replies go out strictly in command order: a reply that is ready waits
    for the ones before it.  The first reply tells the VMX that number (the
    stream transport's MAX_IN_FLIGHT field); commands beyond it wait here.
    """

    # What the guest writes first to name the channel; empty where the port says it (vsock).
    preamble = StreamKind.TCLO.preamble
    max_in_flight = STREAM_IN_FLIGHT

    def __init__(self, handler: ITCLOHandler, clock: IReactorTime) -> None:
        super().__init__()
        self._handler = handler
        self._heartbeat = LoopingCall(self._ping)
        self._heartbeat.clock = clock
        self._backlog: deque[bytes] = deque()  # commands read, not yet handed to the handler
        self._order: deque[_Answer] = deque()  # commands being handled, in command order
        self._pumping = False
        self._connected = False

    def connectionMade(self) -> None:
        self._connected = True
        if self.preamble:
            self.transport.write(self.preamble)  # type: ignore[union-attr]

    def packetReceived(self, packet: VsockPacket) -> None:
        if packet.type is PacketType.PING or packet.payload is None:
            return
        self._backlog.append(packet.payload)
        self._pump()

    def badPacket(self, error: VsockPacketError) -> None:
        super().badPacket(error)
        # One reply per command keeps the VMX's queue in step, even for garbage.
        self._backlog.append(b"")
        self._pump()

    def _pump(self) -> None:
        """Send the replies that are next in order, and start commands while there is room.

        A loop rather than recursion: most handlers answer at once, inside `_start`.
        """
        if self._pumping:
            return
        self._pumping = True
        try:
            while True:
                order = self._order
                if order and order[0].reply is not None:
                    self._answer(order.popleft().reply)  # type: ignore[arg-type]  # checked above
                elif self._backlog and len(order) < self.max_in_flight:
                    self._start(self._backlog.popleft())
                else:
                    return
        finally:
            self._pumping = False

    def _start(self, command: bytes) -> None:
        if not command:
            self._order.append(_Answer(MALFORMED_REPLY))
            return
        answer = _Answer()
        self._order.append(answer)
        replying = self._handler.handle(command)
        # ITCLOHandler.handle never fails, but a reply must go out whatever a handler does.
        replying.addErrback(lambda failure: ERROR_PREFIX + failure.getErrorMessage().encode("utf-8", "replace"))
        replying.addCallback(self._answered, answer)

    def _answered(self, reply: bytes, answer: _Answer) -> None:
        answer.reply = reply
        self._pump()

    def _answer(self, reply: bytes) -> None:
        if not self._connected:
            return
        if self._heartbeat.running:
            self.sendPacket(VsockPacket.data(reply))
            return
        # The first reply: say how many commands may be in flight (where more than one).
        in_flight = self.max_in_flight if self.max_in_flight > 1 else 0
        self.sendPacket(VsockPacket(PacketType.DATA, reply, max_in_flight=in_flight))
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
    # Told of the loss before the calls in flight fail (`RPCIConnection` sets it).
    on_lost: Callable[[GuestRPCIProtocol], None] | None = None

    def __init__(self) -> None:
        super().__init__()
        self._waiting: deque[Deferred[bytes]] = deque()
        self.lost = False

    def connectionMade(self) -> None:
        if self.preamble:
            self.transport.write(self.preamble)  # type: ignore[union-attr]

    def request(self, data: bytes, reply: Deferred[bytes] | None = None) -> Deferred[bytes]:
        """Send ``data``; ``reply`` (a new Deferred if not given) fires with the answer."""
        waiting: Deferred[bytes] = Deferred() if reply is None else reply
        if self.lost:
            waiting.errback(ChannelError("RPCI connection is closed"))
            return waiting
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
        if self.on_lost is not None:
            self.on_lost(self)
        while self._waiting:
            self._waiting.popleft().errback(ChannelError(f"RPCI connection lost: {reason.getErrorMessage()}"))


class TCLOFactory(Factory):
    """Builds the guest's TCLO protocol (``protocol``: the stream one, or vsock's without preamble)."""

    noisy = False  # the connection is re-made with back-off; one log line per attempt is enough

    def __init__(
        self, handler: ITCLOHandler, clock: IReactorTime, protocol: type[GuestTCLOProtocol] = GuestTCLOProtocol
    ) -> None:
        self.handler = handler
        self.clock = clock
        self.protocol_class = protocol

    def buildProtocol(self, addr: object) -> GuestTCLOProtocol:
        return self.protocol_class(self.handler, self.clock)
