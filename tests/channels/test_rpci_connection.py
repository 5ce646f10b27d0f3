"""The RPCI connection shared by the stream and vsock channels: its machine's transitions, on a Clock."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from tests.support import failure_of, result_of
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
    reply = rpci.call(b"a")
    endpoint.pending.pop(0)[1].errback(ConnectionRefusedError("no VMX"))
    assert failure_of(reply).check(ChannelError)
    rpci.call(b"b")
    assert len(endpoint.pending) == 1


def test_timeout_fails_the_call_and_drops_the_connection() -> None:
    endpoint = SlowEndpoint()
    clock = Clock()
    rpci = connection(endpoint, clock)
    reply = rpci.call(b"a")
    _, transport = endpoint.complete()
    clock.advance(31)
    assert failure_of(reply).check(ChannelError)
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


def lose(protocol: GuestRPCIProtocol) -> None:
    protocol.connectionLost(Failure(ConnectionError("VMX went away")))


def test_a_live_connection_carries_every_call_and_a_loss_makes_the_next_call_reconnect() -> None:
    endpoint = SlowEndpoint()
    rpci = connection(endpoint, Clock())
    first = rpci.call(b"a")
    protocol, transport = endpoint.complete()
    second = rpci.call(b"b")  # straight onto the live connection
    assert endpoint.pending == [] and sent(transport) == [b"a", b"b"]
    protocol.dataReceived(VsockPacket.data(b"1 a").encode() + VsockPacket.data(b"1 b").encode())
    assert (result_of(first), result_of(second)) == (b"1 a", b"1 b")
    lose(protocol)
    rpci.call(b"c")
    assert len(endpoint.pending) == 1


def test_a_call_in_flight_when_the_connection_is_lost_fails_without_retry() -> None:
    endpoint = SlowEndpoint()
    rpci = connection(endpoint, Clock())
    reply = rpci.call(b"a")
    protocol, _ = endpoint.complete()
    lose(protocol)
    assert "lost" in failure_of(reply).getErrorMessage()
    assert endpoint.pending == []  # nothing is sent again, and nothing connects until the next call


def test_retry_lost_sends_again_only_once() -> None:
    endpoint = SlowEndpoint()
    rpci = connection(endpoint, Clock(), retry_lost=True)
    reply = rpci.call(b"a")
    first, _ = endpoint.complete()
    lose(first)
    second, _ = endpoint.complete()
    lose(second)
    assert failure_of(reply).check(ChannelError)
    assert endpoint.pending == []


def test_a_call_that_waited_for_the_connection_times_out_with_a_channel_error() -> None:
    endpoint = SlowEndpoint()
    clock = Clock()
    rpci = connection(endpoint, clock)
    reply = rpci.call(b"a")
    outcomes: list[object] = []
    reply.addBoth(outcomes.append)  # the caller's callbacks come before the connection exists
    clock.advance(20)
    _, transport = endpoint.complete()
    clock.advance(29)
    assert outcomes == []  # the timeout runs from sending
    clock.advance(2)
    assert len(outcomes) == 1 and outcomes[0].check(ChannelError)  # type: ignore[attr-defined]
    assert "within 30.0 s" in outcomes[0].getErrorMessage()  # type: ignore[attr-defined]
    assert transport.disconnecting


def test_a_reply_after_the_timeout_is_dropped_and_the_next_call_uses_a_new_connection() -> None:
    endpoint = SlowEndpoint()
    clock = Clock()
    rpci = connection(endpoint, clock)
    reply = rpci.call(b"a")
    protocol, _ = endpoint.complete()
    clock.advance(31)
    assert failure_of(reply).check(ChannelError)
    protocol.dataReceived(VsockPacket.data(b"1 late").encode())  # no AlreadyCalledError
    lose(protocol)  # the close the timeout asked for
    rpci.call(b"b")
    second, transport = endpoint.complete()
    assert sent(transport) == [b"b"]


def test_stop_while_a_call_is_in_flight_closes_the_connection_and_refuses_later_calls() -> None:
    endpoint = SlowEndpoint()
    rpci = connection(endpoint, Clock(), retry_lost=True)
    reply = rpci.call(b"a")
    protocol, transport = endpoint.complete()
    rpci.stop()
    assert transport.disconnecting
    lose(protocol)
    assert failure_of(reply).check(ChannelError)  # not sent again after stop
    assert endpoint.pending == []
    assert "stopped" in failure_of(rpci.call(b"b")).getErrorMessage()


def test_a_connection_made_after_stop_is_closed_at_once() -> None:
    endpoint = SlowEndpoint()
    rpci = connection(endpoint, Clock())
    reply = rpci.call(b"a")
    rpci.stop()
    assert "stopped" in failure_of(reply).getErrorMessage()
    protocol, transport = endpoint.complete()
    assert transport.disconnecting and sent(transport) == []
    lose(protocol)  # reported to a stopped machine: nothing happens
    rpci.stop()  # twice is harmless


def test_a_caller_calling_again_from_its_errback_starts_a_new_connection() -> None:
    endpoint = SlowEndpoint()
    rpci = connection(endpoint, Clock())
    again: list[Deferred[bytes]] = []
    rpci.call(b"a").addErrback(lambda _: again.append(rpci.call(b"a again")))
    endpoint.pending.pop(0)[1].errback(ConnectionRefusedError("no VMX"))
    assert len(again) == 1 and len(endpoint.pending) == 1
    protocol, transport = endpoint.complete()
    assert sent(transport) == [b"a again"]


@implementer(IStreamClientEndpoint)
class AtOnceEndpoint:
    """Connects (or fails) before `connect` returns, as an in-memory endpoint may."""

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse
        self.transports: list[StringTransport] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        if self.refuse:
            return defer.fail(ConnectionRefusedError("no VMX"))
        protocol = factory.buildProtocol(UNIXAddress(b"vmx"))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.transports.append(transport)
        return defer.succeed(protocol)


def test_an_endpoint_that_connects_at_once() -> None:
    endpoint = AtOnceEndpoint(refuse=False)
    rpci = RPCIConnection(endpoint, GuestRPCIProtocol, Clock(), name="vmx", timeout=30.0)
    rpci.call(b"a")
    rpci.call(b"b")
    assert len(endpoint.transports) == 1 and sent(endpoint.transports[0]) == [b"a", b"b"]


def test_an_endpoint_that_fails_at_once() -> None:
    endpoint = AtOnceEndpoint(refuse=True)
    rpci = RPCIConnection(endpoint, GuestRPCIProtocol, Clock(), name="vmx", timeout=30.0)
    assert "cannot reach the VMX at vmx" in failure_of(rpci.call(b"a")).getErrorMessage()
    endpoint.refuse = False
    rpci.call(b"b")
    assert sent(endpoint.transports[0]) == [b"b"]


def test_a_connection_lost_before_the_endpoint_reports_it_fails_the_waiting_calls() -> None:
    endpoint = SlowEndpoint()
    rpci = connection(endpoint, Clock())
    reply = rpci.call(b"a")
    factory, waiting = endpoint.pending.pop(0)
    protocol = factory.buildProtocol(UNIXAddress(b"vmx"))
    assert isinstance(protocol, GuestRPCIProtocol)
    protocol.makeConnection(StringTransport())
    lose(protocol)
    waiting.callback(protocol)
    assert "closed at once" in failure_of(reply).getErrorMessage()
    rpci.call(b"b")
    assert len(endpoint.pending) == 1


def test_a_caller_calling_again_from_its_errback_after_stop_is_refused_too() -> None:
    endpoint = SlowEndpoint()
    rpci = connection(endpoint, Clock())
    again: list[Deferred[bytes]] = []
    rpci.call(b"a").addErrback(lambda _: again.append(rpci.call(b"a again")))
    rpci.stop()  # the errback runs inside the transition to "stopped"; its call waits for it to end
    assert len(again) == 1 and "stopped" in failure_of(again[0]).getErrorMessage()
    assert len(endpoint.pending) == 1  # no second connect


def test_a_retried_call_waits_for_the_new_connection_behind_calls_made_meanwhile() -> None:
    endpoint = SlowEndpoint()
    rpci = connection(endpoint, Clock(), retry_lost=True)
    first = rpci.call(b"a")
    protocol, _ = endpoint.complete()
    lose(protocol)  # "a" goes again, on a connection being made
    second = rpci.call(b"b")
    replacement, transport = endpoint.complete()
    assert sent(transport) == [b"a", b"b"]
    replacement.dataReceived(VsockPacket.data(b"1 a").encode() + VsockPacket.data(b"1 b").encode())
    assert (result_of(first), result_of(second)) == (b"1 a", b"1 b")
