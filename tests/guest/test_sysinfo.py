"""What the guest gathers: interface tables, /proc routes, resolv.conf, OS names — on fixed input."""

from __future__ import annotations

import platform
import socket
from pathlib import Path
from typing import NamedTuple

import psutil
import pytest

from twisted_vmtools.codecs.diskinfo import REPORTED_FILESYSTEMS, DiskEntry
from twisted_vmtools.codecs.guestos import encode_detailed_data
from twisted_vmtools.codecs.nicinfo import (
    InetCidrRouteType,
    IpAddressStatus,
    NicInfoV3,
    TypedIpAddress,
    decode_nic_info,
    encode_nic_info,
)
from twisted_vmtools.guest.sysinfo import (
    SystemGuestInfoSource,
    disks_from_mounts,
    nic_filter_excluding,
    nics_from_interfaces,
    os_detailed_data,
    os_full_name,
    os_short_name,
    parse_ipv4_routes,
    parse_ipv6_routes,
    parse_mounts,
    parse_resolv_conf,
    prefix_length,
    read_os_release,
)


class Addr(NamedTuple):
    family: int
    address: str
    netmask: str | None


class Stats(NamedTuple):
    isup: bool


INTERFACES = {
    "lo": [Addr(socket.AF_INET, "127.0.0.1", "255.0.0.0"), Addr(socket.AF_INET6, "::1", "ffff:" * 7 + "ffff"),
           Addr(psutil.AF_LINK, "00:00:00:00:00:00", None)],
    "eth0": [Addr(socket.AF_INET, "192.0.2.2", "255.255.255.0"),
             Addr(socket.AF_INET6, "fd00::2", "ffff:ffff:ffff:ffff::"),
             Addr(socket.AF_INET6, "fe80::fc:ff:fe00:1%eth0", "ffff:ffff:ffff:ffff::"),
             Addr(psutil.AF_LINK, "02:FC:00:00:00:01", None)],
    "tun0": [Addr(socket.AF_INET, "10.8.0.1", "255.255.255.255")],  # no MAC
    "eth1": [Addr(psutil.AF_LINK, "02:fc:00:00:00:02", None)],  # down
    "ib0": [Addr(psutil.AF_LINK, "80:00:00:48:fe:80:00:00:00:00:00:00:00:02:c9:03:00", None)],
    "eth2": [Addr(psutil.AF_LINK, "02:fc:00:00:00:03", None), Addr(socket.AF_INET, "198.51.100.9", None)],
}
STATS = {"lo": Stats(True), "eth0": Stats(True), "tun0": Stats(True), "eth1": Stats(False), "ib0": Stats(True)}


def test_interfaces() -> None:
    names, nics = nics_from_interfaces(INTERFACES, STATS)
    assert names == ["eth0", "eth2"]
    eth0 = nics[0]
    assert eth0.mac_address == "02:fc:00:00:00:01"
    assert [(str(e.address), e.prefix_length, e.status) for e in eth0.ips] == [
        ("192.0.2.2", 24, IpAddressStatus.PREFERRED),
        ("fd00::2", 64, IpAddressStatus.UNKNOWN),
        ("fe80::fc:ff:fe00:1", 64, IpAddressStatus.UNKNOWN),
    ]
    assert [(str(e.address), e.prefix_length) for e in nics[1].ips] == [("198.51.100.9", 32)]


def test_interfaces_cap_at_sixteen_nics() -> None:
    many = {f"eth{i}": [Addr(psutil.AF_LINK, f"02:fc:00:00:00:{i:02x}", None)] for i in range(20)}
    names, nics = nics_from_interfaces(many, {})
    assert len(nics) == 16 and names[-1] == "eth15"


def test_prefix_length() -> None:
    assert prefix_length("255.255.254.0", 32) == 23
    assert prefix_length("ffff:ffff:ffff:ff00::", 128) == 56
    assert prefix_length(None, 32) == 32
    assert prefix_length("garbage", 128) == 128


PROC_ROUTE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
eth0\t0000000A\t00000000\t0200\t0\t0\t0\t000000FF\t0\t0\t0
eth0\tgarbage
"""

PROC_IPV6_ROUTE = (
    "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n"
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "fd000000000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n"
    "ff000000000000000000000000000000 08 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n"
    "00000000000000000000000000000001 80 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000000 00000001 00000000 80200001       lo\n"
)


def test_ipv4_routes() -> None:
    routes = parse_ipv4_routes(PROC_ROUTE, {"eth0": 0})
    assert [(str(r.dest), r.prefix_length, r.next_hop and str(r.next_hop), r.if_index, r.type, r.metric)
            for r in routes] == [
        ("0.0.0.0", 0, "192.0.2.1", 0, InetCidrRouteType.REMOTE, 100),
        ("192.0.2.0", 24, None, 0, InetCidrRouteType.LOCAL, 100),
    ]


def test_ipv6_routes() -> None:
    routes = parse_ipv6_routes(PROC_IPV6_ROUTE, {"eth0": 1})
    assert [(str(r.dest), r.prefix_length, r.next_hop and str(r.next_hop), r.if_index, r.type, r.metric)
            for r in routes] == [
        ("fd00::", 64, None, 1, InetCidrRouteType.LOCAL, 256),
        ("::", 0, "fd00::1", 1, InetCidrRouteType.REMOTE, 1024),
        ("ff00::", 8, None, 1, InetCidrRouteType.LOCAL, 256),  # multicast: vmtoolsd reports it too
    ]


def test_resolv_conf() -> None:
    dns = parse_resolv_conf(
        "# generated\nnameserver 192.0.2.53\nnameserver fe80::53%eth0\nnameserver bogus\n"
        "search old.example\nsearch example.org example.com ; comment\noptions ndots:2\n",
        "vm1",
    )
    assert dns.host_name == "vm1"
    assert dns.domain_name == "example.org"
    assert dns.servers == (TypedIpAddress.from_ip("192.0.2.53"), TypedIpAddress.from_ip("fe80::53"))
    assert dns.search_suffixes == ("example.org", "example.com")
    limited = parse_resolv_conf("".join(f"nameserver 192.0.2.{i}\n" for i in range(20))
                                + "search " + " ".join(f"s{i}.example" for i in range(12)) + " " + "x" * 300)
    assert len(limited.servers) == 16 and len(limited.search_suffixes) == 10
    assert parse_resolv_conf("domain corp.example\n").domain_name == "corp.example"
    assert parse_resolv_conf("nameserver 192.0.2.53\n").domain_name == ""  # present and empty, as vmtoolsd sends


def test_os_names() -> None:
    release = {"PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)", "ID": "debian", "VERSION_ID": "12"}
    # vmtoolsd's form: every os-release field it reads, in its order.
    assert os_full_name("Linux", "6.1.0-18-amd64", release) == "Linux 6.1.0-18-amd64 Debian GNU/Linux 12 (bookworm) 12"
    assert os_short_name(release, True) == "debian12-64"
    assert os_short_name({}, False) == "otherlinux"
    assert os_short_name({}, True, "6.1.0") == "other6xlinux-64"
    assert os_short_name({}, True, "9.0") == "other7xlinux-64"  # "7.x and later"
    assert os_short_name({"ID": "ubuntu", "VERSION_ID": "22.04"}, True) == "ubuntu-64"  # no versioned id
    assert os_short_name({"ID": "rhel", "VERSION_ID": "9.3"}, True) == "rhel9-64"


def test_this_machine_encodes(tmp_path: object) -> None:
    source = SystemGuestInfoSource()
    info = source.nic_info()
    assert isinstance(info, NicInfoV3)
    assert decode_nic_info(encode_nic_info(info)) == info
    assert source.uptime() > 0
    assert source.host_name()
    full, short = source.os_names()
    assert full and short


def test_missing_proc_files(tmp_path: object) -> None:
    source = SystemGuestInfoSource(proc=str(tmp_path), resolv_conf=f"{tmp_path}/none", os_release=dict)
    info = source.nic_info()
    assert info.routes == () and info.dns is None
    assert source.uptime() > 0  # from psutil's boot time
    assert source.os_names()[1].startswith("other")


def test_default_exclude_nics_and_a_custom_filter() -> None:
    mac = [Addr(psutil.AF_LINK, "02:fc:00:00:00:09", None)]
    interfaces = {name: mac for name in ("docker0", "veth1a2b", "virbr0", "antrea-gw0", "cali123", "eth0", "br0")}
    names, _ = nics_from_interfaces(interfaces, {})
    assert names == ["eth0", "br0"]  # open-vm-tools' default exclude-nics
    names, _ = nics_from_interfaces(interfaces, {}, nic_filter_excluding(["br*"]))
    assert "docker0" in names and "br0" not in names
    names, _ = nics_from_interfaces(interfaces, {}, lambda name: name == "veth1a2b")
    assert names == ["veth1a2b"]


def test_mounts_and_disks() -> None:
    mounts = parse_mounts(
        "proc /proc proc rw 0 0\n/dev/sda1 / ext4 rw 0 0\ntmpfs /run tmpfs rw 0 0\n"
        "/dev/sdb1 /mnt/my\\040data xfs rw 0 0\noverlay /var/lib/x overlay rw 0 0\nserver:/x /nfs nfs rw 0 0\n"
        "/dev/sdc1 /gone btrfs rw 0 0\nshort line\n"
    )
    assert mounts[3] == ("/dev/sdb1", "/mnt/my data", "xfs")

    class Space(NamedTuple):
        f_bsize: int
        f_blocks: int
        f_bavail: int

    def statvfs(path: str) -> Space:
        if path == "/gone":
            raise FileNotFoundError(path)
        return Space(4096, 1000, 250)

    disks = disks_from_mounts(mounts, statvfs)
    assert disks == [DiskEntry("/", 250 * 4096, 1000 * 4096, "ext4"),
                     DiskEntry("/mnt/my data", 250 * 4096, 1000 * 4096, "xfs")]


OS_RELEASE = (
    'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n'
    'VERSION="12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n'
)


def os_release_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, usr_lib: str, etc: str | None = None) -> None:
    """The standard library reads ``etc`` (if given), else ``usr_lib``, as if they were this machine's."""
    (tmp_path / "usr-lib").write_text(usr_lib)
    if etc is not None:
        (tmp_path / "etc").write_text(etc)
    monkeypatch.setattr(platform, "_os_release_candidates", (str(tmp_path / "etc"), str(tmp_path / "usr-lib")))
    monkeypatch.setattr(platform, "_os_release_cache", None)


def test_os_release_is_read_by_the_standard_library(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    os_release_files(monkeypatch, tmp_path, OS_RELEASE + 'VERSION="12 \\"bookworm\\" \\$x"\nBUILD_ID=\'b 1\'\n')
    fields = read_os_release()  # only /usr/lib/os-release: found all the same
    assert fields["VERSION"] == '12 "bookworm" $x' and fields["BUILD_ID"] == "b 1"  # escapes and quotes undone
    assert fields["PRETTY_NAME"] == "Debian GNU/Linux 12 (bookworm)"
    os_release_files(monkeypatch, tmp_path, OS_RELEASE, etc="ID=alpine\n")
    assert read_os_release() == {"ID": "alpine"}  # /etc first; no invented NAME or PRETTY_NAME, as vmtoolsd
    (tmp_path / "etc").unlink()
    (tmp_path / "usr-lib").unlink()
    monkeypatch.setattr(platform, "_os_release_cache", None)
    assert read_os_release() == {}  # neither file: nothing to report, no error


def test_os_detailed_data_as_vmtoolsd_sends_it() -> None:
    # The same machine as tests/data/vmtoolsd-12.2.0-osdetailed.hex.
    sample = Path(__file__).parents[1] / "data" / "vmtoolsd-12.2.0-osdetailed.hex"
    payload = bytes.fromhex(sample.read_text())[len(b"SetGuestInfo  11 "):]
    fields = dict(line.replace('"', "").split("=", 1) for line in OS_RELEASE.splitlines())
    ours = os_detailed_data("Linux", "6.18.44-fc-v669", "x86_64", fields, True)
    assert encode_detailed_data(ours) == payload


def test_this_machine_reports_its_root_disk() -> None:
    disks = SystemGuestInfoSource().disks()
    assert all(d.fstype in REPORTED_FILESYSTEMS and d.size >= d.free for d in disks)
