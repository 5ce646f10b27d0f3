"""A raw peer of the simulated VMX: whatever an unprivileged local program could send."""

from __future__ import annotations

from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from support import Harness
from twisted_vmtools.channels.framing import PacketProtocol
from twisted_vmtools.codecs.datamap import VsockPacket, VsockPacketError


class RawPeer(PacketProtocol):
    """Sends ``preamble`` on connecting, then only what the test writes; keeps what comes back."""

    def __init__(self, preamble: bytes) -> None:
        super().__init__()
        self.preamble = preamble
        self.packets: list[VsockPacket] = []
        self.lost = False

    def connectionMade(self) -> None:
        if self.preamble:
            self.transport.write(self.preamble)  # type: ignore[union-attr]

    def packetReceived(self, packet: VsockPacket) -> None:
        self.packets.append(packet)

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


def connect_raw(harness: Harness, preamble: bytes) -> RawPeer:
    peers: list[RawPeer] = []
    harness.endpoint.connect(Factory.forProtocol(lambda: RawPeer(preamble))).addCallback(peers.append)
    harness.settle()
    return peers[0]
