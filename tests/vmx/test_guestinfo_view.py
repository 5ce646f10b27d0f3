"""The VMX's reading of stored SetGuestInfo values."""

from __future__ import annotations

import struct
from pathlib import Path

from twisted_vmtools.codecs.nicinfo import (
    GuestNic,
    GuestNicList,
    NicInfoAddrType,
    VmIpAddress,
    encode_nic_info,
)
from twisted_vmtools.vmx.guestinfo_view import first_ipv4, guest_fields
from twisted_vmtools.vmx.rpci_server import RPCIServer, ToolsState

VMTOOLSD_12_2_REPORT = bytes.fromhex((Path(__file__).parents[1] / "data" / "vmtoolsd-12.2.0-nicinfo.hex").read_text())


def detailed(short: bytes, full: bytes, pairs: bytes) -> bytes:
    return struct.pack("<I", 1) + short.ljust(129, b"\0") + full.ljust(513, b"\0") + b"\0\0" + pairs


def test_vmtoolsd_report_as_stored() -> None:
    # Binary reports are stored byte-exact (their last byte is often a zero, which
    # must not be taken for a text request's NUL); text values lose that NUL.
    tools = ToolsState()
    server = RPCIServer({}, tools)
    assert server.handle(b"SetGuestInfo  10 " + VMTOOLSD_12_2_REPORT) == b"1 "
    assert server.handle(b"SetGuestInfo  1 vm\0") == b"1 "
    assert server.handle(b"SetGuestInfo  7 198094\0") == b"1 "
    assert tools.guest_info[10] == VMTOOLSD_12_2_REPORT
    fields = guest_fields(tools.guest_info)
    assert fields["guest.net"] == [{
        "macAddress": "02:fc:00:00:00:01",
        "ipAddress": ["192.0.2.2", "fd00::2", "fe80::fc:ff:fe00:1"],
        "prefixes": [24, 64, 64],
        "connected": True,
    }]
    stack = fields["guest.ipStack"]
    assert isinstance(stack, list) and len(stack) == 1
    assert stack[0]["dnsConfig"] == {"hostName": "vm", "domainName": "", "ipAddress": ["10.255.255.53"],
                                     "searchDomain": []}
    routes = stack[0]["ipRouteConfig"]["ipRoute"]  # type: ignore[index]
    assert len(routes) == 8
    assert routes[0] == {"network": "0.0.0.0", "prefixLength": 0, "gateway": {"ipAddress": "192.0.2.1", "device": "0"}}
    assert routes[1]["gateway"] == {"ipAddress": None, "device": "0"}  # on-link: no next hop
    assert fields["guest.hostName"] == "vm"
    assert fields["guest.uptimeSeconds"] == 1980


def test_v2_on_key_9() -> None:
    v2 = GuestNicList((GuestNic("02:fc:00:00:00:02", (VmIpAddress(NicInfoAddrType.IPV4, True, "192.0.2.9", "24"),)),))
    net = guest_fields({9: encode_nic_info(v2)})["guest.net"]
    assert net == [{"macAddress": "02:fc:00:00:00:02", "ipAddress": ["192.0.2.9"], "prefixes": [24], "connected": True}]


def test_key_10_wins_and_a_bad_key_10_falls_back_to_9() -> None:
    v2 = GuestNicList((GuestNic("02:fc:00:00:00:02"),))
    both = guest_fields({9: encode_nic_info(v2), 10: VMTOOLSD_12_2_REPORT})["guest.net"]
    assert isinstance(both, list) and both[0]["macAddress"] == "02:fc:00:00:00:01"
    broken = guest_fields({9: encode_nic_info(v2), 10: b"\0\0\0\x03garbage!"})["guest.net"]
    assert isinstance(broken, list) and broken[0]["macAddress"] == "02:fc:00:00:00:02"


def test_os_detailed() -> None:
    raw = detailed(b"debian12-64", b"Linux 6.1 Debian GNU/Linux 12 (bookworm)", b"bitness='64' familyName='Linux'\0")
    fields = guest_fields({11: raw})
    assert fields["guest.osName"] == "debian12-64"
    assert fields["guest.guestFullName"] == "Linux 6.1 Debian GNU/Linux 12 (bookworm)"
    assert (fields["guest.guestId"], fields["guest.guestFamily"]) == ("debian12_64Guest", "linuxGuest")
    assert fields["guest.guestDetailedData"] == "bitness='64' familyName='Linux'"
    # vmtoolsd sends keys 5 and 6 only when the VMX refused key 11: the detailed report wins.
    assert guest_fields({11: raw, 5: b"Full", 6: b"short"})["guest.guestFullName"] == detailed_full(raw)
    names_only = guest_fields({5: b"Linux 6.1 Ubuntu", 6: b"ubuntu-64"})
    assert (names_only["guest.guestId"], names_only["guest.guestFullName"]) == ("ubuntu64Guest", "Linux 6.1 Ubuntu")
    truncated = guest_fields({11: b"\1\0\0\0short", 6: b"ubuntu-64"})
    assert truncated["guest.guestId"] == "ubuntu64Guest" and truncated["guest.guestDetailedData"] is None


def detailed_full(raw: bytes) -> str:
    return raw[133:646].split(b"\0", 1)[0].decode()


def test_first_ipv4_skips_link_local_and_v6() -> None:
    net: list[dict[str, object]] = [
        {"macAddress": "a", "ipAddress": ["fe80::1", "169.254.1.1", "bogus"], "prefixes": [64, 16, None]},
        {"macAddress": "b", "ipAddress": ["198.51.100.4"], "prefixes": [24]},
    ]
    assert first_ipv4(net) == "198.51.100.4"
    assert first_ipv4(None) is None


def test_nothing_reported() -> None:
    assert guest_fields({}) == {
        "guest.net": None, "guest.ipStack": None, "guest.hostName": None, "guest.guestFullName": None,
        "guest.osName": None, "guest.guestId": None, "guest.guestFamily": None, "guest.guestDetailedData": None,
        "guest.disk": None, "guest.uptimeSeconds": None,
    }
