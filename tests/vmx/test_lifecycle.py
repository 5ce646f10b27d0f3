"""The simulated VMX's life cycle: the start sequence on every new TCLO channel, and a consistent status."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from tests.support import Harness, same_user
from twisted_vmtools.channels.stream import StreamChannel
from twisted_vmtools.service import ToolsService
from twisted_vmtools.vmx.control import ControlServer
from twisted_vmtools.vmx.lifecycle import MANAGED_OPTIONS, greet, start_sequence
from twisted_vmtools.vmx.model import VMX, RPCRecord
from twisted_vmtools.vmx.stream import VMXStreamFactory
from twisted_vmtools.vmx.tclo_queue import TCLOTimeout

GREETING = [
    b"reset",
    b"Capabilities_Register",
    b"Set_Option broadcastIP 1",
    b"Set_Option synctime 0",
    b"Set_Option toolScripts.afterPowerOn 1",
    b"Set_Option toolScripts.afterResume 1",
    b"Set_Option toolScripts.beforeSuspend 1",
    b"Set_Option toolScripts.beforePowerOff 1",
]


def commands(vmx: VMX) -> list[bytes]:
    return [r.data for r in vmx.records if r.direction == "tclo-out"]


def test_start_sequence_is_reset_capabilities_then_the_managed_options() -> None:
    assert start_sequence() == GREETING
    assert start_sequence(()) == [b"reset", b"Capabilities_Register"]
    assert (b"broadcastIP", b"1") in MANAGED_OPTIONS


def test_a_new_guest_gets_the_whole_greeting_then_pings() -> None:
    harness = Harness()
    harness.start()
    assert commands(harness.vmx) == [*GREETING, b"ping"]
    assert harness.vmx.greeting is not None and harness.vmx.greeting.called
    harness.settle(5)
    assert commands(harness.vmx)[-1] == b"ping"  # the pinger runs from then on
    status = harness.vmx.status()
    assert status["guest.toolsRunningStatus"] == "guestToolsRunning"
    assert status["guest.toolsVersionStatus"] == "guestToolsUnmanaged"
    assert status["guest.ipAddress"] == "198.51.100.7"  # answered Set_Option broadcastIP 1


def test_status_is_never_running_and_not_installed() -> None:
    harness = Harness()
    seen: list[tuple[object, object]] = []

    def check(record: RPCRecord) -> None:
        status = harness.vmx.status()
        seen.append((status["guest.toolsRunningStatus"], status["guest.toolsVersionStatus"]))

    harness.vmx.observe(check)
    harness.start()
    assert ("guestToolsRunning", "guestToolsNotInstalled") not in seen
    assert ("guestToolsNotRunning", "guestToolsNotInstalled") in seen  # before Capabilities_Register
    assert seen[-1] == ("guestToolsRunning", "guestToolsUnmanaged")


def test_guest_restart_reruns_the_start_sequence_and_reannounces() -> None:
    harness = Harness()
    harness.start()
    harness.service.stopService()
    harness.settle()
    assert harness.vmx.status()["guest.toolsRunningStatus"] == "guestToolsNotRunning"
    del harness.vmx.guestinfo["guestinfo.vmtools.versionString"]
    mark = len(harness.vmx.records)
    harness.channel = StreamChannel(harness.clock, "memory", endpoint=harness.endpoint)  # a new process
    harness.service = ToolsService(harness.clock, harness.channel, primary_ip="198.51.100.7",
                                   power_handler=harness.power)
    harness.start()
    assert [r.data for r in list(harness.vmx.records)[mark:] if r.direction == "tclo-out"] == [*GREETING, b"ping"]
    assert harness.vmx.guestinfo["guestinfo.vmtools.versionString"]
    assert harness.vmx.status()["guest.toolsRunningStatus"] == "guestToolsRunning"


def test_vmx_restart_greets_the_reconnecting_guest_which_reannounces() -> None:
    harness = Harness()
    harness.start()
    harness.endpoint.drop_all()  # the old VMX goes away
    fresh = VMX(harness.clock)
    harness.endpoint.server_factory = VMXStreamFactory(fresh, control=lambda: ControlServer(fresh), peer=same_user)
    for _ in range(10):  # the guest reconnects with back-off
        harness.settle(2)
        if fresh.running:
            break
    assert commands(fresh)[: len(GREETING)] == GREETING
    # vmtoolsd announces its version only at start; ours again after the new VMX's reset.
    assert fresh.guestinfo["guestinfo.vmtools.versionString"]
    assert fresh.status()["guest.toolsVersionStatus"] == "guestToolsUnmanaged"


def test_a_refused_command_does_not_stop_the_greeting() -> None:
    sent: list[bytes] = []

    def send(command: bytes) -> Deferred[bytes]:
        sent.append(command)
        return succeed(b"OK ATR toolbox" if command == b"reset" else b"ERROR Unknown Command")

    done: list[bool] = []
    Deferred.fromCoroutine(greet(send)).addCallback(done.append)
    assert sent == GREETING and done == [True]


def test_a_silent_guest_stops_the_greeting() -> None:
    sent: list[bytes] = []

    def send(command: bytes) -> Deferred[bytes]:
        sent.append(command)
        if command == b"Capabilities_Register":
            return fail(TCLOTimeout("no reply"))
        return succeed(b"OK ATR toolbox")

    done: list[bool] = []
    Deferred.fromCoroutine(greet(send)).addCallback(done.append)
    assert sent == [b"reset", b"Capabilities_Register"] and done == [False]


def test_garbage_reply_is_skipped() -> None:
    replies = iter([b"what", *([b"OK "] * 10)])
    done: list[bool] = []
    Deferred.fromCoroutine(greet(lambda command: succeed(next(replies)))).addCallback(done.append)
    assert done == [True]


def test_no_pinger_when_the_channel_left_during_the_greeting() -> None:
    vmx = VMX(Clock())
    vmx.tclo_connected("tclo#1")
    vmx.tclo_disconnected("tclo#1")  # the queue fails the reset: the greeting stops
    vmx.tclo.fail_all(TCLOTimeout("gone"))
    assert vmx.greeting is not None and vmx.greeting.called
    assert not vmx._pinger.running
