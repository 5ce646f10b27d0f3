"""``SetGuestDiskInfo``: the guest's file systems, as open-vm-tools 12 reports them (protocol.md §5).

The request is ``SetGuestDiskInfo `` followed by a JSON document in a fixed
layout (version 1: one disk per line, mount points base64-encoded so that
any byte survives JSON) and a NUL.  `encode_disk_info` produces it byte for
byte as vmtoolsd's ``GuestInfoSendDiskInfoV1`` does; `decode_disk_info`
reads any JSON of that shape, strictly: every malformed report raises
`DiskInfoError` and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from .errors import CodecError

COMMAND = b"SetGuestDiskInfo"
VERSION = 1
PARTITION_NAME_SIZE = 100  # guestInfo.h: char name[100], NUL included
FSTYPE_SIZE = 260
DISK_DEVICE_NAME_SIZE = 15
MAX_DISKS = 4096  # not a protocol limit: what a VMX decodes before calling a report abusive
MAX_DEVICES = 64
MAX_REPORT = 1 << 20

# The file systems vmtoolsd reports (lib/wiper's table of supported partitions); everything
# else — proc, sysfs, tmpfs, overlay, network file systems — is left out.
REPORTED_FILESYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "hfs", "msdos", "ntfs", "pcfs", "reiserfs", "ufs", "vfat", "zfs", "xfs", "btrfs"}
)


class DiskInfoError(CodecError):
    """A disk report that is malformed, or a disk that does not fit the format."""


@dataclass(frozen=True)
class DiskEntry:
    """One file system: its mount point, free and total bytes, type, and (optionally) VM disk names."""

    name: str
    free: int
    size: int
    fstype: str = ""
    devices: tuple[str, ...] = ()


def fit_name(mount_point: str) -> str:
    """The mount point as vmtoolsd stores it: at most 99 bytes (cut on a character boundary)."""
    raw = mount_point.encode("utf-8", "surrogateescape")[: PARTITION_NAME_SIZE - 1]
    return raw.decode("utf-8", "ignore")


def encode_disk_info(disks: tuple[DiskEntry, ...] | list[DiskEntry]) -> bytes:
    """The whole request: ``SetGuestDiskInfo {…}`` and the terminating NUL."""
    parts = [COMMAND + b' {\n"version":"%d",\n"disks":[\n' % VERSION]
    entries = [_encode_entry(disk) for disk in disks]
    if entries:
        parts.append(b"},\n".join(entries) + b"}\n")
    parts.append(b"]}\0")
    return b"".join(parts)


def _encode_entry(disk: DiskEntry) -> bytes:
    if not 0 <= disk.free < 1 << 64 or not 0 <= disk.size < 1 << 64:
        raise DiskInfoError(f"disk sizes must be unsigned 64-bit numbers: {disk}")
    fstype = _ascii_token(disk.fstype, FSTYPE_SIZE, "file system type")
    name = base64.b64encode(disk.name.encode("utf-8", "surrogateescape")).decode("ascii")
    text = f'{{"name":"{name}","free":"{disk.free}","size":"{disk.size}"'
    if fstype:
        text += f',"fstype":"{fstype}"'
    if disk.devices:
        devices = [_ascii_token(device, DISK_DEVICE_NAME_SIZE, "device name") for device in disk.devices]
        text += ',"devices":[' + ",".join(f'"{device}"' for device in devices) + "]"
    return text.encode("ascii")


def _ascii_token(value: str, size: int, what: str) -> str:
    # vmtoolsd writes these into JSON unescaped, so only plain characters can be sent.
    if len(value) >= size or not all(c.isascii() and c.isprintable() and c not in '"\\' for c in value):
        raise DiskInfoError(f"{what} {value!r} cannot be reported")
    return value


def decode_disk_info(args: bytes) -> tuple[DiskEntry, ...]:
    """The disks of a ``SetGuestDiskInfo`` request's arguments (the JSON, with or without its NUL)."""
    if len(args) > MAX_REPORT:
        raise DiskInfoError(f"disk report of {len(args)} bytes is over the {MAX_REPORT}-byte cap")
    text = args[:-1] if args.endswith(b"\0") else args
    try:
        document = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise DiskInfoError(f"disk report is not JSON: {error}") from None
    if not isinstance(document, dict) or document.get("version") != str(VERSION):
        raise DiskInfoError("disk report is not version 1")
    disks = document.get("disks")
    if not isinstance(disks, list) or len(disks) > MAX_DISKS:
        raise DiskInfoError("disk report has no list of disks, or too many")
    return tuple(_decode_entry(disk) for disk in disks)


def _decode_entry(disk: object) -> DiskEntry:
    if not isinstance(disk, dict):
        raise DiskInfoError("a disk is not a JSON object")
    try:
        name = base64.b64decode(_string(disk, "name"), validate=True).decode("utf-8", "surrogateescape")
    except (binascii.Error, ValueError):
        raise DiskInfoError("a disk name is not base64") from None
    fstype = disk.get("fstype", "")
    devices = disk.get("devices", [])
    if not isinstance(fstype, str) or len(fstype) >= FSTYPE_SIZE:
        raise DiskInfoError("a disk's fstype is not a short string")
    if not isinstance(devices, list) or len(devices) > MAX_DEVICES or not all(
        isinstance(device, str) and len(device) < DISK_DEVICE_NAME_SIZE * 4 for device in devices
    ):
        raise DiskInfoError("a disk's devices are not a short list of short strings")
    return DiskEntry(name, _count(disk, "free"), _count(disk, "size"), fstype, tuple(devices))


def _string(disk: dict[str, object], key: str) -> str:
    value = disk.get(key)
    if not isinstance(value, str) or len(value) > 4 * PARTITION_NAME_SIZE:
        raise DiskInfoError(f"a disk's {key} is missing or not a short string")
    return value


def _count(disk: dict[str, object], key: str) -> int:
    value = _string(disk, key)
    if not value.isdigit() or not value.isascii() or int(value) >= 1 << 64:
        raise DiskInfoError(f"a disk's {key} is not an unsigned 64-bit number: {value!r}")
    return int(value)
