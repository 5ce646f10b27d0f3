"""The guest tools and the simulated VMX over the stream channel, in memory (iosim + Clock)."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from tests.support import Harness
from twisted_vmtools.codecs.datamap import PacketType, VsockPacket, decode_packet
from twisted_vmtools.protocols.rpci import RPCIError
from twisted_vmtools.vmx.model import NOT_RUNNING, RUNNING
from twisted_vmtools.vmx.tclo_queue import GuestGone, TCLOTimeout


def tclo_log(harness: Harness) -> list[tuple[str, bytes]]:
    return [(r.direction, r.data) for r in harness.vmx.records if r.direction.startswith("tclo")]


def test_connect_greets_and_turns_running() -> None:
    harness = Harness()
    assert harness.vmx.status()["guest.toolsRunningStatus"] == NOT_RUNNING
    harness.start()
    assert tclo_log(harness)[:4] == [
        ("tclo-out", b"reset"),
        ("tclo-in", b"OK ATR toolbox"),
        ("tclo-out", b"Capabilities_Register"),
        ("tclo-in", b"OK "),
    ]
    assert tclo_log(harness)[-2:] == [("tclo-out", b"ping"), ("tclo-in", b"OK ")]
    assert harness.vmx.status()["guest.toolsRunningStatus"] == RUNNING
    assert harness.vmx.guestinfo["guestinfo.vmtools.versionString"]
    # reset made the guest announce its loop and version, as vmtoolsd does.
    assert any(r.data.startswith(b"vmx.capability.unified_loop toolbox") for r in harness.vmx.records)


def test_capabilities_register_announces_the_installed_features_capabilities() -> None:
    harness = Harness()
    harness.start()
    assert harness.send(b"Capabilities_Register") == b"OK "
    status = harness.vmx.status()
    assert status["guest.toolsVersion"] == "2147483647"
    assert status["guest.toolsVersionStatus"] == "guestToolsUnmanaged"
    capabilities = status["guest.toolsCapabilities"]
    assert isinstance(capabilities, dict)
    # Each from the feature providing it: the core, power operations, the HGFS server.
    assert capabilities == {
        "guest_conf_directory": "/etc/vmware-tools", "statechange": "", "softpowerop_retry": "",
        "hgfs_server": "toolbox 1",
    }


def test_set_option() -> None:
    harness = Harness(primary_ip="198.51.100.7")
    harness.start()
    assert harness.send(b"Set_Option broadcastIP 1") == b"OK "
    assert harness.vmx.status()["guest.ipAddress"] == "198.51.100.7"
    assert harness.send(b"Set_Option synctime 0") == b"OK "
    assert harness.send(b"Set_Option bogusOption 1") == b"OK "
    assert harness.send(b"Set_Option broadcastIP") == b"ERROR Unknown or invalid option"
    assert harness.send(b"Set_Option") == b"ERROR Unknown or invalid option"
    core = harness.service.core
    assert core is not None and core.options[b"synctime"] == b"0"


def test_unknown_command_and_failing_handler() -> None:
    harness = Harness()
    harness.start()
    assert harness.send(b"No_Such_Command with args") == b"ERROR Unknown Command"

    def broken(args: bytes) -> bytes:
        raise RuntimeError("handler exploded")

    harness.service.dispatcher.register(b"broken", broken)
    assert harness.send(b"broken") == b"ERROR handler exploded"
    assert harness.send(b"ping") == b"OK "


def test_rpci_guestinfo_round_trip() -> None:
    harness = Harness()
    harness.start()
    assert harness.rpci(b"info-set guestinfo.k some value") == b""
    assert harness.rpci(b"info-get guestinfo.k") == b"some value"
    assert harness.rpci(b"info-get guestinfo.k\x00") == b"some value"
    missing = harness.rpci(b"info-get guestinfo.missing")
    assert getattr(missing, "value", None).__class__ is RPCIError
    unknown = harness.rpci(b"no.such.rpc")
    assert unknown.value.reply == b"Unknown command"  # type: ignore[attr-defined]


def test_pending_handler_holds_the_channel_until_the_vmx_times_out() -> None:
    harness = Harness(tclo_timeout=10.0)
    harness.start()
    never: Deferred[bytes] = Deferred()
    harness.service.dispatcher.register(b"hang", lambda args: never)
    hung: list[object] = []
    queued: list[object] = []
    harness.vmx.send(b"hang").addBoth(hung.append)
    harness.vmx.send(b"ping", timeout=60).addBoth(queued.append)
    harness.settle(5)
    # The guest takes several commands at once: ping was answered, but its reply waits in
    # command order behind the pending one.
    assert hung == [] and queued == [] and harness.vmx.tclo.in_flight == 2
    harness.settle(6)
    assert hung and hung[0].check(TCLOTimeout)  # type: ignore[attr-defined]
    # It was sent on the stream the VMX dropped: lost with it, not sent twice.
    assert queued and queued[0].check(GuestGone)  # type: ignore[attr-defined]
    # The stream was out of step, so the VMX dropped it; the guest reconnects, gets reset.
    resets_before = sum(1 for d, data in tclo_log(harness) if data == b"reset")
    harness.settle(1)
    harness.settle(1)
    assert sum(1 for d, data in tclo_log(harness) if data == b"reset") > resets_before
    assert harness.send(b"ping") == b"OK "


def test_vmx_going_away_and_coming_back() -> None:
    harness = Harness()
    harness.start()
    harness.endpoint.refuse = True
    harness.endpoint.drop_all()
    harness.settle(20)
    assert harness.vmx.status()["guest.toolsRunningStatus"] == NOT_RUNNING
    assert harness.service.running
    harness.endpoint.refuse = False
    harness.settle(10)  # back-off is capped at 5 s
    assert harness.vmx.status()["guest.toolsRunningStatus"] == RUNNING
    assert harness.send(b"ping") == b"OK "


def test_heartbeat_keeps_running_and_silence_goes_stale() -> None:
    harness = Harness()
    harness.start()
    pump = harness.endpoint.pumps[0]
    sent_before = len(pump.clientIO.stream)  # type: ignore[attr-defined]
    for _ in range(30):
        harness.settle(1)
    assert harness.vmx.running
    # The guest freezes (nothing moves any more): 15 s later the tools are not running.
    harness.clock.advance(16)
    assert not harness.vmx.running
    assert sent_before >= 0


def test_malformed_packet_from_vmx_gets_an_error_reply() -> None:
    harness = Harness()
    harness.start()
    tclo_pump = harness.endpoint.pumps[0]
    server = tclo_pump.serverIO  # the VMX side's transport
    # A well-framed packet whose DataMap is garbage (unknown field type 9).
    server.write(b"\x00\x00\x00\x08" + b"\x00\x00\x00\x09\x00\x00\x00\x01")
    harness.settle()
    replies = [r.data for r in harness.vmx.records if r.direction == "tclo-in"]
    assert replies[-1] == b"ERROR malformed packet"
    # That reply answered nothing the VMX's queue sent: the VMX drops the stream, the guest reconnects.
    harness.settle(10)
    assert harness.send(b"ping") == b"OK "


def test_heartbeat_packets_are_pings() -> None:
    packet = decode_packet(VsockPacket.ping().encode())
    assert packet.type is PacketType.PING and packet.payload is None


def test_a_failing_handler_still_gets_a_reply_out() -> None:
    from twisted.internet import defer
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from twisted_vmtools.channels.stream_protocols import GuestTCLOProtocol
    from twisted_vmtools.codecs.datamap import PacketDecoder

    class Broken:
        def handle(self, command: bytes) -> Deferred[bytes]:
            return defer.fail(RuntimeError("no"))

    protocol = GuestTCLOProtocol(Broken(), Clock())  # type: ignore[arg-type]
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(VsockPacket.data(b"ping").encode())
    written = transport.value()[4:]  # after the preamble
    (reply,) = PacketDecoder().feed(written)
    assert isinstance(reply, VsockPacket) and reply.payload == b"ERROR no"


def test_a_handler_answering_after_the_connection_closed_sends_nothing_and_starts_no_heartbeat() -> None:
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.python.failure import Failure

    from twisted_vmtools.channels.stream_protocols import GuestTCLOProtocol

    answer: Deferred[bytes] = Deferred()

    class Slow:
        def handle(self, command: bytes) -> Deferred[bytes]:
            return answer

    clock = Clock()
    protocol = GuestTCLOProtocol(Slow(), clock)  # type: ignore[arg-type]
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(VsockPacket.data(b"Capabilities_Register").encode() + VsockPacket.data(b"ping").encode())
    transport.clear()
    protocol.connectionLost(Failure(ConnectionError("the VMX went away")))
    answer.callback(b"OK ")  # the reply after close: dropped, and the queued ping with it
    clock.advance(5)
    assert transport.value() == b"" and clock.getDelayedCalls() == []


def test_stopping_the_vmx_fails_what_is_still_queued() -> None:
    harness = Harness()
    harness.start()
    never: Deferred[bytes] = Deferred()
    harness.service.dispatcher.register(b"hang", lambda args: never)
    results: list[object] = []
    harness.vmx.send(b"hang").addBoth(results.append)
    harness.vmx.send(b"ping").addBoth(results.append)
    harness.settle()
    harness.vmx.stop()
    assert len(results) == 2 and all(r.check(GuestGone) for r in results)  # type: ignore[attr-defined]


def test_cancelling_the_command_in_flight_restarts_the_stream() -> None:
    # The guest is still working on the cancelled command; its late reply must not be
    # taken for the answer to the next one.
    harness = Harness()
    harness.start()
    slow: Deferred[bytes] = Deferred()
    harness.service.dispatcher.register(b"Slow_Command", lambda args: slow)
    cancelled = harness.vmx.send(b"Slow_Command")
    cancelled.addErrback(lambda failure: None)
    harness.settle()
    cancelled.cancel()
    replies: list[object] = []
    harness.vmx.send(b"Set_Option broadcastIP 1").addBoth(replies.append)
    slow.callback(b"slow-result")
    harness.settle(1)
    harness.settle(1)
    assert replies == [b"OK "]
    assert harness.vmx.status()["guest.ipAddress"] == "198.51.100.7"


def test_the_rpc_log_is_stamped_with_the_vmx_clock() -> None:
    harness = Harness()
    harness.clock.advance(1234.5)
    harness.start()
    assert harness.vmx.records and {r.when for r in harness.vmx.records} == {1234.5}


def test_the_guest_says_how_many_commands_it_takes_and_the_vmx_sends_that_many() -> None:
    from twisted_vmtools.channels.stream_protocols import STREAM_IN_FLIGHT

    harness = Harness()
    harness.start()
    assert harness.vmx.tclo.depth == STREAM_IN_FLIGHT
    gates = [Deferred[bytes]() for _ in range(STREAM_IN_FLIGHT)]
    for i, gate in enumerate(gates):
        harness.service.dispatcher.register(b"wait%d" % i, lambda args, gate=gate: gate)  # type: ignore[misc]
    answers: list[bytes] = []
    for i in reversed(range(STREAM_IN_FLIGHT)):
        harness.vmx.send(b"wait%d" % i).addCallback(answers.append)
    harness.settle(1)
    assert harness.vmx.tclo.in_flight == STREAM_IN_FLIGHT  # all handled at once in the guest
    for gate in gates:  # they finish in the opposite order to the one they were sent in
        gate.callback(b"%d" % gates.index(gate))
    harness.settle(1)
    assert answers == [b"OK %d" % i for i in reversed(range(STREAM_IN_FLIGHT))]
