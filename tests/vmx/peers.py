"""A raw peer of the simulated VMX: whatever an unprivileged local program could send."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from tests.support import Harness
from twisted_vmtools.codecs.datamap import VsockPacket, VsockPacketError
from twisted_vmtools.framing import PacketProtocol


class RawPeer(PacketProtocol):
    """Sends ``preamble`` on connecting, then only what the test writes; keeps what comes back."""

    def __init__(self, preamble: bytes, answer: Callable[[bytes], bytes | None] | None = None) -> None:
        super().__init__()
        self.preamble = preamble
        self.answer = answer
        self.packets: list[VsockPacket] = []
        self.lost = False

    def connectionMade(self) -> None:
        if self.preamble:
            self.transport.write(self.preamble)  # type: ignore[union-attr]

    def packetReceived(self, packet: VsockPacket) -> None:
        self.packets.append(packet)
        reply = self.answer(packet.payload) if self.answer and packet.payload is not None else None
        if reply is not None:
            self.send(reply)

    def badPacket(self, error: VsockPacketError) -> None:
        raise AssertionError(f"the VMX sent a malformed packet: {error}")

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.lost = True

    def send(self, payload: bytes) -> None:
        self.sendPacket(VsockPacket.data(payload))

    def write(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def close(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


def like_a_guest(command: bytes) -> bytes:
    """What a well-behaved guest answers to each command of the VMX's greeting and pings."""
    return b"OK ATR toolbox" if command == b"reset" else b"OK "


def connect_raw(
    harness: Harness, preamble: bytes, answer: Callable[[bytes], bytes | None] | None = None
) -> RawPeer:
    peers: list[object] = []
    harness.endpoint.connect(Factory.forProtocol(lambda: RawPeer(preamble, answer))).addCallback(peers.append)
    harness.settle()
    peer = peers[0]
    assert isinstance(peer, RawPeer)
    return peer
