"""The VMX's reading of the guest's routes, DNS, disks and OS details, in vSphere's shapes.

Like `guestinfo_view`, every decoder here takes the raw stored value and
returns None for a value it cannot decode (logged), so a malformed report
costs only its own fields.  The decoders in `codecs/` validate structure and
limits; the shapes follow vSphere's ``GuestStackInfo``, ``GuestDiskInfo`` and
``VirtualMachineGuestSummary``.
"""

from __future__ import annotations

from twisted.logger import Logger

from ..codecs.diskinfo import DiskInfoError, decode_disk_info
from ..codecs.guestos import GuestOSError, decode_detailed_data, detailed_string, guest_id
from ..codecs.nicinfo import DnsConfigInfo, NicInfoV3, TypedIpAddress

log = Logger()

View = dict[str, object]


def ip_stack(info: NicInfoV3) -> list[View]:
    """``guest.ipStack``: one stack (the guest's only one) with its DNS configuration and routes.

    A route's gateway ``device`` is the index of its NIC in ``guest.net``, as vSphere shows it.
    """
    return [{
        "dnsConfig": dns_config(info.dns),
        "ipRouteConfig": {
            "ipRoute": [
                {
                    "network": _address(route.dest),
                    "prefixLength": route.prefix_length,
                    "gateway": {
                        "ipAddress": _address(route.next_hop) if route.next_hop is not None else None,
                        "device": str(route.if_index),
                    },
                }
                for route in info.routes
            ]
        },
    }]


def dns_config(dns: DnsConfigInfo | None) -> View | None:
    if dns is None:
        return None
    return {
        "hostName": dns.host_name,
        "domainName": dns.domain_name,
        "ipAddress": [_address(server) for server in dns.servers],
        "searchDomain": list(dns.search_suffixes),
    }


def _address(value: TypedIpAddress) -> str:
    return str(value)


def disks(raw: bytes | None) -> list[View] | None:
    """``guest.disk`` from the stored ``SetGuestDiskInfo`` JSON."""
    if raw is None:
        return None
    try:
        entries = decode_disk_info(raw)
    except DiskInfoError as error:
        log.warn("undecodable disk report: {error}", error=str(error))
        return None
    return [
        {"diskPath": disk.name, "capacity": disk.size, "freeSpace": disk.free, "filesystemType": disk.fstype,
         "mappings": list(disk.devices)}
        for disk in entries
    ]


def os_fields(detailed_raw: bytes | None, short_name: str | None, full_name: str | None) -> View:
    """``guest.guestId``, ``guest.guestFamily``, ``guest.guestFullName`` and ``guest.guestDetailedData``.

    The detailed report (key 11) wins when it decodes; else the names of
    keys 5 and 6.  The guest id is vSphere's for the short name.
    """
    details: str | None = None
    if detailed_raw is not None:
        try:
            detailed = decode_detailed_data(detailed_raw)
        except GuestOSError as error:
            log.warn("undecodable OS details: {error}", error=str(error))
        else:
            short_name, full_name = detailed.short_name or short_name, detailed.full_name or full_name
            details = detailed_string(detailed.fields)
    identity = guest_id(short_name) if short_name else None
    return {
        "guest.guestId": identity[0] if identity else None,
        "guest.guestFamily": identity[1] if identity else None,
        "guest.guestFullName": full_name,
        "guest.osName": short_name,
        "guest.guestDetailedData": details,
    }
