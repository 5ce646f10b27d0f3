"""Which address the guest reports as its primary IP."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable


def primary_ip(nic_filter: Callable[[str], bool] | None = None) -> str | None:
    """The first global (or, failing that, private) IPv4 address of an up, non-loopback NIC.

    This is what ``Set_Option broadcastIP 1`` reports as ``guestinfo.ip``;
    open-vm-tools likewise prefers the first usable IPv4 address.  Interfaces
    ``nic_filter`` rejects (the NIC report's exclude-nics) are skipped too.
    """
    import psutil  # on first use: the service is built without it

    stats = psutil.net_if_stats()
    candidates: list[ipaddress.IPv4Address] = []
    for name, addresses in psutil.net_if_addrs().items():
        if name in stats and not stats[name].isup:
            continue
        if nic_filter is not None and not nic_filter(name):
            continue
        for address in addresses:
            if address.family != socket.AF_INET:
                continue
            ip = ipaddress.IPv4Address(address.address)
            if ip.is_loopback or ip.is_link_local or ip.is_unspecified:
                continue
            candidates.append(ip)
    if not candidates:
        return None
    candidates.sort(key=lambda ip: ip.is_private)  # global addresses first, order otherwise kept
    return str(candidates[0])
