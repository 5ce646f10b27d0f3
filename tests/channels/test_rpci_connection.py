"""The RPCI connection shared by the stream and vsock channels."""

from __future__ import annotations

from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_vmtools.channels.interfaces import ChannelError
from twisted_vmtools.channels.rpci_connection import RPCIConnection
from twisted_vmtools.channels.stream_protocols import GuestRPCIProtocol
from twisted_vmtools.codecs.datamap import PacketDecoder, VsockPacket


@implementer(IStreamClientEndpoint)
class SlowEndpoint:
    """Connections complete only when the test says so."""

    def __init__(self) -> None:
        self.pending: list[tuple[IProtocolFactory, Deferred[IProtocol]]] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        waiting: Deferred[IProtocol] = Deferred()
        self.pending.append((factory, waiting))
        return waiting

    def complete(self) -> tuple[GuestRPCIProtocol, StringTransport]:
        factory, waiting = self.pending.pop(0)
        protocol = factory.buildProtocol(UNIXAddress(b"vmx"))
        assert isinstance(protocol, GuestRPCIProtocol)
        transport = StringTransport()
        protocol.makeConnection(transport)
        waiting.callback(protocol)
        return protocol, transport


def sent(transport: StringTransport) -> list[bytes]:
    packets = PacketDecoder().feed(transport.value()[4:])  # after the preamble
    return [p.payload for p in packets if isinstance(p, VsockPacket) and p.payload is not None]


def connection(endpoint: SlowEndpoint, clock: Clock, **options: object) -> RPCIConnection:
    return RPCIConnection(endpoint, GuestRPCIProtocol, clock, name="vmx", timeout=30.0, **options)  # type: ignore[arg-type]


def test_calls_made_while_connecting_leave_in_call_order() -> None:
    endpoint = SlowEndpoint()
    rpci = connection(endpoint, Clock())
    replies = [rpci.call(b"info-set guestinfo.order %d" % n) for n in (1, 2, 3)]
    assert len(endpoint.pending) == 1  # one connect for all of them
    protocol, transport = endpoint.complete()
    assert sent(transport) == [b"info-set guestinfo.order %d" % n for n in (1, 2, 3)]
    results: list[object] = []
    for reply in replies:
        reply.addBoth(results.append)
    for n in (1, 2, 3):
        protocol.dataReceived(VsockPacket.data(b"1 %d" % n).encode())
    assert results == [b"1 1", b"1 2", b"1 3"]


def test_a_failed_connect_fails_the_waiting_calls_and_the_next_call_tries_again() -> None:
    endpoint = SlowEndpoint()
    rpci = connection(endpoint, Clock())
    results: list[object] = []
    rpci.call(b"a").addBoth(results.append)
    endpoint.pending.pop(0)[1].errback(ConnectionRefusedError("no VMX"))
    assert results and results[0].check(ChannelError)  # type: ignore[attr-defined]
    rpci.call(b"b")
    assert len(endpoint.pending) == 1


def test_timeout_fails_the_call_and_drops_the_connection() -> None:
    endpoint = SlowEndpoint()
    clock = Clock()
    rpci = connection(endpoint, clock)
    results: list[object] = []
    rpci.call(b"a").addBoth(results.append)
    _, transport = endpoint.complete()
    clock.advance(31)
    assert results and results[0].check(ChannelError)  # type: ignore[attr-defined]
    assert transport.disconnecting


def test_retry_lost_sends_again_on_a_new_connection() -> None:
    endpoint = SlowEndpoint()
    rpci = connection(endpoint, Clock(), retry_lost=True)
    results: list[object] = []
    rpci.call(b"a").addBoth(results.append)
    first, _ = endpoint.complete()
    first.connectionLost(Failure(ConnectionError("VMX went away")))
    second, transport = endpoint.complete()
    assert sent(transport) == [b"a"]
    second.dataReceived(VsockPacket.data(b"1 ok").encode())
    assert results == [b"1 ok"]


def test_no_calls_after_stop() -> None:
    endpoint = SlowEndpoint()
    rpci = connection(endpoint, Clock())
    waiting: list[object] = []
    rpci.call(b"a").addBoth(waiting.append)
    rpci.stop()
    assert waiting and waiting[0].check(ChannelError)  # type: ignore[attr-defined]
    late: list[object] = []
    rpci.call(b"b").addBoth(late.append)
    assert late[0].check(ChannelError)  # type: ignore[attr-defined]
    assert len(endpoint.pending) == 1  # the stopped connection never connects again
