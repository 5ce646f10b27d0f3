"""The VMX's end of the stream transport: one listener for RPCI, TCLO and control."""

from __future__ import annotations

from collections.abc import Callable
from itertools import count

from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..channels.framing import PacketProtocol
from ..codecs.datamap import PacketType, VsockPacket, VsockPacketError
from ..codecs.message import MAX_MESSAGE
from ..codecs.rpci import RPCIReply
from ..codecs.stream import PREAMBLE_SIZE, StreamKind, StreamPreambleError, parse_preamble
from .model import VMX

MALFORMED = b"malformed packet"
TOO_LONG = b"Message too long"


class VMXRPCIProtocol(PacketProtocol):
    """Answers each RPCI request packet with one reply packet, in order."""

    def __init__(self, vmx: VMX, name: str) -> None:
        super().__init__()
        self.vmx = vmx
        self.name = name

    def packetReceived(self, packet: VsockPacket) -> None:
        if packet.type is PacketType.PING or packet.payload is None:
            return
        if len(packet.payload) > MAX_MESSAGE:
            # The same cap as on the backdoor (where SENDSIZE is refused): a VMX takes 64 KiB.
            self.sendPacket(VsockPacket.data(RPCIReply(False, TOO_LONG).encode()))
            return
        self.sendPacket(VsockPacket.data(self.vmx.rpci(packet.payload, self.name)))
        if packet.fast_close:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def badPacket(self, error: VsockPacketError) -> None:
        super().badPacket(error)
        self.sendPacket(VsockPacket.data(RPCIReply(False, MALFORMED).encode()))


class VMXTCLOProtocol(PacketProtocol):
    """Pushes queued TCLO commands to the guest and hands its replies back.

    One VM has one guest: while a guest's TCLO stream is open, another is
    refused (closed at once, the live one untouched).  A dead guest's stream
    does not block its successor for long: a guest that stops answering is
    dropped when its command times out (the VMX pings every few seconds).
    """

    def __init__(self, vmx: VMX, name: str) -> None:
        super().__init__()
        self.vmx = vmx
        self.name = name
        self.attached = False

    def connectionMade(self) -> None:
        if self.vmx.tclo.pushed:
            self.log.warn(
                "{name}: refused, the guest's TCLO channel {live} is live",
                name=self.name, live=", ".join(sorted(self.vmx.connected_channels)) or "?",
            )
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.attached = True
        self.vmx.tclo.attach(self)
        self.vmx.tclo_connected(self.name)

    def push(self, command: bytes) -> None:
        self.vmx.tclo_sent(command, self.name)
        self.sendPacket(VsockPacket.data(command))

    def out_of_step(self) -> None:
        self.log.warn("{name}: the guest did not answer in time; dropping the connection", name=self.name)
        self.transport.loseConnection()  # type: ignore[union-attr]

    def packetReceived(self, packet: VsockPacket) -> None:
        if not self.attached:
            return
        if packet.type is PacketType.PING:
            self.vmx.guest_alive()
        elif packet.payload is not None:
            self._reply(packet.payload)

    def badPacket(self, error: VsockPacketError) -> None:
        super().badPacket(error)
        if self.attached:
            # The guest answered, if unreadably: settle the command so the queue moves on.
            self._reply(b"ERROR " + MALFORMED)

    def _reply(self, data: bytes) -> None:
        if not self.vmx.tclo_reply(data, self.name):
            # Nothing was asked: a guest out of step, or a peer filling our memory.
            self.log.warn("{name}: unsolicited TCLO reply; dropping the connection", name=self.name)
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        if self.attached:
            self.attached = False
            self.vmx.tclo.detach(self)
            self.vmx.tclo_disconnected(self.name)


class PreambleRouter(Protocol):
    """Reads the 4-byte preamble, then hands the connection to the protocol it names."""

    log = Logger()

    def __init__(self, routes: dict[StreamKind, Callable[[], IProtocol]]) -> None:
        self._routes = routes
        self._buffer = b""
        self._next: IProtocol | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._next is not None:
            self._next.dataReceived(data)
            return
        self._buffer += data
        if len(self._buffer) < PREAMBLE_SIZE:
            return
        head, rest = self._buffer[:PREAMBLE_SIZE], self._buffer[PREAMBLE_SIZE:]
        try:
            kind = parse_preamble(head)
        except StreamPreambleError as error:
            self.log.warn("closing connection: {error}", error=str(error))
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        factory = self._routes.get(kind)
        if factory is None:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self._next = factory()
        assert self.transport is not None
        self._next.makeConnection(self.transport)
        if rest:
            self._next.dataReceived(rest)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        if self._next is not None:
            self._next.connectionLost(reason)


class VMXStreamFactory(Factory):
    """The listener a guest (and `vmtools-sim` commands) connect to."""

    noisy = False

    def __init__(self, vmx: VMX, control: Callable[[], IProtocol] | None = None) -> None:
        self.vmx = vmx
        self._control = control
        self._serial = count(1)

    def buildProtocol(self, addr: object) -> PreambleRouter:
        serial = next(self._serial)
        routes: dict[StreamKind, Callable[[], IProtocol]] = {
            StreamKind.RPCI: lambda: VMXRPCIProtocol(self.vmx, f"rpci#{serial}"),
            StreamKind.TCLO: lambda: VMXTCLOProtocol(self.vmx, f"tclo#{serial}"),
        }
        if self._control is not None:
            routes[StreamKind.CONTROL] = self._control
        return PreambleRouter(routes)
