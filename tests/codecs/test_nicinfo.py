"""GuestNicProto: round trips, the observed vmtoolsd payload, limits, and fuzzing."""

from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twisted_vmtools.codecs.nicinfo import (
    MAX_IPS,
    MAX_NICS,
    MAX_ROUTES,
    DhcpConfigInfo,
    DnsConfigInfo,
    GuestNic,
    GuestNicList,
    GuestNicV3,
    InetAddressType,
    InetCidrRouteEntry,
    InetCidrRouteType,
    IpAddressEntry,
    IpAddressOrigin,
    IpAddressStatus,
    NicInfoAddrType,
    NicInfoError,
    NicInfoV3,
    TypedIpAddress,
    VmIpAddress,
    WinsConfigInfo,
    decode_guest_nic_proto,
    decode_nic_info,
    encode_nic_info,
    to_v2,
    truncate_ips,
)
from twisted_vmtools.codecs.xdr import XDRError


def words(*values: int) -> bytes:
    return b"".join(struct.pack(">I", v) for v in values)


def xdr_string(data: bytes) -> bytes:
    return words(len(data)) + data + b"\0" * (-len(data) % 4)


# protocol.md §5: the observed start of vmtoolsd's `SetGuestInfo  10 ` payload.
OBSERVED_PREFIX = (
    words(3, 1)  # NIC_INFO_V3, pointer present
    + words(1)  # one NIC
    + xdr_string(b"02:fc:00:00:00:01")
    + words(3)  # three addresses
    + words(1, 4, 0xC0000202, 24, 0, 1, 1)  # 192.0.2.2/24, no origin, status preferred
    + words(2, 16) + bytes.fromhex("fd000000000000000000000000000002") + words(64, 0, 1, 5)
)
OBSERVED_REST = (
    words(2, 16) + bytes.fromhex("fe8000000000000000fc00fffe000001") + words(64, 0, 1, 5)
    + words(0, 0, 0, 0)  # the NIC's dns, wins, dhcpv4, dhcpv6: absent
    + words(0)  # no routes
    + words(0, 0, 0, 0)
)

MAC_OBSERVED = "02:fc:00:00:00:01"
OBSERVED = NicInfoV3(
    nics=(
        GuestNicV3(
            "02:fc:00:00:00:01",
            (
                IpAddressEntry(TypedIpAddress.from_ip("192.0.2.2"), 24, status=IpAddressStatus.PREFERRED),
                IpAddressEntry(TypedIpAddress.from_ip("fd00::2"), 64, status=IpAddressStatus.UNKNOWN),
                IpAddressEntry(TypedIpAddress.from_ip("fe80::fc:ff:fe00:1"), 64, status=IpAddressStatus.UNKNOWN),
            ),
        ),
    ),
)


def test_observed_payload_decodes() -> None:
    info = decode_nic_info(OBSERVED_PREFIX + OBSERVED_REST)
    assert isinstance(info, NicInfoV3)
    nic = info.nics[0]
    assert nic.mac_address == "02:fc:00:00:00:01"
    first = nic.ips[0]
    assert (str(first.address), first.prefix_length, first.origin, first.status) == (
        "192.0.2.2", 24, None, IpAddressStatus.PREFERRED,
    )
    assert [str(e.address) for e in nic.ips[1:]] == ["fd00::2", "fe80::fc:ff:fe00:1"]
    assert info == OBSERVED


def test_encoding_matches_the_observed_bytes() -> None:
    encoded = encode_nic_info(OBSERVED)
    assert encoded.startswith(OBSERVED_PREFIX)
    assert encoded == OBSERVED_PREFIX + OBSERVED_REST


# A whole report from vmtoolsd 12.2.0 (Debian) under the trap engine against vmtools-sim: one NIC with three
# addresses, eight routes (all of route type 0, which nicinfo.x does not define), and global DNS.
VMTOOLSD_12_2_REPORT = bytes.fromhex((Path(__file__).parents[1] / "data" / "vmtoolsd-12.2.0-nicinfo.hex").read_text())


def test_a_whole_vmtoolsd_report() -> None:
    info = decode_guest_nic_proto(VMTOOLSD_12_2_REPORT)
    assert encode_nic_info(info) == VMTOOLSD_12_2_REPORT
    assert VMTOOLSD_12_2_REPORT.startswith(OBSERVED_PREFIX)
    assert info.nics[0].mac_address == MAC_OBSERVED
    assert (str(info.nics[0].ips[0].address), info.nics[0].ips[0].prefix_length) == ("192.0.2.2", 24)
    assert len(info.routes) == 8 and {r.type for r in info.routes} == {0}
    default = info.routes[0]
    assert (str(default.dest), default.prefix_length, str(default.next_hop)) == ("0.0.0.0", 0, "192.0.2.1")
    assert info.dns == DnsConfigInfo("vm", "", (TypedIpAddress.from_ip("10.255.255.53"),), ())


def test_observed_prefix_alone_is_truncated() -> None:
    with pytest.raises(NicInfoError):
        decode_nic_info(OBSERVED_PREFIX)


# -- strategies

TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=12)
NAME = TEXT.filter(lambda s: len(s.encode()) <= 255)


ENUM_INTS = st.integers(-(1 << 31), (1 << 31) - 1)  # rpcgen does not check enums; neither do we


def typed_ips() -> st.SearchStrategy[TypedIpAddress]:
    return st.one_of(
        st.builds(TypedIpAddress, st.just(InetAddressType.IPV4), st.binary(min_size=4, max_size=4)),
        st.builds(TypedIpAddress, st.just(InetAddressType.IPV6), st.binary(min_size=16, max_size=16)),
        st.builds(TypedIpAddress, st.sampled_from(InetAddressType) | ENUM_INTS, st.binary(max_size=24)),
    )


U32 = st.integers(0, 0xFFFFFFFF)
DNS = st.builds(DnsConfigInfo, st.none() | NAME, st.none() | NAME, st.lists(typed_ips(), max_size=3).map(tuple),
                st.lists(NAME, max_size=3).map(tuple))
WINS = st.builds(WinsConfigInfo, typed_ips(), typed_ips())
DHCP = st.builds(DhcpConfigInfo, st.booleans(), TEXT)
IP_ENTRIES = st.builds(IpAddressEntry, typed_ips(), U32, st.none() | st.sampled_from(IpAddressOrigin) | ENUM_INTS,
                       st.none() | st.sampled_from(IpAddressStatus) | ENUM_INTS)
MAC = st.text("0123456789abcdef:", max_size=18)
NICS = st.builds(GuestNicV3, MAC, st.lists(IP_ENTRIES, max_size=4).map(tuple), st.none() | DNS, st.none() | WINS,
                 st.none() | DHCP, st.none() | DHCP)
ROUTES = st.builds(InetCidrRouteEntry, typed_ips(), U32, st.none() | typed_ips(), U32,
                   st.sampled_from(InetCidrRouteType) | ENUM_INTS, U32)
INFOS = st.builds(NicInfoV3, st.lists(NICS, max_size=3).map(tuple), st.lists(ROUTES, max_size=3).map(tuple),
                  st.none() | DNS, st.none() | WINS, st.none() | DHCP, st.none() | DHCP)

C_TEXT = st.text("0123456789abcdef:./x", max_size=63)
V2_IPS = st.builds(VmIpAddress, st.sampled_from(NicInfoAddrType), st.booleans(), C_TEXT, C_TEXT)
V2_LISTS = st.builds(GuestNicList, st.lists(
    st.builds(GuestNic, st.text("0123456789abcdef:", max_size=17), st.lists(V2_IPS, max_size=3).map(tuple)),
    max_size=3,
).map(tuple))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(INFOS)
def test_v3_round_trip(info: NicInfoV3) -> None:
    data = encode_nic_info(info)
    assert len(data) % 4 == 0
    assert decode_nic_info(data) == info


@given(V2_LISTS)
def test_v2_round_trip(info: GuestNicList) -> None:
    data = encode_nic_info(info)
    assert data[:8] == words(2, 1)
    assert decode_nic_info(data) == info


def test_v2_exact_layout() -> None:
    data = encode_nic_info(GuestNicList((GuestNic("02:fc:00:00:00:01", (
        VmIpAddress(NicInfoAddrType.IPV4, True, "192.0.2.2", "24"),
    )),)))
    mac = b"".join(words(c) for c in b"02:fc:00:00:00:01") + words(0)
    ip = b"".join(words(c) for c in b"192.0.2.2") + words(0) * (64 - 9)
    mask = words(ord("2"), ord("4")) + words(0) * 62
    assert data == words(2, 1, 1) + mac + words(1) + words(0, 1) + ip + mask


def test_null_bodies_decode_as_empty() -> None:
    assert decode_nic_info(words(3, 0)) == NicInfoV3()
    assert decode_nic_info(words(2, 0)) == GuestNicList()


def test_limits_on_encode() -> None:
    nic = GuestNicV3("02:fc:00:00:00:01")
    entry = IpAddressEntry(TypedIpAddress.from_ip("192.0.2.1"), 24)
    route = InetCidrRouteEntry(TypedIpAddress.from_ip("0.0.0.0"), 0, None, 0, InetCidrRouteType.REMOTE)
    encode_nic_info(NicInfoV3((nic,) * MAX_NICS))
    for bad in (
        NicInfoV3((nic,) * (MAX_NICS + 1)),
        NicInfoV3((replace(nic, ips=(entry,) * (MAX_IPS + 1)),)),
        NicInfoV3(routes=(route,) * (MAX_ROUTES + 1)),
        NicInfoV3((GuestNicV3("x" * 19),)),
        NicInfoV3(dns=DnsConfigInfo(servers=(entry.address,) * 17)),
        NicInfoV3(dns=DnsConfigInfo(search_suffixes=("a",) * 11)),
        NicInfoV3(dns=DnsConfigInfo(host_name="h" * 256)),
        NicInfoV3(dhcpv4=DhcpConfigInfo(True, "x" * 16385)),
        GuestNicList((GuestNic("x" * 18),)),  # char[18] needs room for its NUL
        GuestNicList((GuestNic("m", (VmIpAddress(NicInfoAddrType.IPV4, False, "1" * 64, "24"),)),)),
    ):
        with pytest.raises(NicInfoError):
            encode_nic_info(bad)


def test_limits_on_decode() -> None:
    nic = encode_nic_info(NicInfoV3((GuestNicV3("m"),)))[12:-20]  # one NIC's encoding
    assert decode_nic_info(words(3, 1, 16) + nic * 16 + words(0, 0, 0, 0, 0))
    with pytest.raises(NicInfoError):
        decode_nic_info(words(3, 1, 17) + nic * 17 + words(0, 0, 0, 0, 0))
    with pytest.raises(NicInfoError):  # 2049 addresses announced
        decode_nic_info(words(3, 1, 1) + xdr_string(b"m") + words(2049) + words(0) * 2049 * 5)
    with pytest.raises(NicInfoError):  # 101 routes announced
        decode_nic_info(words(3, 1, 0, 101) + words(0) * 101 * 8)
    with pytest.raises(NicInfoError):  # MAC longer than string<18>
        decode_nic_info(words(3, 1, 1) + xdr_string(b"m" * 19) + words(0) * 5 + words(0) * 5)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        words(4, 1),  # no such version
        words(3, 2),  # pointer flag 2
        words(3, 1, 1) + xdr_string(b"m") + words(1) + words(1, 4) + b"\0" * 4 + words(24, 2, 0) + words(0) * 8,
        words(3, 1, 1) + xdr_string(b"m") + words(1) + words(1, 256) + b"\0" * 256 + words(24, 0, 0) + words(0) * 8,
        encode_nic_info(OBSERVED) + b"\0\0\0\0",  # trailing bytes
    ],
)
def test_malformed(data: bytes) -> None:
    with pytest.raises(NicInfoError):
        decode_nic_info(data)


def test_error_is_an_xdr_error() -> None:
    assert issubclass(NicInfoError, XDRError)


@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        decode_nic_info(data)
    except NicInfoError:
        pass


@given(INFOS, st.data())
def test_fuzz_mutated_encodings(info: NicInfoV3, data: st.DataObject) -> None:
    encoded = bytearray(encode_nic_info(info))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(encoded) - 1))
        encoded[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    try:
        decode_nic_info(bytes(encoded[:cut]))
    except NicInfoError:
        pass


def test_fallback_forms() -> None:
    entry = IpAddressEntry(TypedIpAddress.from_ip("192.0.2.2"), 24, IpAddressOrigin.DHCP)
    v6 = IpAddressEntry(TypedIpAddress.from_ip("fd00::2"), 64)
    info = NicInfoV3((GuestNicV3("02:fc:00:00:00:01", (entry,) * 70 + (v6,)),))
    assert len(truncate_ips(info).nics[0].ips) == 64
    assert to_v2(NicInfoV3((GuestNicV3("02:fc:00:00:00:01", (entry, v6)),))) == GuestNicList((
        GuestNic("02:fc:00:00:00:01", (
            VmIpAddress(NicInfoAddrType.IPV4, True, "192.0.2.2", "24"),
            VmIpAddress(NicInfoAddrType.IPV6, False, "fd00::2", "64"),
        )),
    ))


def test_v2_reads_as_v3() -> None:
    v2 = GuestNicList((GuestNic("02:fc:00:00:00:01", (
        VmIpAddress(NicInfoAddrType.IPV4, True, "192.0.2.2", "24"),
        VmIpAddress(NicInfoAddrType.IPV4, False, "198.51.100.2", "0xffffff00"),
        VmIpAddress(NicInfoAddrType.IPV6, False, "fe80::1%eth0", "64"),
    )),))
    info = decode_guest_nic_proto(encode_nic_info(v2))
    assert [(str(e.address), e.prefix_length, e.origin) for e in info.nics[0].ips] == [
        ("192.0.2.2", 24, IpAddressOrigin.DHCP), ("198.51.100.2", 24, None), ("fe80::1", 64, None),
    ]
    assert decode_guest_nic_proto(encode_nic_info(OBSERVED)) == OBSERVED
    for bad_ip, bad_mask in (("not-an-ip", "24"), ("192.0.2.1", "x")):
        bad = GuestNicList((GuestNic("m", (VmIpAddress(NicInfoAddrType.IPV4, False, bad_ip, bad_mask),)),))
        with pytest.raises(NicInfoError):
            decode_guest_nic_proto(encode_nic_info(bad))


@given(V2_LISTS)
def test_fuzz_v2_upgrade_only_nicinfo_error(info: GuestNicList) -> None:
    try:
        decode_guest_nic_proto(encode_nic_info(info))
    except NicInfoError:
        pass
