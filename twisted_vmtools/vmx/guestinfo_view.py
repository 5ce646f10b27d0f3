"""The VMX's reading of ``SetGuestInfo`` values: the guest.* fields vSphere shows.

`RPCIServer` stores each value raw, by key; this module decodes them when
asked, so a malformed report costs only the fields it carries (it is logged
and shown as absent), never the status call.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from twisted.logger import Logger

from ..codecs.diskinfo import DiskInfoError, decode_disk_info
from ..codecs.guestinfo import GuestInfoKey
from ..codecs.guestos import GuestOSError, decode_detailed_data
from ..codecs.nicinfo import NicInfoError, NicInfoV3, decode_guest_nic_proto
from .guest_report import disks, ip_stack, os_fields

log = Logger()


NicView = dict[str, object]

_UPTIME = re.compile(rb"[0-9]{1,20}")  # hundredths of a second; 20 digits outlast any machine
_UPTIME_TEXT = re.compile(r"[0-9]{1,20}")


class BadReport(ValueError):
    """A ``SetGuestInfo`` or ``SetGuestDiskInfo`` value that does not decode: dropped, not stored."""


def check_report(number: int, value: bytes) -> None:
    """`BadReport` unless the value of ``SetGuestInfo`` key ``number`` decodes as that key's.

    Checked where the VMX receives it, so that what is stored always decodes
    when ``status`` reads it back.  ``value`` is as `parse_arguments` gives it.
    """
    try:
        if number == GuestInfoKey.UPTIME and not _UPTIME.fullmatch(value):
            raise BadReport(f"uptime {value[:24]!r} is not a number of hundredths of a second")
        if number in (GuestInfoKey.IPADDRESS_V2, GuestInfoKey.IPADDRESS_V3):
            decode_stored_nic_info(value)
        elif number == GuestInfoKey.OS_DETAILED:
            decode_detailed_data(value)
    except (NicInfoError, GuestOSError) as error:
        raise BadReport(f"guest info key {number}: {error}") from None


def check_disk_report(args: bytes) -> None:
    try:
        decode_disk_info(args)
    except DiskInfoError as error:
        raise BadReport(f"disk report: {error}") from None


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    return raw.rstrip(b"\0").decode("utf-8", "replace")


def decode_stored_nic_info(raw: bytes) -> NicInfoV3:
    """Decode a stored key 9/10 value (V2 reports come back as V3)."""
    return decode_guest_nic_proto(raw)


def nics(info: NicInfoV3) -> list[NicView]:
    """``guest.net``: per NIC its MAC, addresses, their prefix lengths (in the same order), and connected."""
    return [
        {
            "macAddress": nic.mac_address,
            "ipAddress": [str(entry.address) for entry in nic.ips],
            "prefixes": [entry.prefix_length for entry in nic.ips],
            "connected": True,  # a NIC the guest reports is up: it leaves out the ones that are down
        }
        for nic in info.nics
    ]


def first_ipv4(net: list[NicView] | None) -> str | None:
    """The address vSphere shows as ``guest.ipAddress`` when the guest set no ``guestinfo.ip``."""
    for nic in net or []:
        addresses = nic.get("ipAddress")
        for address in addresses if isinstance(addresses, list) else []:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                continue
            if ip.version == 4 and not ip.is_loopback and not ip.is_link_local:
                return str(ip)
    return None


def ip_address_text(raw: bytes | None) -> str | None:
    """``guestinfo.ip`` as vSphere would show it: only if it is an IP address (else None).

    The guest may store anything under the key; only an address becomes
    ``guest.ipAddress``, so a garbled value cannot pose as one.
    """
    if raw is None or len(raw) > _MAX_IP_TEXT:
        return None
    try:
        text = raw.rstrip(b"\0").strip(b" ").decode("ascii")
        return str(ipaddress.ip_address(text))
    except (UnicodeDecodeError, ValueError):
        return None


_MAX_IP_TEXT = 64  # an IPv6 address with a zone fits with room to spare


def guest_fields(guest_info: Mapping[int, bytes], disk_info: bytes | None = None) -> dict[str, object]:
    """``guest.net``, ``guest.ipStack``, ``guest.hostName``, the OS fields, ``guest.disk`` and
    ``guest.uptimeSeconds``.

    Key 10 (V3) wins over key 9, key 11 over keys 5/6; absent or undecodable values are None.
    """
    decoded: NicInfoV3 | None = None
    for key in (GuestInfoKey.IPADDRESS_V3, GuestInfoKey.IPADDRESS_V2):
        raw = guest_info.get(key)
        if raw is None:
            continue
        try:
            decoded = decode_stored_nic_info(raw)
        except NicInfoError as error:
            log.warn("undecodable NIC report on key {key}: {error}", key=key, error=str(error))
            continue
        break
    uptime = _text(guest_info.get(GuestInfoKey.UPTIME))
    return {
        "guest.net": nics(decoded) if decoded is not None else None,
        "guest.ipStack": ip_stack(decoded) if decoded is not None else None,
        "guest.hostName": _text(guest_info.get(GuestInfoKey.DNS_NAME)),
        **os_fields(
            guest_info.get(GuestInfoKey.OS_DETAILED),
            _text(guest_info.get(GuestInfoKey.OS_NAME)),
            _text(guest_info.get(GuestInfoKey.OS_NAME_FULL)),
        ),
        "guest.disk": disks(disk_info),
        # The guest reports hundredths of a second.
        "guest.uptimeSeconds": int(uptime) // 100 if uptime and _UPTIME_TEXT.fullmatch(uptime) else None,
    }
