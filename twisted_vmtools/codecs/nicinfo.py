"""GuestNicProto: the XDR NIC report of ``SetGuestInfo  10`` (V3) and ``SetGuestInfo  9`` (V3 or V2).

The types mirror open-vm-tools' ``lib/guestRpc/nicinfo.x`` and encode
byte-for-byte as its rpcgen output does (protocol.md §5).  Decoding is
strict about structure: counts over the declared maxima, bad padding or
trailing bytes raise `NicInfoError`, the only exception a decoder raises.
Enum fields are not checked, as rpcgen's xdr_enum does not check them:
vmtoolsd 12.2 really sends route type 0, which nicinfo.x does not define.
Known values decode to their IntEnum, others stay plain ints.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import TypeVar

from .xdr import Packer, Unpacker, XDRError

E = TypeVar("E", bound=IntEnum)

MAX_NICS = 16
MAX_IPS = 2048
MAX_IPS_V2_KEY = 64  # what a VMX that only knows key 9 accepts per NIC
MAX_ROUTES = 100
MAC_LEN = 18
MAX_IP_LEN = 64  # V2's char ipAddress[] / subnetMask[]
INET_ADDRESS_MAX_LEN = 255
DNS_NAME_MAX_LEN = 255
DNS_MAX_SERVERS = 16
DNS_MAX_SUFFIXES = 10
DHCP_MAX_CONFIG_SIZE = 16384
METRIC_UNUSED = 0xFFFFFFFF  # nicinfo.x: "-1 == unused"


class NicInfoError(XDRError):
    """A GuestNicProto that is malformed, or a value that does not fit its XDR type."""


class NicInfoVersion(IntEnum):
    V2 = 2
    V3 = 3


class InetAddressType(IntEnum):
    UNKNOWN = 0
    IPV4 = 1
    IPV6 = 2
    IPV4Z = 3
    IPV6Z = 4
    DNS = 16


class IpAddressOrigin(IntEnum):
    OTHER = 1
    MANUAL = 2
    DHCP = 4
    LINKLAYER = 5
    RANDOM = 6


class IpAddressStatus(IntEnum):
    PREFERRED = 1
    DEPRECATED = 2
    INVALID = 3
    INACCESSIBLE = 4
    UNKNOWN = 5
    TENTATIVE = 6
    DUPLICATE = 7
    OPTIMISTIC = 8


class InetCidrRouteType(IntEnum):
    OTHER = 1
    REJECT = 2
    LOCAL = 3
    REMOTE = 4


class NicInfoAddrType(IntEnum):
    """V2's address family (note: not the same numbers as `InetAddressType`)."""

    IPV4 = 0
    IPV6 = 1


# -- V3 values


@dataclass(frozen=True)
class TypedIpAddress:
    """An address as raw bytes (4 for IPv4, 16 for IPv6; zoned forms carry more)."""

    type: InetAddressType | int
    address: bytes

    @classmethod
    def from_ip(cls, ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> TypedIpAddress:
        parsed = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        kind = InetAddressType.IPV4 if parsed.version == 4 else InetAddressType.IPV6
        return cls(kind, parsed.packed)

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The address as an `ipaddress` object, if it is a plain IPv4/IPv6 one."""
        if self.type == InetAddressType.IPV4 and len(self.address) == 4:
            return ipaddress.IPv4Address(self.address)
        if self.type == InetAddressType.IPV6 and len(self.address) == 16:
            return ipaddress.IPv6Address(self.address)
        return None

    def __str__(self) -> str:
        ip = self.ip
        if ip is not None:
            return str(ip)
        name = self.type.name if isinstance(self.type, InetAddressType) else str(self.type)
        return f"{name}:{self.address.hex()}"


@dataclass(frozen=True)
class IpAddressEntry:
    address: TypedIpAddress
    prefix_length: int
    origin: IpAddressOrigin | int | None = None
    status: IpAddressStatus | int | None = None


@dataclass(frozen=True)
class DnsConfigInfo:
    host_name: str | None = None
    domain_name: str | None = None
    servers: tuple[TypedIpAddress, ...] = ()
    search_suffixes: tuple[str, ...] = ()


@dataclass(frozen=True)
class WinsConfigInfo:
    primary: TypedIpAddress
    secondary: TypedIpAddress


@dataclass(frozen=True)
class DhcpConfigInfo:
    enabled: bool
    settings: str = ""


@dataclass(frozen=True)
class InetCidrRouteEntry:
    dest: TypedIpAddress
    prefix_length: int
    next_hop: TypedIpAddress | None
    if_index: int  # index into NicInfoV3.nics
    type: InetCidrRouteType | int  # vmtoolsd on Linux sends 0, "not set"
    metric: int = METRIC_UNUSED


@dataclass(frozen=True)
class GuestNicV3:
    mac_address: str
    ips: tuple[IpAddressEntry, ...] = ()
    dns: DnsConfigInfo | None = None
    wins: WinsConfigInfo | None = None
    dhcpv4: DhcpConfigInfo | None = None
    dhcpv6: DhcpConfigInfo | None = None


@dataclass(frozen=True)
class NicInfoV3:
    nics: tuple[GuestNicV3, ...] = ()
    routes: tuple[InetCidrRouteEntry, ...] = ()
    dns: DnsConfigInfo | None = None
    wins: WinsConfigInfo | None = None
    dhcpv4: DhcpConfigInfo | None = None
    dhcpv6: DhcpConfigInfo | None = None


# -- V2 values (what older VMXs understand on key 9)


@dataclass(frozen=True)
class VmIpAddress:
    family: NicInfoAddrType | int
    dhcp_enabled: bool
    ip_address: str
    subnet_mask: str  # a prefix length ("24") or, from old Windows tools, a hex mask


@dataclass(frozen=True)
class GuestNic:
    mac_address: str
    ips: tuple[VmIpAddress, ...] = ()


@dataclass(frozen=True)
class GuestNicList:
    nics: tuple[GuestNic, ...] = ()


# -- conversions vmtoolsd applies when falling back


def truncate_ips(info: NicInfoV3, max_ips: int = MAX_IPS_V2_KEY) -> NicInfoV3:
    """The V3 report with each NIC's addresses cut to what key 9 accepts."""
    return replace(info, nics=tuple(replace(nic, ips=nic.ips[:max_ips]) for nic in info.nics))


def to_v2(info: NicInfoV3) -> GuestNicList:
    """The V2 form of a V3 report: text addresses, prefix lengths as the "mask"."""
    nics = []
    for nic in info.nics:
        ips = []
        for entry in nic.ips:
            family = NicInfoAddrType.IPV4 if entry.address.type == InetAddressType.IPV4 else NicInfoAddrType.IPV6
            ips.append(
                VmIpAddress(family, entry.origin == IpAddressOrigin.DHCP, str(entry.address), str(entry.prefix_length))
            )
        nics.append(GuestNic(nic.mac_address, tuple(ips)))
    return GuestNicList(tuple(nics))


def from_v2(info: GuestNicList) -> NicInfoV3:
    """A V2 list as V3, so readers handle one shape; unparsable addresses raise `NicInfoError`."""
    nics = []
    for nic in info.nics:
        ips = []
        for old in nic.ips:
            try:
                ip = ipaddress.ip_address(old.ip_address.split("%")[0])
            except ValueError:
                raise NicInfoError(f"not an IP address: {old.ip_address!r}") from None
            origin = IpAddressOrigin.DHCP if old.dhcp_enabled else None
            ips.append(IpAddressEntry(TypedIpAddress.from_ip(ip), _v2_prefix(old.subnet_mask), origin))
        nics.append(GuestNicV3(nic.mac_address, tuple(ips)))
    return NicInfoV3(tuple(nics))


def _v2_prefix(mask: str) -> int:
    # V2 masks are prefix lengths ("24"); old Windows tools sent hex masks ("0xffffff00").
    try:
        value = int(mask, 16) if mask.lower().startswith("0x") else int(mask)
    except ValueError:
        raise NicInfoError(f"not a subnet mask: {mask!r}") from None
    if value < 0:
        raise NicInfoError(f"not a subnet mask: {mask!r}")
    return bin(value).count("1") if mask.lower().startswith("0x") else value


# -- encoding


def encode_nic_info(info: NicInfoV3 | GuestNicList) -> bytes:
    """A whole GuestNicProto union: version, pointer flag, body."""
    packer = Packer()
    try:
        if isinstance(info, NicInfoV3):
            packer.enum(NicInfoVersion.V3)
            packer.optional(info, lambda v: _pack_nic_info_v3(packer, v))
        else:
            packer.enum(NicInfoVersion.V2)
            packer.optional(info, lambda v: _pack_nic_list(packer, v))
    except NicInfoError:
        raise
    except (XDRError, UnicodeEncodeError) as error:
        raise NicInfoError(str(error)) from None
    return packer.data


def _text(value: str) -> bytes:
    # surrogateescape: whatever bytes a guest sent come back out unchanged.
    return value.encode("utf-8", "surrogateescape")


def _pack_typed_ip(packer: Packer, value: TypedIpAddress) -> None:
    packer.enum(value.type)
    packer.opaque(value.address, INET_ADDRESS_MAX_LEN)


def _pack_ip_entry(packer: Packer, value: IpAddressEntry) -> None:
    _pack_typed_ip(packer, value.address)
    packer.u32(value.prefix_length)
    packer.optional(value.origin, packer.enum)
    packer.optional(value.status, packer.enum)


def _pack_dns_name(packer: Packer, value: str) -> None:
    packer.string(_text(value), DNS_NAME_MAX_LEN)


def _pack_dns(packer: Packer, value: DnsConfigInfo) -> None:
    packer.optional(value.host_name, lambda v: _pack_dns_name(packer, v))
    packer.optional(value.domain_name, lambda v: _pack_dns_name(packer, v))
    packer.array(value.servers, lambda v: _pack_typed_ip(packer, v), DNS_MAX_SERVERS)
    packer.array(value.search_suffixes, lambda v: _pack_dns_name(packer, v), DNS_MAX_SUFFIXES)


def _pack_wins(packer: Packer, value: WinsConfigInfo) -> None:
    _pack_typed_ip(packer, value.primary)
    _pack_typed_ip(packer, value.secondary)


def _pack_dhcp(packer: Packer, value: DhcpConfigInfo) -> None:
    packer.bool(value.enabled)
    packer.string(_text(value.settings), DHCP_MAX_CONFIG_SIZE)


def _pack_extras(packer: Packer, value: GuestNicV3 | NicInfoV3) -> None:
    packer.optional(value.dns, lambda v: _pack_dns(packer, v))
    packer.optional(value.wins, lambda v: _pack_wins(packer, v))
    packer.optional(value.dhcpv4, lambda v: _pack_dhcp(packer, v))
    packer.optional(value.dhcpv6, lambda v: _pack_dhcp(packer, v))


def _pack_nic_v3(packer: Packer, value: GuestNicV3) -> None:
    packer.string(_text(value.mac_address), MAC_LEN)
    packer.array(value.ips, lambda v: _pack_ip_entry(packer, v), MAX_IPS)
    _pack_extras(packer, value)


def _pack_route(packer: Packer, value: InetCidrRouteEntry) -> None:
    _pack_typed_ip(packer, value.dest)
    packer.u32(value.prefix_length)
    packer.optional(value.next_hop, lambda v: _pack_typed_ip(packer, v))
    packer.u32(value.if_index)
    packer.enum(value.type)
    packer.u32(value.metric)


def _pack_nic_info_v3(packer: Packer, value: NicInfoV3) -> None:
    packer.array(value.nics, lambda v: _pack_nic_v3(packer, v), MAX_NICS)
    packer.array(value.routes, lambda v: _pack_route(packer, v), MAX_ROUTES)
    _pack_extras(packer, value)


def _c_string(value: str, size: int) -> bytes:
    # The C side copies into char[size] with a NUL terminator, so size - 1 bytes at most.
    data = _text(value)
    if len(data) >= size or b"\0" in data:
        raise NicInfoError(f"{value!r} does not fit char[{size}]")
    return data


def _pack_vm_ip(packer: Packer, value: VmIpAddress) -> None:
    packer.enum(value.family)
    packer.i32(1 if value.dhcp_enabled else 0)  # Bool is xdr_char: one whole int
    packer.chars(_c_string(value.ip_address, MAX_IP_LEN), MAX_IP_LEN)
    packer.chars(_c_string(value.subnet_mask, MAX_IP_LEN), MAX_IP_LEN)


def _pack_nic_v2(packer: Packer, value: GuestNic) -> None:
    packer.chars(_c_string(value.mac_address, MAC_LEN), MAC_LEN)
    packer.array(value.ips, lambda v: _pack_vm_ip(packer, v), MAX_IPS)


def _pack_nic_list(packer: Packer, value: GuestNicList) -> None:
    packer.array(value.nics, lambda v: _pack_nic_v2(packer, v), MAX_NICS)


# -- decoding


def decode_nic_info(data: bytes) -> NicInfoV3 | GuestNicList:
    """Decode a GuestNicProto (the bytes after ``SetGuestInfo  10 `` or ``  9 ``)."""
    unpacker = Unpacker(data)
    try:
        version = unpacker.enum()
        if version not in (NicInfoVersion.V2, NicInfoVersion.V3):
            # The union has no default arm: rpcgen rejects any other version.
            raise NicInfoError(f"unknown GuestNicProto version {version}")
        body: NicInfoV3 | GuestNicList | None
        if version == NicInfoVersion.V3:
            body = unpacker.optional(lambda: _unpack_nic_info_v3(unpacker))
        else:
            body = unpacker.optional(lambda: _unpack_nic_list(unpacker))
        unpacker.done()
    except NicInfoError:
        raise
    except XDRError as error:
        raise NicInfoError(str(error)) from None
    if body is None:
        # A NULL body is valid XDR; for the VMX it says "no NICs".
        return NicInfoV3() if version == NicInfoVersion.V3 else GuestNicList()
    return body


def decode_guest_nic_proto(data: bytes) -> NicInfoV3:
    """Decode either version of GuestNicProto, a V2 list upgraded with `from_v2`."""
    info = decode_nic_info(data)
    return info if isinstance(info, NicInfoV3) else from_v2(info)


def _enum(unpacker: Unpacker, kind: type[E]) -> E | int:
    value = unpacker.enum()
    try:
        return kind(value)
    except ValueError:
        return value  # as rpcgen does: an enum is an int on the wire, unchecked


def _from_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _unpack_typed_ip(unpacker: Unpacker) -> TypedIpAddress:
    kind = _enum(unpacker, InetAddressType)
    return TypedIpAddress(kind, unpacker.opaque(INET_ADDRESS_MAX_LEN))


def _unpack_ip_entry(unpacker: Unpacker) -> IpAddressEntry:
    address = _unpack_typed_ip(unpacker)
    prefix_length = unpacker.u32()
    origin = unpacker.optional(lambda: _enum(unpacker, IpAddressOrigin))
    status = unpacker.optional(lambda: _enum(unpacker, IpAddressStatus))
    return IpAddressEntry(address, prefix_length, origin, status)


def _unpack_dns_name(unpacker: Unpacker) -> str:
    return _from_text(unpacker.string(DNS_NAME_MAX_LEN))


def _unpack_dns(unpacker: Unpacker) -> DnsConfigInfo:
    host_name = unpacker.optional(lambda: _unpack_dns_name(unpacker))
    domain_name = unpacker.optional(lambda: _unpack_dns_name(unpacker))
    servers = unpacker.array(lambda: _unpack_typed_ip(unpacker), DNS_MAX_SERVERS)
    suffixes = unpacker.array(lambda: _unpack_dns_name(unpacker), DNS_MAX_SUFFIXES)
    return DnsConfigInfo(host_name, domain_name, tuple(servers), tuple(suffixes))


def _unpack_wins(unpacker: Unpacker) -> WinsConfigInfo:
    return WinsConfigInfo(_unpack_typed_ip(unpacker), _unpack_typed_ip(unpacker))


def _unpack_dhcp(unpacker: Unpacker) -> DhcpConfigInfo:
    enabled = unpacker.bool()
    return DhcpConfigInfo(enabled, _from_text(unpacker.string(DHCP_MAX_CONFIG_SIZE)))


_Extras = tuple[DnsConfigInfo | None, WinsConfigInfo | None, DhcpConfigInfo | None, DhcpConfigInfo | None]


def _unpack_extras(unpacker: Unpacker) -> _Extras:
    dns = unpacker.optional(lambda: _unpack_dns(unpacker))
    wins = unpacker.optional(lambda: _unpack_wins(unpacker))
    dhcpv4 = unpacker.optional(lambda: _unpack_dhcp(unpacker))
    dhcpv6 = unpacker.optional(lambda: _unpack_dhcp(unpacker))
    return dns, wins, dhcpv4, dhcpv6


def _unpack_nic_v3(unpacker: Unpacker) -> GuestNicV3:
    mac = _from_text(unpacker.string(MAC_LEN))
    ips = unpacker.array(lambda: _unpack_ip_entry(unpacker), MAX_IPS)
    return GuestNicV3(mac, tuple(ips), *_unpack_extras(unpacker))


def _unpack_route(unpacker: Unpacker) -> InetCidrRouteEntry:
    dest = _unpack_typed_ip(unpacker)
    prefix_length = unpacker.u32()
    next_hop = unpacker.optional(lambda: _unpack_typed_ip(unpacker))
    if_index = unpacker.u32()
    kind = _enum(unpacker, InetCidrRouteType)
    return InetCidrRouteEntry(dest, prefix_length, next_hop, if_index, kind, unpacker.u32())


def _unpack_nic_info_v3(unpacker: Unpacker) -> NicInfoV3:
    nics = unpacker.array(lambda: _unpack_nic_v3(unpacker), MAX_NICS)
    routes = unpacker.array(lambda: _unpack_route(unpacker), MAX_ROUTES)
    return NicInfoV3(tuple(nics), tuple(routes), *_unpack_extras(unpacker))


def _unpack_c_string(unpacker: Unpacker, size: int) -> str:
    # The C reader stops at the first NUL; an unterminated array is read whole.
    return _from_text(unpacker.chars(size).split(b"\0", 1)[0])


def _unpack_vm_ip(unpacker: Unpacker) -> VmIpAddress:
    family = _enum(unpacker, NicInfoAddrType)
    dhcp = unpacker.chars(1) != b"\0"  # Bool: one xdr_char
    return VmIpAddress(family, dhcp, _unpack_c_string(unpacker, MAX_IP_LEN), _unpack_c_string(unpacker, MAX_IP_LEN))


def _unpack_nic_v2(unpacker: Unpacker) -> GuestNic:
    mac = _unpack_c_string(unpacker, MAC_LEN)
    return GuestNic(mac, tuple(unpacker.array(lambda: _unpack_vm_ip(unpacker), MAX_IPS)))


def _unpack_nic_list(unpacker: Unpacker) -> GuestNicList:
    return GuestNicList(tuple(unpacker.array(lambda: _unpack_nic_v2(unpacker), MAX_NICS)))

