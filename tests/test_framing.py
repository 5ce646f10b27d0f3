"""widen: a stream carrying 520 KB packets reads, sends and buffers a whole one at a time."""

from __future__ import annotations

import socket

from twisted.internet.abstract import FileDescriptor

from twisted_vmtools.framing import STREAM_BUFFER, widen


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
