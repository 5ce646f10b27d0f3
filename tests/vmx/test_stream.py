"""One VM, one guest: a second TCLO stream never orphans the live one, and status tells the truth."""

from __future__ import annotations

from tests.support import Harness
from tests.vmx.peers import connect_raw, like_a_guest
from twisted_vmtools.codecs.stream import StreamKind
from twisted_vmtools.vmx.model import NOT_RUNNING, RUNNING

TCLO = StreamKind.TCLO.preamble
RPCI = StreamKind.RPCI.preamble


def test_a_second_tclo_stream_is_refused_and_the_live_guest_kept() -> None:
    harness = Harness()
    harness.start()
    live = harness.vmx.status()["vmx.tcloChannels"]
    intruder = connect_raw(harness, TCLO, like_a_guest)
    assert intruder.lost and intruder.packets == []  # closed before any command reached it
    intruder_too = connect_raw(harness, TCLO)
    intruder_too.close()  # the attack of the issue: preamble, then close
    harness.settle()
    assert harness.send(b"ping") == b"OK "
    status = harness.vmx.status()
    assert status["vmx.tcloChannels"] == live and status["guest.toolsRunningStatus"] == RUNNING
    harness.settle(60)  # pings go on reaching the real guest
    assert harness.vmx.status()["guest.toolsRunningStatus"] == RUNNING
    assert harness.send(b"Set_Option broadcastIP 1") == b"OK "


def test_when_the_guest_leaves_the_next_one_is_served() -> None:
    harness = Harness()
    harness.start()
    harness.service.stopService()
    harness.settle()
    assert harness.vmx.status()["vmx.tcloChannels"] == []
    successor = connect_raw(harness, TCLO, like_a_guest)
    assert not successor.lost and successor.packets[0].payload == b"reset"
    channels = harness.vmx.status()["vmx.tcloChannels"]
    assert isinstance(channels, list) and len(channels) == 1
    assert harness.send(b"ping") == b"OK "


def quiet_vmx() -> Harness:
    """A VMX whose guest has gone: the raw peers of a test are its only TCLO channels."""
    harness = Harness(primary_ip=None)
    harness.start()
    harness.service.stopService()
    harness.settle()
    return harness


def test_an_unsolicited_reply_drops_the_connection() -> None:
    harness = quiet_vmx()
    guest = connect_raw(harness, TCLO, like_a_guest)
    assert not guest.lost and guest.packets[-1].payload == b"ping"
    before = sum(1 for r in harness.vmx.records if r.direction == "tclo-in")
    guest.send(b"OK " + b"x" * 100_000)  # nothing was asked
    guest.send(b"OK " + b"x" * 100_000)
    harness.settle()
    assert guest.lost
    assert harness.vmx.status()["vmx.tcloChannels"] == []
    assert sum(1 for r in harness.vmx.records if r.direction == "tclo-in") == before + 1  # the second was not read


def test_garbage_in_answer_to_ping_is_not_running() -> None:
    harness = quiet_vmx()
    garbage = {"on": True}

    def answer(command: bytes) -> bytes:
        return b"\xff\xfegarbage" if command == b"ping" and garbage["on"] else like_a_guest(command)

    guest = connect_raw(harness, TCLO, answer)
    assert guest.packets[-1].payload == b"ping"
    assert harness.vmx.tools.version is not None  # registered by the guest that left
    assert harness.vmx.status()["guest.toolsRunningStatus"] == NOT_RUNNING
    harness.settle(5)
    assert harness.vmx.status()["guest.toolsRunningStatus"] == NOT_RUNNING
    garbage["on"] = False
    harness.settle(5)  # the next ping, answered properly: running again
    assert harness.vmx.status()["guest.toolsRunningStatus"] == RUNNING


def test_a_garbled_guestinfo_ip_never_becomes_the_ip_address() -> None:
    harness = Harness(primary_ip=None)
    harness.start()
    del harness.vmx.guestinfo["guestinfo.ip"]  # broadcastIP's, so that the fallback shows
    first_reported = harness.vmx.status()["guest.ipAddress"]
    for garbled in (b"198.51.100.7; rm -rf /", b"\xff\xfe", b"not an address", b"1" * 5000, b""):
        assert harness.rpci(b"info-set guestinfo.ip " + garbled) == b""
        # Not the garbled text: the first IPv4 of the guest's NIC report, or nothing.
        assert harness.vmx.status()["guest.ipAddress"] == first_reported
    assert harness.rpci(b"info-set guestinfo.ip 192.0.2.44") == b""
    assert harness.vmx.status()["guest.ipAddress"] == "192.0.2.44"
    assert harness.rpci(b"info-set guestinfo.ip 2001:db8::5") == b""
    assert harness.vmx.status()["guest.ipAddress"] == "2001:db8::5"


def test_the_tclo_stream_is_the_queues_declared_push_channel() -> None:
    from twisted.internet.task import Clock
    from zope.interface.verify import verifyObject

    from twisted_vmtools.vmx.model import VMX
    from twisted_vmtools.vmx.stream import VMXTCLOProtocol
    from twisted_vmtools.vmx.tclo_queue import ITCLOPusher

    assert verifyObject(ITCLOPusher, VMXTCLOProtocol(VMX(Clock()), "tclo"))
