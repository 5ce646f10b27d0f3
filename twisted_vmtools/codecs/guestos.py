"""The guest OS report: ``SetGuestInfo  11`` (detailed data) and vSphere's guest ids (protocol.md §5).

Key 11 carries a ``HostinfoDetailedDataHeader`` — u32 version (1), the
short name (``char[129]``), the full name (``char[513]``), two bytes of
padding: 648 bytes, little-endian as vmtoolsd sends it — followed by
``name='value'`` pairs separated by one space, values with ``'`` and ``\\``
escaped by a backslash, and a NUL.  The VMX maps the short name to the
guest id vSphere shows (``debian12-64`` → ``debian12_64Guest``) with the
table of open-vm-tools' ``guest_os_tables.h`` (``GUEST_OS_KEY_MAP``).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import CodecError

HEADER_VERSION = 1
SHORT_NAME_SIZE = 129  # MAX_OS_NAME_LEN + 1
FULL_NAME_SIZE = 513  # MAX_OS_FULLNAME_LEN + 1
HEADER_SIZE = 648
MAX_DETAILED_FIELD_LEN = 1024
MAX_DETAILED_DATA = 4096  # what a VMX decodes; vmtoolsd's own buffer is smaller

# The detailed-data keys, in the order vmtoolsd sends them (hostinfoPosix.c: "must be sorted").
DETAILED_KEYS: tuple[str, ...] = (
    "architecture", "bitness", "buildNumber", "cpeString", "distroAddlVersion",
    "distroName", "distroVersion", "familyName", "kernelVersion", "prettyName",
)

_PAIR = re.compile(r"([A-Za-z]+)='((?:[^'\\]|\\.)*)'(?: |$)")


class GuestOSError(CodecError):
    """A malformed detailed-data report, or names that do not fit it."""


@dataclass(frozen=True)
class DetailedData:
    short_name: str
    full_name: str
    fields: Mapping[str, str] = field(default_factory=dict)


def encode_detailed_data(data: DetailedData) -> bytes:
    """The key 11 payload: header, the ``name='value'`` string, and its NUL."""
    short = _c_field(data.short_name, SHORT_NAME_SIZE, "short name")
    full = _c_field(data.full_name, FULL_NAME_SIZE, "full name")
    header = struct.pack("<I", HEADER_VERSION) + short + full + b"\0\0"
    return header + detailed_string(data.fields).encode("utf-8") + b"\0"


def detailed_string(fields: Mapping[str, str]) -> str:
    """``name='value'`` pairs in vmtoolsd's key order; empty values left out, trailing spaces cut."""
    pairs = []
    for key in DETAILED_KEYS:
        value = fields.get(key, "")
        escaped = re.sub(r"(['\\])", r"\\\1", value).rstrip()
        if escaped:
            pairs.append(f"{key}='{escaped}'")
    text = " ".join(pairs)
    if len(text.encode("utf-8")) >= MAX_DETAILED_DATA:
        raise GuestOSError("detailed data too long")
    return text


def _c_field(value: str, size: int, what: str) -> bytes:
    raw = value.encode("utf-8")
    if b"\0" in raw or len(raw) >= size:
        raise GuestOSError(f"{what} {value!r} does not fit {size - 1} bytes")
    return raw.ljust(size, b"\0")


def decode_detailed_data(raw: bytes) -> DetailedData:
    """Header and pairs of a key 11 value; anything malformed is a `GuestOSError`."""
    if len(raw) < HEADER_SIZE or len(raw) > HEADER_SIZE + MAX_DETAILED_DATA:
        raise GuestOSError(f"detailed data of {len(raw)} bytes")
    (version,) = struct.unpack_from("<I", raw)
    if version != HEADER_VERSION:
        raise GuestOSError(f"detailed data header version {version}")
    short = _text(raw[4 : 4 + SHORT_NAME_SIZE])
    full = _text(raw[4 + SHORT_NAME_SIZE : 4 + SHORT_NAME_SIZE + FULL_NAME_SIZE])
    tail = raw[HEADER_SIZE:].split(b"\0", 1)[0]
    try:
        text = tail.decode("utf-8")
    except UnicodeDecodeError:
        raise GuestOSError("detailed data is not UTF-8") from None
    return DetailedData(short, full, parse_detailed_string(text))


def parse_detailed_string(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    position = 0
    while position < len(text):
        match = _PAIR.match(text, position)
        if match is None:
            raise GuestOSError(f"detailed data is not name='value' pairs at {text[position:position + 20]!r}")
        fields[match.group(1)] = re.sub(r"\\(.)", r"\1", match.group(2))
        position = match.end()
    return fields


def _text(field_bytes: bytes) -> str:
    raw = field_bytes.split(b"\0", 1)[0]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise GuestOSError("an OS name is not UTF-8") from None


# -- vSphere's guest ids: short name (what the guest sends) → (guest id, family)

LINUX = "linuxGuest"
WINDOWS = "windowsGuest"
SOLARIS = "solarisGuest"
DARWIN = "darwinGuestFamily"
OTHER = "otherGuestFamily"


def _linux_ids() -> dict[str, str]:
    ids = {
        "ubuntu": "ubuntuGuest", "ubuntu-64": "ubuntu64Guest",
        "fedora": "fedoraGuest", "fedora-64": "fedora64Guest",
        "opensuse": "opensuseGuest", "opensuse-64": "opensuse64Guest",
        "centos": "centosGuest", "centos-64": "centos64Guest",
        "oraclelinux": "oracleLinuxGuest", "oraclelinux-64": "oracleLinux64Guest",
        "sles": "slesGuest", "sles-64": "sles64Guest",
        "coreos-64": "coreos64Guest", "vmware-photon-64": "vmwarePhoton64Guest",
        "otherlinux": "otherLinuxGuest", "otherlinux-64": "otherLinux64Guest",
        "genericlinux": "genericLinuxGuest",
        "amazonlinux2-64": "amazonlinux2_64Guest", "amazonlinux3-64": "amazonlinux3_64Guest",
        "almalinux-64": "almalinux_64Guest", "rockylinux-64": "rockylinux_64Guest",
        "flatcar-64": "flatcar_64Guest", "pardus-64": "pardus_64Guest",
        "other24xlinux": "other24xLinuxGuest", "other24xlinux-64": "other24xLinux64Guest",
        "other26xlinux": "other26xLinuxGuest", "other26xlinux-64": "other26xLinux64Guest",
    }
    # The regular families: "<name><n>" → "<name><n>Guest", "<name><n>-64" → "<name><n>_64Guest";
    # per family, the versions that exist in both widths, then those that are 64-bit only.
    regular = {
        "debian": (range(4, 14), range(0)), "rhel": (range(3, 8), range(8, 11)),
        "centos": (range(6, 8), range(8, 10)), "oraclelinux": (range(6, 8), range(8, 11)),
        "sles": (range(10, 13), range(15, 17)), "asianux": (range(3, 5), (5, 7, 8, 9)),
    }
    prefixes = {"oraclelinux": "oracleLinux"}
    for name, (both, only_64) in regular.items():
        for version in (*both, *only_64):
            base = f"{prefixes.get(name, name)}{version}"
            ids[f"{name}{version}-64"] = f"{base}_64Guest"
            if version in both:
                ids[f"{name}{version}"] = f"{base}Guest"
    ids["rhel2"] = "rhel2Guest"
    for version in range(3, 8):  # "other<n>xlinux": the kernel's major version
        ids[f"other{version}xlinux"] = f"other{version}xLinuxGuest"
        ids[f"other{version}xlinux-64"] = f"other{version}xLinux64Guest"
    return ids


LINUX_GUEST_IDS: Mapping[str, str] = _linux_ids()
OTHER_GUEST_IDS: Mapping[str, tuple[str, str]] = {
    "windows9-64": ("windows9_64Guest", WINDOWS), "windows11-64": ("windows11_64Guest", WINDOWS),
    "windows2019srv-64": ("windows2019srv_64Guest", WINDOWS),
    "solaris11-64": ("solaris11_64Guest", SOLARIS), "darwin-64": ("darwin64Guest", DARWIN),
    "freeBSD-64": ("freebsd64Guest", OTHER), "other": ("otherGuest", OTHER), "other-64": ("otherGuest64", OTHER),
}


def guest_id(short_name: str) -> tuple[str, str]:
    """(guest id, guest family) for a short name; an unknown one is vSphere's "other" of its kind."""
    if short_name in LINUX_GUEST_IDS:
        return LINUX_GUEST_IDS[short_name], LINUX
    if short_name in OTHER_GUEST_IDS:
        return OTHER_GUEST_IDS[short_name]
    is_64 = short_name.endswith("-64")
    if "linux" in short_name.lower():
        return ("otherLinux64Guest" if is_64 else "otherLinuxGuest"), LINUX
    return ("otherGuest64" if is_64 else "otherGuest"), OTHER
