"""`GuestInfo` inside `ToolsService`, against the simulated VMX over iosim, on a Clock."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from twisted.internet.task import Clock
from zope.interface import implementer

from tests.support import Harness
from twisted_vmtools.codecs.diskinfo import DiskEntry, encode_disk_info
from twisted_vmtools.codecs.guestos import DetailedData, encode_detailed_data
from twisted_vmtools.codecs.nicinfo import (
    GuestNicList,
    GuestNicV3,
    IpAddressEntry,
    IpAddressStatus,
    NicInfoV3,
    TypedIpAddress,
    decode_nic_info,
    encode_nic_info,
)
from twisted_vmtools.codecs.rpci import RPCIReply
from twisted_vmtools.guest.guestinfo import GuestInfo
from twisted_vmtools.guest.sysinfo import IGuestInfoSource
from twisted_vmtools.service import ToolsService
from twisted_vmtools.tap import Options, guest_info_interval

MAC = "02:fc:00:00:00:01"


def entry(ip: str, prefix: int) -> IpAddressEntry:
    return IpAddressEntry(TypedIpAddress.from_ip(ip), prefix, status=IpAddressStatus.PREFERRED)


NICS = NicInfoV3((GuestNicV3(MAC, (entry("fe80::1", 64), entry("192.0.2.2", 24))),))


@implementer(IGuestInfoSource)
@dataclass
class FixedSource:
    """Deterministic facts; tests change them between rounds."""

    info: NicInfoV3 = NICS
    name: str = "vm1"
    names: tuple[str, str] = ("Linux 6.1.0 Debian GNU/Linux 12 (bookworm)", "debian12-64")
    details: dict[str, str] = field(default_factory=lambda: {"familyName": "Linux", "prettyName": "Debian 12"})
    mounts: tuple[DiskEntry, ...] = (DiskEntry("/", 1000, 4000, "ext4"),)
    seconds: float = 1234.56
    broken: set[str] = field(default_factory=set)

    def _check(self, what: str) -> None:
        if what in self.broken:
            raise OSError(f"{what} unavailable")

    def host_name(self) -> str:
        self._check("host_name")
        return self.name

    def os_names(self) -> tuple[str, str]:
        self._check("os_names")
        return self.names

    def os_detailed(self) -> DetailedData:
        self._check("os_detailed")
        return DetailedData(self.names[1], self.names[0], self.details)

    def disks(self) -> tuple[DiskEntry, ...]:
        self._check("disks")
        return self.mounts

    def uptime(self) -> float:
        self._check("uptime")
        return self.seconds

    def nic_info(self) -> NicInfoV3:
        self._check("nic_info")
        return self.info


def make(source: FixedSource | None = None, interval: float | None = 30.0) -> Harness:
    harness = Harness(primary_ip=None)
    # The Harness's own service was never started; swap in one with our source.
    # No primary IP: the VMX's Set_Option broadcastIP 1 sets no guestinfo.ip, so the NIC report decides.
    harness.service = ToolsService(
        harness.clock, harness.channel, primary_ip=lambda: None, guest_info_interval=interval,
        guest_info_source=source or FixedSource(), power_handler=harness.power,
    )
    return harness


def sent(harness: Harness) -> list[bytes]:
    return [r.data for r in harness.vmx.records if r.direction == "rpci-in" and r.data.startswith(b"SetGuestInfo")]


def keys(requests: list[bytes]) -> list[int]:
    return [int(r.split(b" ")[2]) for r in requests]


def test_status_shows_everything_right_after_capabilities_register() -> None:
    harness = make()
    harness.start()  # the VMX greets the new channel: reset, Capabilities_Register, options
    status = harness.vmx.status()
    assert status["guest.net"] == [{"macAddress": MAC, "ipAddress": ["fe80::1", "192.0.2.2"], "prefixes": [64, 24],
                                  "connected": True}]
    assert status["guest.ipAddress"] == "192.0.2.2"  # no guestinfo.ip: the first NIC IPv4
    assert status["guest.hostName"] == "vm1"
    assert status["guest.guestFullName"] == "Linux 6.1.0 Debian GNU/Linux 12 (bookworm)"
    assert status["guest.osName"] == "debian12-64"
    assert (status["guest.guestId"], status["guest.guestFamily"]) == ("debian12_64Guest", "linuxGuest")
    assert status["guest.disk"] == [{"diskPath": "/", "capacity": 4000, "freeSpace": 1000, "filesystemType": "ext4",
                                     "mappings": []}]
    assert status["guest.uptimeSeconds"] == 1234
    # The uptime with Capabilities_Register, as vmtoolsd; then the first full round.
    assert keys(sent(harness)) == [7, 11, 1, 10]


def test_next_round_one_interval_after_capabilities_register() -> None:
    source = FixedSource()
    harness = make(source)
    harness.start()
    first = len(sent(harness))
    source.name = "vm2"
    harness.settle(29.9)
    assert len(sent(harness)) == first
    harness.settle(0.1)
    assert sent(harness)[first:] == [b"SetGuestInfo  1 vm2\0"]  # only what changed


def test_wire_format_is_byte_exact() -> None:
    harness = make()
    harness.start()
    harness.settle(30)
    requests = sent(harness)
    assert b"SetGuestInfo  1 vm1\0" in requests
    assert b"SetGuestInfo  7 123456\0" in requests
    assert b"SetGuestInfo  11 " + encode_detailed_data(DetailedData(
        "debian12-64", "Linux 6.1.0 Debian GNU/Linux 12 (bookworm)", {"familyName": "Linux", "prettyName": "Debian 12"}
    )) in requests
    disk_requests = [r.data for r in harness.vmx.records if r.data.startswith(b"SetGuestDiskInfo")]
    assert disk_requests == [encode_disk_info([DiskEntry("/", 1000, 4000, "ext4")])]
    assert b"SetGuestInfo  10 " + encode_nic_info(NICS) in requests  # binary: no NUL appended


def test_guestinfo_ip_wins_over_the_nic_address() -> None:
    harness = make()
    harness.start()
    harness.settle(30)
    core = harness.service.core
    assert core is not None
    core.primary_ip = lambda: "198.51.100.7"
    assert harness.send(b"Set_Option broadcastIP 1") == b"OK "
    assert harness.vmx.status()["guest.ipAddress"] == "198.51.100.7"


def test_only_changes_are_sent() -> None:
    source = FixedSource()
    harness = make(source)
    harness.start()
    harness.settle(30)
    first = len(sent(harness))
    harness.settle(30)
    assert len(sent(harness)) == first  # nothing changed, nothing sent
    source.seconds += 30
    source.info = replace(NICS, nics=(replace(NICS.nics[0], ips=(entry("192.0.2.3", 25),)),))
    harness.settle(30)
    assert keys(sent(harness)[first:]) == [10, 7]
    net = harness.vmx.status()["guest.net"]
    assert net == [{"macAddress": MAC, "ipAddress": ["192.0.2.3"], "prefixes": [25], "connected": True}]


def refuse(harness: Harness, refused: object, reply: bytes = b"") -> list[bytes]:
    """Make the VMX answer some SetGuestInfo requests with ``0 `` (or ``1 <reply>``)."""
    server = harness.vmx.rpci_server
    store = server.handler(b"SetGuestInfo")  # the real handler, which stores the value
    assert store is not None
    seen: list[bytes] = []

    def handler(args: bytes) -> RPCIReply:
        seen.append(args)
        if refused(args):  # type: ignore[operator]
            return RPCIReply(bool(reply), reply or b"Unknown guest info type")
        return store(args)

    server.register(b"SetGuestInfo", handler, raw=True)
    return seen


def test_falls_back_to_key_9_then_v2_and_stays_there() -> None:
    many = NicInfoV3((GuestNicV3(MAC, tuple(entry(f"192.0.2.{i}", 24) for i in range(1, 71))),))
    source = FixedSource(info=many)
    harness = make(source)
    refuse(harness, lambda args: args.startswith(b" 10 "))
    harness.start()
    harness.settle(30)
    stored = harness.vmx.tools.guest_info
    assert 10 not in stored
    v3_on_9 = decode_nic_info(stored[9])
    assert isinstance(v3_on_9, NicInfoV3) and len(v3_on_9.nics[0].ips) == 64  # truncated for key 9
    assert harness.vmx.status()["guest.ipAddress"] == "192.0.2.1"

    # A VMX that only knows V2 on key 9: the third method.
    harness2 = make(FixedSource(info=many))
    seen = refuse(harness2, lambda args: args.startswith(b" 10 ") or args.startswith(b" 9 \0\0\0\x03"))
    harness2.start()
    harness2.settle(30)
    v2 = decode_nic_info(harness2.vmx.tools.guest_info[9])
    assert isinstance(v2, GuestNicList) and v2.nics[0].ips[0].ip_address == "192.0.2.1"
    assert harness2.vmx.status()["guest.net"][0]["prefixes"][:2] == [24, 24]  # type: ignore[index]
    attempts = [a[:4] for a in seen if not a.startswith((b" 1 ", b" 5 ", b" 6 ", b" 7 ", b" 11 "))]
    assert attempts == [b" 10 ", b" 9 \0", b" 9 \0"]

    # Next change: straight to the method that worked.
    harness2.service.guest_info.source.info = NICS  # type: ignore[union-attr,attr-defined]
    harness2.settle(30)
    attempts = [a[:4] for a in seen if not a.startswith((b" 1 ", b" 5 ", b" 6 ", b" 7 ", b" 11 "))]
    assert attempts == [b" 10 ", b" 9 \0", b" 9 \0", b" 9 \0"]


def test_total_refusal_is_retried_next_round() -> None:
    harness = make()
    seen = refuse(harness, lambda args: args.startswith((b" 10 ", b" 9 ")))
    harness.start()
    assert len([a for a in seen if a.startswith((b" 10 ", b" 9 "))]) == 3
    harness.settle(30)
    assert len([a for a in seen if a.startswith((b" 10 ", b" 9 "))]) == 6  # not marked as sent: tried again
    assert harness.vmx.status()["guest.hostName"] == "vm1"


def test_a_reply_with_text_means_not_updated() -> None:
    harness = make()
    seen = refuse(harness, lambda args: args.startswith(b" 1 "), reply=b"later")
    harness.start()
    harness.settle(30)
    assert len([a for a in seen if a.startswith(b" 1 ")]) == 2


def test_capabilities_register_reports_uptime() -> None:
    source = FixedSource()
    harness = make(source)
    harness.start()
    first = len(sent(harness))
    source.seconds += 1
    assert harness.send(b"Capabilities_Register") == b"OK "
    assert sent(harness)[first:] == [b"SetGuestInfo  7 123556\0"]  # the round after it: nothing else changed
    assert harness.vmx.status()["guest.toolsVersionStatus"] == "guestToolsUnmanaged"  # core's work still done


def test_reset_makes_everything_go_again() -> None:
    harness = make()
    harness.start()
    harness.settle(30)
    first = len(sent(harness))
    assert harness.send(b"reset") == b"OK ATR toolbox"
    harness.settle(30)
    assert keys(sent(harness)[first:]) == [11, 1, 10, 7]


def test_reset_then_capabilities_register_reports_everything_at_once() -> None:
    harness = make()
    harness.start()
    first = len(sent(harness))
    assert harness.send(b"reset") == b"OK ATR toolbox"
    assert harness.send(b"Capabilities_Register") == b"OK "
    assert keys(sent(harness)[first:]) == [7, 11, 1, 10]


def test_broken_source_loses_one_fact_not_the_loop() -> None:
    source = FixedSource(broken={"nic_info", "os_detailed", "os_names"})
    harness = make(source)
    harness.start()
    assert keys(sent(harness)) == [7, 1]
    source.broken.clear()
    harness.settle(30)
    assert keys(sent(harness)) == [7, 1, 11, 10]


def test_disabled() -> None:
    harness = make(interval=None)
    assert harness.service.guest_info is None
    harness.start()
    harness.settle(300)
    assert harness.send(b"Capabilities_Register") == b"OK "
    assert sent(harness) == []


def test_stop_stops_the_timer() -> None:
    harness = make()
    harness.start()
    harness.settle(30)
    first = len(sent(harness))
    guest_info = harness.service.guest_info
    assert guest_info is not None
    guest_info.stopService()
    guest_info.source.seconds = 1.0  # type: ignore[attr-defined]
    harness.settle(60)
    assert len(sent(harness)) == first
    assert not guest_info.running


def test_undecodable_report_does_not_break_status() -> None:
    harness = make()
    harness.start()
    harness.vmx.tools.guest_info[10] = b"\0\0\0\x03\0\0\0\x07garbage"
    harness.vmx.tools.guest_info[7] = b"soon"
    status = harness.vmx.status()
    assert status["guest.net"] is None and status["guest.uptimeSeconds"] is None
    assert status["guest.ipAddress"] is None


def test_interval_option() -> None:
    options = Options()
    options.parseOptions(["--guestinfo-interval", "5", "--transport", "unix:/nowhere"])
    assert guest_info_interval(options["guestinfo-interval"]) == 5.0
    assert guest_info_interval("0") is None
    assert guest_info_interval(Options()["guestinfo-interval"]) == 30.0


def test_interval_must_be_positive() -> None:
    try:
        GuestInfo(Clock(), interval=0)
    except ValueError:
        pass
    else:
        raise AssertionError("a zero interval was accepted")
