"""Every store of the simulated VMX is capped, and a guest's reports are checked where they arrive."""

from __future__ import annotations

import json

import pytest
from twisted.python.failure import Failure

from tests.support import Harness
from tests.vmx.test_control import call, control
from twisted_vmtools.codecs.rpci import MAX_GUESTINFO_VALUE
from twisted_vmtools.vmx.control import GuestInfoSet, Status
from twisted_vmtools.vmx.model import VMX
from twisted_vmtools.vmx.stores import (
    RPC_LOG_BYTES,
    RPC_LOG_DATA,
    RPC_LOG_RECORDS,
    TOOLS_LOG_ENTRIES,
    GuestInfoRefused,
    GuestInfoStore,
    RPCLog,
    RPCRecord,
)


def test_the_largest_value_is_what_a_guest_can_read_back() -> None:
    assert MAX_GUESTINFO_VALUE == 1_048_546  # ``1 <value>`` fills one 1 MiB stream packet
    harness = Harness()
    harness.start()
    client = control(harness)
    largest = b"v" * MAX_GUESTINFO_VALUE
    call(harness, client, GuestInfoSet, key="guestinfo.large", value=largest)
    assert harness.rpci(b"info-get guestinfo.large") == largest  # through the guest's own decoder
    refused: list[object] = []
    client.callRemote(GuestInfoSet, key="guestinfo.large", value=largest + b"v").addBoth(refused.append)
    harness.settle()
    error = refused[0]
    assert isinstance(error, Failure) and error.check(GuestInfoRefused)  # the client gets the same error
    assert "exceeds 1048546" in error.getErrorMessage()
    assert harness.vmx.guestinfo["guestinfo.large"] == largest  # the old value is kept


def test_the_store_keeps_guestinfo_keys_only() -> None:
    store = GuestInfoStore()
    for key in ("ip", "guestinfo.", "guestinfo", "Guestinfo.x"):
        with pytest.raises(GuestInfoRefused, match="a guestinfo key is guestinfo.NAME"):
            store[key] = b"v"
    store["guestinfo.x"] = b"v"
    assert list(store) == ["guestinfo.x"]


def test_the_guestinfo_store_is_capped_in_total() -> None:
    store = GuestInfoStore(total_limit=10_000)
    for index in range(1000):
        try:
            store[f"guestinfo.k{index}"] = b"x" * 100
        except GuestInfoRefused as error:
            assert "full" in str(error)
            break
    else:
        raise AssertionError("never full")
    assert store.used <= 10_000
    store["guestinfo.k0"] = b"y" * 100  # replacing a value costs only the difference
    with pytest.raises(GuestInfoRefused, match="key"):
        store["guestinfo." + "k" * 2000] = b""
    for key in list(store):
        del store[key]
    assert store.used == 0 and len(store) == 0


def test_the_rpc_log_is_capped_in_records_and_bytes() -> None:
    log = RPCLog()
    big = b"r" * (1 << 20)
    for _ in range(800):  # the 800 one-MiB TCLO replies
        log.append(RPCRecord(0.0, "tclo-in", "tclo#1", big))
    assert log.data_bytes <= RPC_LOG_BYTES and all(len(r.data) <= RPC_LOG_DATA for r in log)
    assert log[-1].size == len(big)
    for _ in range(2 * RPC_LOG_RECORDS):
        log.append(RPCRecord(0.0, "rpci-in", "rpci#1", b"x"))
    assert len(log) == RPC_LOG_RECORDS
    mark = log.total
    log.append(RPCRecord(0.0, "rpci-in", "rpci#1", b"after"))
    assert [r.data for r in log.since(mark)] == [b"after"]


def test_tools_log_capabilities_and_state_changes_are_capped() -> None:
    harness = Harness()
    harness.start()
    vmx = harness.vmx
    for index in range(1000):
        vmx.rpci(b"log " + b"L" * 5000)
        vmx.rpci(b"tools.capability.flood%d 1" % index)
        vmx.rpci(b"tools.os.statechange.status 1 %d" % index)
    assert len(vmx.tools.log) == TOOLS_LOG_ENTRIES and all(len(line) <= 1024 for line in vmx.tools.log)
    assert len(vmx.tools.capabilities) <= 256
    assert len(vmx.tools.state_changes) <= 64
    assert vmx.rpci(b"tools.capability." + b"c" * 5000 + b" 1").startswith(b"0 ")


@pytest.mark.parametrize(
    "request_",
    [
        "SetGuestInfo  7 ²".encode(),
        b"SetGuestInfo  7 " + b"9" * 4301,
        b"SetGuestInfo  7 -5",
        b"SetGuestInfo  7 1_000",
        b"SetGuestInfo  99999 x",
        b"SetGuestInfo  " + b"9" * 5000 + b" x",
        b"SetGuestInfo  0 x",
        b"SetGuestInfo  10 not xdr at all",
        b"SetGuestInfo  11 short",
        b"SetGuestDiskInfo [[[[[[",
        b"tools.set.version " + b"9" * 4400,
        b"tools.set.version 4294967296",
        "tools.set.version ٣".encode(),
    ],
)
def test_a_bad_report_is_refused_and_status_still_works(request_: bytes) -> None:
    harness = Harness()
    harness.start()
    vmx: VMX = harness.vmx
    before = vmx.status()
    assert vmx.rpci(request_).startswith(b"0 ")
    after = vmx.status()
    json.dumps(after)
    assert after["guest.uptimeSeconds"] == before["guest.uptimeSeconds"]
    assert after["guest.toolsVersion"] == before["guest.toolsVersion"]
    client = control(harness)
    assert json.loads(call(harness, client, Status)["status"])  # type: ignore[arg-type]


def test_a_good_uptime_is_shown() -> None:
    harness = Harness()
    harness.start()
    assert harness.vmx.rpci(b"SetGuestInfo  7 123456\0") == b"1 "
    assert harness.vmx.status()["guest.uptimeSeconds"] == 1234


def test_a_flood_of_bad_reports_logs_a_few_lines() -> None:
    from typing import cast

    from twisted.logger import ILogObserver, globalLogPublisher

    lines: list[dict[str, object]] = []
    observer = cast(ILogObserver, lines.append)
    globalLogPublisher.addObserver(observer)
    try:
        harness = Harness()
        harness.start()
        for _ in range(500):
            harness.vmx.rpci(b"SetGuestInfo  7 x")
    finally:
        globalLogPublisher.removeObserver(observer)
    dropping = [e for e in lines if "dropping guest report" in str(e.get("log_format", ""))]
    assert 1 <= len(dropping) <= 20
