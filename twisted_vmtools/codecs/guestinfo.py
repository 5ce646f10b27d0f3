"""``SetGuestInfo``: the guest's facts as the guest sends them and the VMX stores them (protocol.md §5).

A request is ``SetGuestInfo  <key> <value>`` — two spaces, a decimal key
(`GuestInfoKey`), then the value: text ending in a NUL (host name, OS names,
uptime), or binary without one (XDR NIC reports, the detailed OS struct).
"""

from __future__ import annotations

from enum import IntEnum

from .errors import CodecError

COMMAND = b"SetGuestInfo"
MAX_KEY = 63  # open-vm-tools defines keys 1 to 11; room for newer ones, and a bound on what a VMX keeps


class GuestInfoKey(IntEnum):
    """``GuestInfoType`` (lib/include/guestInfo.h): the key after ``SetGuestInfo``."""

    DNS_NAME = 1
    IPADDRESS = 2
    DISK_FREE_SPACE = 3
    BUILD_NUMBER = 4
    OS_NAME_FULL = 5
    OS_NAME = 6
    UPTIME = 7
    MEMORY = 8
    IPADDRESS_V2 = 9
    IPADDRESS_V3 = 10
    OS_DETAILED = 11


# Keys whose values are text, sent with a terminating NUL that is not part of the value.
TEXT_KEYS = frozenset({GuestInfoKey.DNS_NAME, GuestInfoKey.BUILD_NUMBER, GuestInfoKey.OS_NAME_FULL,
                       GuestInfoKey.OS_NAME, GuestInfoKey.UPTIME})


class GuestInfoError(CodecError):
    """A ``SetGuestInfo`` request whose key is not a number from 1 to `MAX_KEY`."""


def text_request(key: GuestInfoKey, value: str) -> bytes:
    """``SetGuestInfo  <key> <value>\\0``: two spaces, and the NUL vmtoolsd sends with text."""
    return b"%s  %d %s\0" % (COMMAND, key, value.encode("utf-8", "surrogateescape"))


def binary_request(key: GuestInfoKey, payload: bytes) -> bytes:
    """``SetGuestInfo  <key> <binary>``: no terminating NUL after binary data."""
    return b"%s  %d " % (COMMAND, key) + payload


def parse_arguments(raw_args: bytes) -> tuple[int, bytes]:
    """The key and the byte-exact value of a request's arguments (what follows ``SetGuestInfo ``).

    A text key's value loses its terminating NUL; a binary value is kept whole
    (its last byte is often a zero that belongs to it).
    """
    key, _, value = raw_args.lstrip(b" ").partition(b" ")
    if not (key.isascii() and key.isdigit() and len(key) <= 3) or not 1 <= int(key) <= MAX_KEY:
        raise GuestInfoError(f"unknown guest info key {key[:16]!r}")
    number = int(key)
    if number in TEXT_KEYS and value.endswith(b"\0"):
        value = value[:-1]
    return number, value
