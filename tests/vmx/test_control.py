"""The simulator's control channel (AMP after the CTRL preamble), in memory."""

from __future__ import annotations

import json

from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from tests.support import Harness, result_of
from twisted_vmtools.vmx.control import ControlClient, GuestInfoGet, GuestInfoSet, RPCLog, SendTCLO, Status
from twisted_vmtools.vmx.power import PowerOp
from twisted_vmtools.vmx.tclo_queue import NoGuest


def control(harness: Harness) -> ControlClient:
    connected: list[object] = []
    harness.endpoint.connect(Factory.forProtocol(ControlClient)).addCallback(connected.append)
    client = connected[0]
    assert isinstance(client, ControlClient)
    return client


def call(harness: Harness, client: ControlClient, amp_command: type, **arguments: object) -> dict[str, object]:
    called = client.callRemote(amp_command, **arguments)
    harness.settle()
    answer = result_of(called)
    assert isinstance(answer, dict), answer
    return answer


def test_values_beyond_amps_64_kib_go_through_whole() -> None:
    harness = Harness()
    harness.start()
    client = control(harness)
    big = bytes(range(256)) * 400  # 102,400 bytes
    call(harness, client, GuestInfoSet, key="guestinfo.big", value=big)
    assert call(harness, client, GuestInfoGet, key="guestinfo.big") == {"found": True, "value": big}
    status = json.loads(call(harness, client, Status)["status"])  # type: ignore[arg-type]
    assert status["guest.toolsRunningStatus"] == "guestToolsRunning"
    assert len(status["guestinfo.big"]) == len(big)
    harness.service.dispatcher.register(b"Big_Reply", lambda args: big)
    assert call(harness, client, SendTCLO, command=b"Big_Reply", timeout=5.0) == {"reply": b"OK " + big}
    records = call(harness, client, RPCLog, last=1000)["records"]
    assert isinstance(records, list) and len(records) == min(100, len(harness.vmx.records))
    last = records[-1]
    assert last["direction"] == "tclo-in" and last["size"] == len(big) + 3 and len(last["data"]) == 400


def test_rpci_beyond_the_vmx_limit_is_refused_over_the_stream_too() -> None:
    harness = Harness()
    harness.start()
    refused = harness.rpci(b"info-set guestinfo.huge " + b"x" * 70_000)
    assert getattr(refused, "value", None) is not None
    assert refused.value.reply == b"Message too long"  # type: ignore[attr-defined]
    assert "guestinfo.huge" not in harness.vmx.guestinfo
    assert harness.rpci(b"info-set guestinfo.small fine") == b""


def test_tclo_with_no_guest_connected_fails_at_once() -> None:
    harness = Harness()  # the guest never starts
    client = control(harness)
    sent: list[tuple[type, dict[str, object]]] = [
        (SendTCLO, {"command": b"ping", "timeout": 30.0}), (PowerOp, {"operation": "shutdown", "timeout": 30.0})
    ]
    for amp_command, arguments in sent:
        results: list[object] = []
        client.callRemote(amp_command, **arguments).addBoth(results.append)
        harness.settle()  # no time passes: the answer must not wait for a timeout
        (failure,) = results
        assert isinstance(failure, Failure) and failure.check(NoGuest), failure
        assert failure.getErrorMessage() == "no guest is connected to the simulator"
    assert harness.vmx.tclo.busy is False and [r for r in harness.vmx.records if r.direction == "tclo-out"] == []


def test_channels_are_numbered_per_kind_and_control_clients_take_no_number() -> None:
    harness = Harness()
    for _ in range(3):
        call(harness, control(harness), Status)
    harness.start()
    assert harness.vmx.connected_channels == {"tclo#1"}
    assert {r.channel for r in harness.vmx.records} == {"tclo#1", "rpci#1"}
    call(harness, control(harness), Status)
    harness.rpci(b"info-get guestinfo.none")
    assert {r.channel for r in harness.vmx.records} == {"tclo#1", "rpci#1"}  # one RPCI connection, reused


def test_guestinfo_keys_and_values_are_any_bytes() -> None:
    harness = Harness()
    harness.start()
    client = control(harness)
    call(harness, client, GuestInfoSet, key=b"guestinfo.caf\xe9", value=b"\xff")
    assert harness.rpci(b"info-get guestinfo.caf\xe9") == b"\xff"  # the guest names the same bytes
    assert call(harness, client, GuestInfoGet, key="guestinfo.caf\udce9") == {"found": True, "value": b"\xff"}
    status = json.loads(call(harness, client, Status)["status"])  # type: ignore[arg-type]
    assert status["guestinfo.caf\\xe9"] == "\ufffd"
