"""A Twisted protocol base for vsock-framed streams (vsock or unix/tcp)."""

from __future__ import annotations

from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from ..codecs.datamap import PacketDecoder, VsockPacket, VsockPacketError


class PacketProtocol(Protocol):
    """Splits the byte stream into `VsockPacket`s.

    A packet whose content does not decode goes to `badPacket` and the
    stream goes on.  A length over the limit means the framing is lost, so
    the connection is closed.
    """

    log = Logger()

    def __init__(self) -> None:
        self._decoder = PacketDecoder()

    def dataReceived(self, data: bytes) -> None:
        try:
            packets = self._decoder.feed(data)
        except VsockPacketError as error:
            self.log.warn("closing stream: {error}", error=str(error))
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        for packet in packets:
            if getattr(self.transport, "disconnecting", False):
                return  # we chose to close: what the peer sent after that is not read
            if isinstance(packet, VsockPacketError):
                self.badPacket(packet)
            else:
                self.packetReceived(packet)

    def sendPacket(self, packet: VsockPacket) -> None:
        self.transport.write(packet.encode())  # type: ignore[union-attr]

    def packetReceived(self, packet: VsockPacket) -> None:
        raise NotImplementedError

    def badPacket(self, error: VsockPacketError) -> None:
        self.log.warn("dropping malformed packet: {error}", error=str(error))
