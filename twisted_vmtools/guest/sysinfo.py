"""Where the guest's facts come from: NICs, routes, DNS, host name, OS names, uptime.

`IGuestInfoSource` is what `GuestInfo` (guestinfo.py) reads each round;
`SystemGuestInfoSource` reads this machine (psutil and /proc).  The parsers
are pure functions over the files' text, so they are tested on fixed input.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import platform
import re
import socket
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from twisted.logger import Logger
from zope.interface import Interface, implementer

from ..codecs.diskinfo import REPORTED_FILESYSTEMS, DiskEntry, fit_name
from ..codecs.guestos import FULL_NAME_SIZE, LINUX_GUEST_IDS, DetailedData
from ..codecs.nicinfo import (
    DNS_MAX_SERVERS,
    DNS_MAX_SUFFIXES,
    DNS_NAME_MAX_LEN,
    MAC_LEN,
    MAX_IPS,
    MAX_NICS,
    MAX_ROUTES,
    DnsConfigInfo,
    GuestNicV3,
    InetCidrRouteEntry,
    InetCidrRouteType,
    IpAddressEntry,
    IpAddressStatus,
    NicInfoV3,
    TypedIpAddress,
)

AF_LINK = socket.AF_PACKET  # psutil.AF_LINK on Linux: the family of an interface's MAC address entry

# open-vm-tools' default [guestinfo] exclude-nics on Linux: container and virtual-bridge interfaces.
DEFAULT_EXCLUDE_NICS: tuple[str, ...] = ("docker*", "veth*", "virbr*", "antrea-*", "cali*")


class IGuestInfoSource(Interface):
    """What a guest reports about itself.  Replace it to report something else (or, in tests, fixed facts)."""

    def host_name() -> str:
        """The guest's host name (``guest.hostName``)."""

    def os_names() -> tuple[str, str]:
        """(full name, short name): ``SetGuestInfo`` keys 5 and 6, for a VMX that refuses key 11."""

    def os_detailed() -> DetailedData:
        """Short and full name plus the detailed OS data: ``SetGuestInfo`` key 11."""

    def disks() -> Sequence[DiskEntry]:
        """The file systems vSphere shows (``SetGuestDiskInfo``)."""

    def uptime() -> float:
        """Seconds since the guest booted."""

    def nic_info() -> NicInfoV3:
        """NICs with their addresses, routes, and the resolver configuration."""


@implementer(IGuestInfoSource)
class SystemGuestInfoSource:
    """This machine's facts, from psutil, /proc and /etc.

    The reads are of kernel-generated files and take microseconds, so they
    run on the reactor thread, as vmtoolsd gathers on its main loop.
    """

    log = Logger()

    def __init__(
        self,
        *,
        proc: str = "/proc",
        resolv_conf: str = "/etc/resolv.conf",
        os_release: Callable[[], Mapping[str, str]] | None = None,
        exclude_nics: Sequence[str] = DEFAULT_EXCLUDE_NICS,
        nic_filter: Callable[[str], bool] | None = None,
    ) -> None:
        """``exclude_nics``: glob patterns of interfaces never reported (tools.conf's
        ``[guestinfo] exclude-nics``); ``nic_filter``, if given, decides instead (True: report);
        ``os_release`` gives the os-release fields (default: `read_os_release`, this machine's)."""
        self.proc = proc
        self.resolv_conf = resolv_conf
        self.os_release = os_release or read_os_release
        self.nic_filter = nic_filter or nic_filter_excluding(exclude_nics)

    def host_name(self) -> str:
        return socket.gethostname()

    def os_names(self) -> tuple[str, str]:
        detailed = self.os_detailed()
        return detailed.full_name, detailed.short_name

    def os_detailed(self) -> DetailedData:
        uname = platform.uname()
        return os_detailed_data(uname.system, uname.release, uname.machine, self.os_release(), _is_64bit())

    def disks(self) -> list[DiskEntry]:
        mounts = _read(os.path.join(self.proc, "self/mounts")) or _read(os.path.join(self.proc, "mounts")) or ""
        return disks_from_mounts(parse_mounts(mounts), os.statvfs)

    def uptime(self) -> float:
        text = _read(os.path.join(self.proc, "uptime"))
        if text:
            try:
                return float(text.split()[0])
            except (ValueError, IndexError):
                pass
        import psutil

        return max(0.0, time.time() - psutil.boot_time())

    def nic_info(self) -> NicInfoV3:
        import psutil  # on the first report, not when the service is built

        names, nics = nics_from_interfaces(psutil.net_if_addrs(), psutil.net_if_stats(), self.nic_filter)
        index = {name: i for i, name in enumerate(names)}
        routes = parse_ipv4_routes(_read(os.path.join(self.proc, "net/route")) or "", index)
        routes += parse_ipv6_routes(_read(os.path.join(self.proc, "net/ipv6_route")) or "", index)
        resolv = _read(self.resolv_conf)
        dns = parse_resolv_conf(resolv, self.host_name()) if resolv is not None else None
        return NicInfoV3(tuple(nics), tuple(routes[:MAX_ROUTES]), dns=dns)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _is_64bit() -> bool:
    return struct.calcsize("P") == 8


# What platform.freedesktop_os_release() fills in, as os-release(5) says a reader should, for a field
# the file leaves out.  vmtoolsd reports only what the file says: a field absent stays absent (one
# that says exactly this is read as absent too: distroName then falls back to the system's, Linux).
_OS_RELEASE_DEFAULTS = {"NAME": "Linux", "ID": "linux", "PRETTY_NAME": "Linux"}


def read_os_release() -> dict[str, str]:
    """This machine's os-release fields ({} without a readable one), parsed by the standard library:
    /etc/os-release, else /usr/lib/os-release, with the file's quoting and backslash escapes undone."""
    try:
        fields = platform.freedesktop_os_release()
    except (OSError, UnicodeDecodeError):
        return {}
    return {key: value for key, value in fields.items() if _OS_RELEASE_DEFAULTS.get(key) != value}


# -- parsers, pure so they can be tested on fixed text


# The os-release fields whose values, space-separated, make vmtoolsd's distribution string.
OS_RELEASE_DISTRO_FIELDS = ("PRETTY_NAME", "NAME", "VERSION_ID", "BUILD_ID", "VERSION", "CPE_NAME")


def os_full_name(system: str, release: str, os_release: Mapping[str, str]) -> str:
    """vmtoolsd's Linux form: ``<sysname> <release> <distribution>``, the distribution being every
    os-release field it reads, in its order (so Debian 12 says its name and version twice)."""
    distro = " ".join(os_release[key] for key in OS_RELEASE_DISTRO_FIELDS if os_release.get(key))
    return " ".join(part for part in (system, release, distro) if part)


def os_short_name(os_release: Mapping[str, str], is_64bit: bool, kernel_release: str = "") -> str:
    """The short name vSphere knows (``debian12-64``, ``ubuntu-64``): the distribution with its
    major version if vSphere has a guest id for it, else without, else ``other<N>xlinux`` by kernel."""
    suffix = "-64" if is_64bit else ""
    distro = os_release.get("ID", "").lower()
    major = os_release.get("VERSION_ID", "").split(".")[0]
    for candidate in (f"{distro}{major}", distro):
        if candidate and candidate + suffix in LINUX_GUEST_IDS:
            return candidate + suffix
    kernel = kernel_release.split(".")[0]
    if kernel.isdigit() and int(kernel) >= 3:
        return f"other{min(int(kernel), 7)}xlinux{suffix}"
    return f"otherlinux{suffix}"


def os_detailed_data(
    system: str, release: str, machine: str, os_release: Mapping[str, str], is_64bit: bool
) -> DetailedData:
    """What vmtoolsd 12 sends as key 11, from uname and os-release."""
    fields = {
        "architecture": "Arm" if machine.startswith(("arm", "aarch")) else "X86",
        "bitness": "64" if is_64bit else "32",
        "buildNumber": os_release.get("BUILD_ID", ""),
        "cpeString": os_release.get("CPE_NAME", ""),
        "distroAddlVersion": os_release.get("VERSION", ""),
        "distroName": os_release.get("NAME", "") or system,
        "distroVersion": os_release.get("VERSION_ID", ""),
        "familyName": system,
        "kernelVersion": release,
        "prettyName": os_release.get("PRETTY_NAME", ""),
    }
    full = os_full_name(system, release, os_release).encode()[: FULL_NAME_SIZE - 1].decode("utf-8", "ignore")
    return DetailedData(os_short_name(os_release, is_64bit, release), full, fields)


def nic_filter_excluding(patterns: Sequence[str]) -> Callable[[str], bool]:
    """A NIC filter reporting every interface whose name matches none of ``patterns`` (shell globs)."""
    kept = tuple(patterns)
    return lambda name: not any(fnmatch.fnmatchcase(name, pattern) for pattern in kept)


def parse_mounts(text: str) -> list[tuple[str, str, str]]:
    """(device, mount point, file system type) per line of /proc/mounts, octal escapes (``\\040``) undone."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            device, mount_point, fstype = (_unescape_mount(f) for f in fields[:3])
            mounts.append((device, mount_point, fstype))
    return mounts


def _unescape_mount(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


class _StatVFS(Protocol):
    @property
    def f_bsize(self) -> int: ...
    @property
    def f_blocks(self) -> int: ...
    @property
    def f_bavail(self) -> int: ...


def disks_from_mounts(
    mounts: Sequence[tuple[str, str, str]], statvfs: Callable[[str], _StatVFS]
) -> list[DiskEntry]:
    """The mounts vmtoolsd reports (disk file systems only), with free space as users see it
    (blocks available to non-root) and the total size, as vmtoolsd computes them."""
    disks = []
    for _device, mount_point, fstype in mounts:
        if fstype not in REPORTED_FILESYSTEMS:
            continue
        try:
            space = statvfs(mount_point)
        except OSError:
            continue  # unmounted meanwhile, or not ours to see
        disks.append(DiskEntry(fit_name(mount_point), space.f_bavail * space.f_bsize,
                               space.f_blocks * space.f_bsize, fstype))
    return disks


def prefix_length(netmask: str | None, bits: int) -> int:
    """The prefix length of a dotted or colon netmask (psutil's form); a missing one is a host route."""
    if not netmask:
        return bits
    try:
        mask = int(ipaddress.ip_address(netmask.split("%")[0]))
    except ValueError:
        return bits
    return bin(mask).count("1")


class _InterfaceAddress(Protocol):
    """psutil's snicaddr, as far as it is read here."""

    @property
    def family(self) -> Any: ...
    @property
    def address(self) -> str: ...
    @property
    def netmask(self) -> str | None: ...


class _InterfaceStats(Protocol):
    @property
    def isup(self) -> bool: ...


def nics_from_interfaces(
    addresses: Mapping[str, Sequence[_InterfaceAddress]],
    stats: Mapping[str, _InterfaceStats],
    nic_filter: Callable[[str], bool] | None = None,
) -> tuple[list[str], list[GuestNicV3]]:
    """psutil's interface tables as V3 NICs, with their names (routes refer to NICs by position).

    Interfaces that are down, have no Ethernet-style MAC (loopback, tunnels)
    or do not fit the protocol (InfiniBand's long hardware addresses) are
    left out; so are loopback addresses, which no one outside can reach,
    and the interfaces ``nic_filter`` rejects (default: open-vm-tools'
    ``exclude-nics`` list: container and virtual-bridge interfaces).
    """
    keep = nic_filter or nic_filter_excluding(DEFAULT_EXCLUDE_NICS)
    names: list[str] = []
    nics: list[GuestNicV3] = []
    for name, entries in addresses.items():
        if not keep(name):
            continue
        state = stats.get(name)
        if state is not None and not state.isup:
            continue
        mac = next((e.address.lower() for e in entries if e.family == AF_LINK), "")
        if not mac or len(mac) > MAC_LEN or mac == "00:00:00:00:00:00":
            continue
        ips: list[IpAddressEntry] = []
        for entry in entries:
            if entry.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                ip = ipaddress.ip_address(entry.address.split("%")[0])  # drop an IPv6 zone ("%eth0")
            except ValueError:
                continue
            if ip.is_loopback or ip.is_unspecified:
                continue
            # What vmtoolsd reports without a netlink query: IPv4 preferred, IPv6 status unknown.
            status = IpAddressStatus.PREFERRED if ip.version == 4 else IpAddressStatus.UNKNOWN
            ips.append(IpAddressEntry(TypedIpAddress.from_ip(ip), prefix_length(entry.netmask, ip.max_prefixlen),
                                      status=status))
        names.append(name)
        nics.append(GuestNicV3(mac, tuple(ips[:MAX_IPS])))
        if len(nics) == MAX_NICS:
            break
    return names, nics


RTF_UP = 0x0001
RTF_GATEWAY = 0x0002
RTF_REJECT = 0x0200


def _route_type(flags: int) -> InetCidrRouteType:
    if flags & RTF_REJECT:
        return InetCidrRouteType.REJECT
    return InetCidrRouteType.REMOTE if flags & RTF_GATEWAY else InetCidrRouteType.LOCAL


def parse_ipv4_routes(text: str, nic_index: Mapping[str, int]) -> list[InetCidrRouteEntry]:
    """/proc/net/route (addresses are little-endian hex) for the NICs in ``nic_index``."""
    routes = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8 or fields[0] not in nic_index:
            continue
        try:
            dest, gateway, mask = (bytes.fromhex(f)[::-1] for f in (fields[1], fields[2], fields[7]))
            flags, metric = int(fields[3], 16), int(fields[6])
        except ValueError:
            continue
        if not flags & RTF_UP or len(dest) != 4 or len(gateway) != 4 or len(mask) != 4:
            continue
        next_hop = TypedIpAddress.from_ip(ipaddress.IPv4Address(gateway)) if any(gateway) else None
        routes.append(InetCidrRouteEntry(
            TypedIpAddress.from_ip(ipaddress.IPv4Address(dest)),
            prefix_length(str(ipaddress.IPv4Address(mask)), 32),
            next_hop, nic_index[fields[0]], _route_type(flags), metric & 0xFFFFFFFF,
        ))
    return routes


def parse_ipv6_routes(text: str, nic_index: Mapping[str, int]) -> list[InetCidrRouteEntry]:
    """/proc/net/ipv6_route for the NICs in ``nic_index``: every route that is up, multicast
    (``ff00::/8``) included, as vmtoolsd reports them; a next hop only for gateway routes."""
    routes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 10 or fields[9] not in nic_index:
            continue
        try:
            dest = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
            gateway = ipaddress.IPv6Address(bytes.fromhex(fields[4]))
            length, metric, flags = int(fields[1], 16), int(fields[5], 16), int(fields[8], 16)
        except ValueError:
            continue
        if not flags & RTF_UP:
            continue
        next_hop = TypedIpAddress.from_ip(gateway) if flags & RTF_GATEWAY else None
        routes.append(InetCidrRouteEntry(
            TypedIpAddress.from_ip(dest), length, next_hop, nic_index[fields[9]], _route_type(flags),
            metric & 0xFFFFFFFF,
        ))
    return routes


def parse_resolv_conf(text: str, host_name: str | None = None) -> DnsConfigInfo:
    """Name servers and search suffixes, within the protocol's limits."""
    servers: list[TypedIpAddress] = []
    suffixes: list[str] = []
    domain: str | None = None
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) < 2:
            continue
        if fields[0] == "nameserver":
            try:
                servers.append(TypedIpAddress.from_ip(fields[1].split("%")[0]))
            except ValueError:
                continue
        elif fields[0] == "domain":
            domain = fields[1]
        elif fields[0] == "search":
            suffixes = fields[1:]  # the resolver uses the last search line
    if domain is None and suffixes:
        domain = suffixes[0]
    fits = [s for s in suffixes if len(s.encode()) <= DNS_NAME_MAX_LEN]
    return DnsConfigInfo(
        # vmtoolsd always sends the resolver's default domain, "" when there is none.
        host_name=_fit_name(host_name), domain_name=_fit_name(domain) or "",
        servers=tuple(servers[:DNS_MAX_SERVERS]), search_suffixes=tuple(fits[:DNS_MAX_SUFFIXES]),
    )


def _fit_name(name: str | None) -> str | None:
    return name if name and len(name.encode()) <= DNS_NAME_MAX_LEN else None


# -- the service
