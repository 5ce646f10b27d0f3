"""A Twisted protocol base for vsock-framed streams: the guest's channels and the VMX's listener both use it."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from .codecs.datamap import PacketDecoder, VsockPacket, VsockPacketError

STREAM_BUFFER = 1 << 20  # a 520 KB HGFS packet in one or two reads, not eight
EAGER_READ_MIN = 64 << 10  # a packet this large, once begun, is read on at once rather than after a reactor turn


def widen(transport: object) -> None:
    """Read, write and buffer whole large packets at a time (HGFS transfers), where the transport allows.

    Twisted reads 64 KiB per reactor turn, sends at most 128 KiB per turn, and
    the kernel's socket buffers are about 200 KiB: a 520 KB packet then takes
    many turns on each side.
    """
    if hasattr(transport, "bufferSize"):
        transport.bufferSize = STREAM_BUFFER
    if hasattr(transport, "SEND_LIMIT"):
        transport.SEND_LIMIT = STREAM_BUFFER
    handle = getattr(transport, "getHandle", None)
    sock = handle() if handle is not None else None
    if isinstance(sock, socket.socket):
        widen_socket(sock)


def widen_socket(sock: socket.socket) -> None:
    """The kernel buffers of a stream socket carrying whole packets (also what the benchmarks' ceiling uses)."""
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, STREAM_BUFFER)
        except OSError:
            pass  # a socket type without these options keeps its own


class PacketProtocol(Protocol):
    """Splits the byte stream into `VsockPacket`s.

    A packet whose content does not decode goes to `badPacket` and the
    stream goes on.  A length over the limit means the framing is lost, so
    the connection is closed.
    """

    log = Logger()

    def __init__(self) -> None:
        self._decoder = PacketDecoder()
        self._socket: socket.socket | None = None

    def makeConnection(self, transport: object) -> None:
        widen(transport)
        if isinstance(transport, tcp.Connection):  # Twisted's own TCP and Unix socket transports
            self._socket = transport.socket
        super().makeConnection(transport)  # type: ignore[arg-type]

    def dataReceived(self, data: bytes) -> None:
        self._deliver(data)
        # A large packet arrives in many pieces while its sender is still writing: take the
        # rest of it as it comes, without a reactor turn per piece.  Never past that packet.
        while self._socket is not None and self._decoder.missing:
            if self._decoder.buffered + self._decoder.missing < EAGER_READ_MIN:
                return  # a small packet: not worth a system call that may find nothing
            if getattr(self.transport, "disconnecting", True):
                return
            try:
                more = self._socket.recv(self._decoder.missing)
            except OSError:  # nothing there yet (or an error the reactor's own read will report)
                return
            if not more:
                return  # the end of the stream: the reactor's next read sees it too
            self._deliver(more)

    def _deliver(self, data: bytes) -> None:
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
        send_pieces(self.transport, self._socket, packet.frame())

    def packetReceived(self, packet: VsockPacket) -> None:
        raise NotImplementedError

    def badPacket(self, error: VsockPacketError) -> None:
        self.log.warn("dropping malformed packet: {error}", error=str(error))


def send_pieces(transport: Any, sock: socket.socket | None, pieces: Sequence[bytes | memoryview]) -> None:
    """Send one message made of ``pieces``: now and gathered if nothing waits before it, else through Twisted.

    When nothing waits in Twisted's buffers the message goes out at once, in
    order, gathered from its pieces: no copy joining head and payload, and no
    reactor turn before the send (with one packet in flight each way, both
    show in a transfer's throughput).  ``sock`` is the transport's socket, or
    None where there is none to write to directly.
    """
    if sock is None or not drained(transport):
        transport.writeSequence(pieces)
        return
    try:
        sent = sock.sendmsg(pieces)
    except OSError:
        sent = 0  # would block; or an error the transport's own write meets and reports
    if sent < sum(len(piece) for piece in pieces):
        transport.writeSequence(_unsent(pieces, sent))


def _unsent(pieces: Sequence[bytes | memoryview], sent: int) -> list[bytes]:
    """What is left of ``pieces`` after ``sent`` bytes, as bytes for Twisted's buffer.

    Only the piece cut by the send is copied (a whole bytes piece is kept as it is): with
    several replies in flight, the kernel buffer often takes part of a 520 KB packet.
    """
    rest: list[bytes] = []
    for piece in pieces:
        if sent >= len(piece):
            sent -= len(piece)
            continue
        rest.append(piece if not sent and isinstance(piece, bytes) else bytes(piece[sent:]))
        sent = 0
    return rest


def drained(transport: object) -> bool:
    """The transport is open and holds nothing unsent (Twisted's buffers, TLS), so a send now keeps the order."""
    return bool(
        getattr(transport, "connected", False)
        and not getattr(transport, "disconnecting", True)
        and not getattr(transport, "TLS", True)
        and not getattr(transport, "dataBuffer", True)
        and not getattr(transport, "_tempDataLen", True)  # FileDescriptor's list of writes not yet joined
    )
