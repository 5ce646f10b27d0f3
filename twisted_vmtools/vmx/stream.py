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
    """Pushes queued TCLO commands to the guest and hands its replies back."""

    def __init__(self, vmx: VMX, name: str) -> None:
        super().__init__()
        self.vmx = vmx
        self.name = name

    def connectionMade(self) -> None:
        self.vmx.tclo.attach(self)
        self.vmx.tclo_connected(self.name)

    def push(self, command: bytes) -> None:
        self.vmx.tclo_sent(command, self.name)
        self.sendPacket(VsockPacket.data(command))

    def out_of_step(self) -> None:
        self.log.warn("{name}: the guest did not answer in time; dropping the connection", name=self.name)
        self.transport.loseConnection()  # type: ignore[union-attr]

    def packetReceived(self, packet: VsockPacket) -> None:
        if packet.type is PacketType.PING:
            self.vmx.guest_alive()
        elif packet.payload is not None:
            self.vmx.tclo_reply(packet.payload, self.name)

    def badPacket(self, error: VsockPacketError) -> None:
        super().badPacket(error)
        # The guest answered, if unreadably: settle the command so the queue moves on.
        self.vmx.tclo_reply(b"ERROR " + MALFORMED, self.name)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
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
