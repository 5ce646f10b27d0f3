"""PacketProtocol's transport: whole 520 KB packets per read and send, sent at once when nothing waits."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater

from twisted_vmtools.codecs.datamap import VsockPacket
from twisted_vmtools.framing import STREAM_BUFFER, PacketProtocol, _unsent, widen, widen_socket


class _SocketTransport(FileDescriptor):
    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.socket = sock

    def getHandle(self) -> socket.socket:
        return self.socket


def test_widen_raises_the_read_size_the_send_limit_and_the_kernel_buffers() -> None:
    left, right = socket.socketpair()
    try:
        transport = _SocketTransport(left)
        assert transport.SEND_LIMIT < STREAM_BUFFER  # Twisted's 128 KiB would split a packet over turns
        widen(transport)
        assert transport.bufferSize == STREAM_BUFFER
        assert transport.SEND_LIMIT == STREAM_BUFFER
        assert FileDescriptor.SEND_LIMIT < STREAM_BUFFER  # the instance only, not every transport
        assert left.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= STREAM_BUFFER
        assert left.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= STREAM_BUFFER
    finally:
        left.close()
        right.close()


def test_widen_leaves_a_transport_without_a_socket_alone() -> None:
    class Memory:
        pass

    transport = Memory()
    widen(transport)
    assert vars(transport) == {}


class _Sender(PacketProtocol):
    def packetReceived(self, packet: VsockPacket) -> None:
        pass


async def _adopted(left: socket.socket) -> _Sender:
    made: Deferred[_Sender] = Deferred()

    class Made(_Sender):
        def connectionMade(self) -> None:
            made.callback(self)

    reactor.adoptStreamConnection(left.fileno(), socket.AF_UNIX, Factory.forProtocol(Made))  # type: ignore[attr-defined]
    return await made


async def _read_all(sock: socket.socket, size: int) -> bytes:
    sock.setblocking(False)
    got = bytearray()
    while len(got) < size:
        try:
            got += sock.recv(size - len(got))
        except BlockingIOError:
            await deferLater(reactor, 0.001, lambda: None)  # type: ignore[arg-type]
    return bytes(got)


@pytest_twisted.ensureDeferred
async def test_packets_sent_at_once_keep_their_order_behind_buffered_writes() -> None:
    left, right = socket.socketpair()
    protocol = await _adopted(left)
    transport = protocol.transport
    packets = [VsockPacket.data(bytes([n]) * 700_000) for n in range(1, 7)]  # several kernel buffers' worth
    transport.write(b"PRE!")  # type: ignore[union-attr]  # buffered by Twisted: the packets must wait behind it
    for packet in packets[:3]:
        protocol.sendPacket(packet)
    wire = b"PRE!" + b"".join(packet.encode() for packet in packets)
    received = _read_all(right, len(wire) - sum(len(p.encode()) for p in packets[3:]))
    first = await received
    for packet in packets[3:]:  # Twisted's buffer has drained: these go out at once
        protocol.sendPacket(packet)
    rest = await _read_all(right, len(wire) - len(first))
    assert first + rest == wire
    transport.loseConnection()  # type: ignore[union-attr]
    right.close()
    left.close()


def test_frame_is_the_encoding_in_pieces() -> None:
    for packet in (VsockPacket.data(b"OK x"), VsockPacket.ping(), VsockPacket.data(b"", fast_close=True)):
        assert b"".join(packet.frame()) == packet.encode()
    big = b"f " + bytes(100_000)
    assert VsockPacket.data(big).frame()[1] is big  # not copied


@pytest_twisted.ensureDeferred
async def test_a_large_packet_is_read_to_its_end_at_once_and_no_further() -> None:
    left, right = socket.socketpair()
    widen_socket(right)
    calls: list[int] = []
    got: list[VsockPacket] = []
    made: Deferred[None] = Deferred()

    class Reader(PacketProtocol):
        def connectionMade(self) -> None:
            self.transport.bufferSize = 1000  # type: ignore[union-attr]  # the reactor's own reads: small
            made.callback(None)

        def dataReceived(self, data: bytes) -> None:
            calls.append(len(data))
            super().dataReceived(data)

        def packetReceived(self, packet: VsockPacket) -> None:
            got.append(packet)

    big, small = VsockPacket.data(b"\x5a" * 300_000), VsockPacket.data(b"next")
    right.sendall(big.encode() + small.encode())  # both wait in the socket before the first read
    transport = reactor.adoptStreamConnection(  # type: ignore[attr-defined]
        left.fileno(), socket.AF_UNIX, Factory.forProtocol(Reader)
    )
    await made
    while len(got) < 2:
        await deferLater(reactor, 0.001, lambda: None)  # type: ignore[arg-type]
    assert got == [big, small]
    # The first reactor read took 1,000 bytes; the rest of the big packet came in the same call,
    # and the small one was left to the reactor's next read.
    assert calls[:2] == [1000, len(small.encode())]
    del transport
    right.close()
    left.close()


@pytest.mark.parametrize("sent", [0, 1, 7, 8, 9, 20, 25])
def test_what_a_partial_send_leaves_is_the_rest_in_order(sent: int) -> None:
    pieces: list[bytes | memoryview] = [b"12345678", memoryview(b"abcdefghijkl"), b"XYZ", b"!!"]
    rest = _unsent(pieces, sent)
    assert b"".join(rest) == b"".join(bytes(piece) for piece in pieces)[sent:]
    assert all(type(piece) is bytes for piece in rest)
    if sent <= 20:
        assert any(piece is pieces[2] for piece in rest)  # a bytes piece not yet begun is not copied
