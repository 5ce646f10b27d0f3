"""SetGuestInfo requests: what the guest encodes is what the VMX parses, keys declared once."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_vmtools.codecs.guestinfo import (
    COMMAND,
    TEXT_KEYS,
    GuestInfoError,
    GuestInfoKey,
    binary_request,
    parse_arguments,
    text_request,
)
from twisted_vmtools.codecs.rpci import parse_request

TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=40)


@given(st.sampled_from(sorted(TEXT_KEYS)), TEXT)
def test_text_round_trip(key: GuestInfoKey, value: str) -> None:
    request = parse_request(text_request(key, value))
    assert request.name == COMMAND
    assert parse_arguments(request.raw_args) == (key, value.encode())


@given(st.sampled_from([GuestInfoKey.IPADDRESS_V2, GuestInfoKey.IPADDRESS_V3, GuestInfoKey.OS_DETAILED]), st.binary())
def test_binary_values_stay_byte_exact(key: GuestInfoKey, payload: bytes) -> None:
    request = parse_request(binary_request(key, payload))
    assert parse_arguments(request.raw_args) == (key, payload)  # a last zero byte belongs to the value


def test_exact_bytes() -> None:
    assert text_request(GuestInfoKey.UPTIME, "1234") == b"SetGuestInfo  7 1234\0"
    assert binary_request(GuestInfoKey.IPADDRESS_V3, b"\0\x01") == b"SetGuestInfo  10 \0\x01"


@pytest.mark.parametrize("raw", [b" x 1", b" 0 v", b" 64 v", b" -1 v", b" 1234 v", b"", b" \xb2 v"])
def test_unknown_keys_are_refused(raw: bytes) -> None:
    with pytest.raises(GuestInfoError):
        parse_arguments(raw)
