"""The guest's TCLO stream protocol: several commands in flight, replies strictly in command order."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from twisted_vmtools.channels.stream_protocols import STREAM_IN_FLIGHT, GuestTCLOProtocol
from twisted_vmtools.channels.vsock import VsockTCLOProtocol
from twisted_vmtools.codecs.datamap import PacketDecoder, PacketType, VsockPacket


class Handlers:
    """Answers ``now`` at once and anything else when the test fires its Deferred."""

    def __init__(self) -> None:
        self.waiting: dict[bytes, Deferred[bytes]] = {}
        self.started: list[bytes] = []

    def handle(self, command: bytes) -> Deferred[bytes]:
        self.started.append(command)
        if command.startswith(b"now"):
            return succeed(b"OK " + command)
        self.waiting[command] = Deferred()
        return self.waiting[command]


def connect(protocol_class: type[GuestTCLOProtocol] = GuestTCLOProtocol) -> tuple[Handlers, StringTransport,
                                                                                   GuestTCLOProtocol]:
    handlers = Handlers()
    protocol = protocol_class(handlers, Clock())  # type: ignore[arg-type]
    transport = StringTransport()
    protocol.makeConnection(transport)
    transport.clear()  # the preamble
    return handlers, transport, protocol


def commands(protocol: GuestTCLOProtocol, *names: bytes) -> None:
    protocol.dataReceived(b"".join(VsockPacket.data(name).encode() for name in names))


def sent(transport: StringTransport) -> list[VsockPacket]:
    packets = PacketDecoder().feed(transport.value())
    transport.clear()
    return [p for p in packets if isinstance(p, VsockPacket) and p.type is PacketType.DATA]


def test_replies_leave_in_command_order_when_handlers_finish_out_of_order() -> None:
    handlers, transport, protocol = connect()
    commands(protocol, b"slow-1", b"slow-2", b"now-3")
    assert handlers.started == [b"slow-1", b"slow-2", b"now-3"]  # all three handled at once
    assert sent(transport) == []  # now-3 is answered, but waits behind the two before it
    handlers.waiting[b"slow-2"].callback(b"OK two")
    assert sent(transport) == []
    handlers.waiting[b"slow-1"].callback(b"OK one")
    assert [p.payload for p in sent(transport)] == [b"OK one", b"OK two", b"OK now-3"]


def test_the_first_reply_advertises_how_many_commands_may_be_in_flight() -> None:
    handlers, transport, protocol = connect()
    commands(protocol, b"now-reset", b"now-ping")
    first, second = sent(transport)
    assert first.max_in_flight == STREAM_IN_FLIGHT > 1 and second.max_in_flight == 0


def test_commands_beyond_the_advertised_number_wait_for_room() -> None:
    handlers, transport, protocol = connect()
    names = [b"slow-%d" % i for i in range(STREAM_IN_FLIGHT + 2)]
    commands(protocol, *names)
    assert handlers.started == names[:STREAM_IN_FLIGHT]
    handlers.waiting[names[1]].callback(b"OK 1")  # not the oldest: no room is made
    assert handlers.started == names[:STREAM_IN_FLIGHT]
    handlers.waiting[names[0]].callback(b"OK 0")
    assert handlers.started == names  # two replies out, two more started
    assert [p.payload for p in sent(transport)] == [b"OK 0", b"OK 1"]


def test_a_malformed_command_keeps_its_place_in_the_order() -> None:
    handlers, transport, protocol = connect()
    commands(protocol, b"slow-1")
    protocol.dataReceived(b"\0\0\0\4garb")  # an intact frame, unreadable content
    commands(protocol, b"now-3")
    handlers.waiting[b"slow-1"].callback(b"OK one")
    assert [p.payload for p in sent(transport)] == [b"OK one", b"ERROR malformed packet", b"OK now-3"]


def test_vsock_to_a_real_vmx_advertises_nothing_and_takes_one_command_at_a_time() -> None:
    handlers, transport, protocol = connect(VsockTCLOProtocol)
    commands(protocol, b"slow-1", b"now-2")
    assert handlers.started == [b"slow-1"]
    handlers.waiting[b"slow-1"].callback(b"OK one")
    assert handlers.started == [b"slow-1", b"now-2"]
    assert [(p.payload, p.max_in_flight) for p in sent(transport)] == [(b"OK one", 0), (b"OK now-2", 0)]
