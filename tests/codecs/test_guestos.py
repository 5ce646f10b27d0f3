"""SetGuestInfo 11 (OS detailed data) and vSphere guest ids."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_vmtools.codecs.guestos import (
    DETAILED_KEYS,
    HEADER_SIZE,
    DetailedData,
    GuestOSError,
    decode_detailed_data,
    detailed_string,
    encode_detailed_data,
    guest_id,
)

REQUEST = bytes.fromhex((Path(__file__).parents[1] / "data" / "vmtoolsd-12.2.0-osdetailed.hex").read_text())
PAYLOAD = REQUEST[len(b"SetGuestInfo  11 ") :]


def test_vmtoolsd_report_decodes_and_encodes_byte_exact() -> None:
    data = decode_detailed_data(PAYLOAD)
    assert data.short_name == "debian12-64"
    assert data.full_name.startswith("Linux ") and "Debian GNU/Linux 12 (bookworm)" in data.full_name
    assert data.fields["distroName"] == "Debian GNU/Linux" and data.fields["bitness"] == "64"
    assert list(data.fields) == [k for k in DETAILED_KEYS if k in data.fields]  # vmtoolsd's order
    assert encode_detailed_data(data) == PAYLOAD


def test_header_layout() -> None:
    payload = encode_detailed_data(DetailedData("s", "f", {}))
    assert len(payload) == HEADER_SIZE + 1 and struct.unpack_from("<I", payload) == (1,)
    assert payload[4:6] == b"s\0" and payload[133:135] == b"f\0"


def test_escaping_and_empty_values() -> None:
    text = detailed_string({"prettyName": "it's a \\ test  ", "buildNumber": "", "familyName": "Linux"})
    assert text == "familyName='Linux' prettyName='it\\'s a \\\\ test'"
    assert decode_detailed_data(encode_detailed_data(DetailedData("a", "b", {"prettyName": "it's \\"}))).fields == {
        "prettyName": "it's \\"}


values = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), max_size=30)


@given(st.text(st.characters(codec="utf-8", blacklist_characters="\0"), max_size=30),
       st.dictionaries(st.sampled_from(DETAILED_KEYS), values))
def test_round_trip(short: str, fields: dict[str, str]) -> None:
    data = DetailedData(short[:40], "full name", fields)
    decoded = decode_detailed_data(encode_detailed_data(data))
    assert decoded.short_name == data.short_name
    assert decoded.fields == {k: v for k, v in fields.items() if v}


@pytest.mark.parametrize("raw", [
    b"", b"\1\0\0\0short", struct.pack("<I", 2) + bytes(HEADER_SIZE - 4),
    struct.pack("<I", 1) + bytes(HEADER_SIZE - 4) + b"no pairs here", struct.pack("<I", 1) + b"\xff" + bytes(643),
    struct.pack("<I", 1) + bytes(HEADER_SIZE - 4) + b"a='unterminated", bytes(HEADER_SIZE + 5000),
])
def test_malformed(raw: bytes) -> None:
    with pytest.raises(GuestOSError):
        decode_detailed_data(raw)


@given(st.binary(max_size=HEADER_SIZE + 64))
def test_fuzz_only_guest_os_error(data: bytes) -> None:
    for raw in (data, struct.pack("<I", 1) + bytes(HEADER_SIZE - 4) + data):
        try:
            decode_detailed_data(raw)
        except GuestOSError:
            pass


def test_names_that_do_not_fit() -> None:
    with pytest.raises(GuestOSError):
        encode_detailed_data(DetailedData("x" * 129, "f", {}))
    with pytest.raises(GuestOSError):
        encode_detailed_data(DetailedData("s", "nul\0inside", {}))


def test_guest_ids() -> None:
    assert guest_id("debian12-64") == ("debian12_64Guest", "linuxGuest")
    assert guest_id("debian12") == ("debian12Guest", "linuxGuest")
    assert guest_id("rhel9-64") == ("rhel9_64Guest", "linuxGuest")
    assert guest_id("oraclelinux8-64") == ("oracleLinux8_64Guest", "linuxGuest")
    assert guest_id("ubuntu-64") == ("ubuntu64Guest", "linuxGuest")
    assert guest_id("other6xlinux-64") == ("other6xLinux64Guest", "linuxGuest")
    assert guest_id("somelinux-64") == ("otherLinux64Guest", "linuxGuest")
    assert guest_id("windows11-64") == ("windows11_64Guest", "windowsGuest")
    assert guest_id("plan9") == ("otherGuest", "otherGuestFamily")
