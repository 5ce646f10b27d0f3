"""RPCI text: requests and replies (codecs/rpci.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.codecs.strategies import NAMES
from twisted_vmtools.codecs import rpci


@pytest.mark.parametrize(
    ("data", "name", "args"),
    [
        (b"info-get guestinfo.x", b"info-get", b"guestinfo.x"),
        (b"tools.set.versiontype 12352 4\0", b"tools.set.versiontype", b"12352 4"),  # vmtoolsd: trailing NUL
        (b"tools.capability.resolution_set ", b"tools.capability.resolution_set", b""),  # trailing space
        (b"bogus", b"bogus", b""),  # rpctool drops the space after a bare name
        (b"bogus\0", b"bogus", b""),
        (b"SetGuestInfo  10 \x00\x01", b"SetGuestInfo", b" 10 \x00\x01"),
    ],
)
def test_rpci_parse_request(data: bytes, name: bytes, args: bytes) -> None:
    request = rpci.parse_request(data)
    assert (request.name, request.args) == (name, args)


def test_rpci_raw_args_keep_a_binary_payload_exact() -> None:
    request = rpci.parse_request(b"SetGuestInfo  10 \x00\x01\x00")
    assert request.raw_args == b" 10 \x00\x01\x00"  # an XDR report may end in a zero byte
    assert request.args == b" 10 \x00\x01"


@given(NAMES, st.binary(max_size=200), st.booleans())
def test_rpci_request_with_or_without_nul(name: bytes, args: bytes, nul: bool) -> None:
    data = name + b" " + args
    request = rpci.parse_request(data + (b"\0" if nul else b""))
    assert request.name == name
    assert request.args == (args[:-1] if not nul and args.endswith(b"\0") else args)
    assert request.raw_args == args + (b"\0" if nul else b"")


@pytest.mark.parametrize("data", [b"", b"\0", b" info-get", b" \0"])
def test_rpci_empty_request_is_rejected(data: bytes) -> None:
    with pytest.raises(rpci.RPCIFormatError):
        rpci.parse_request(data)


@given(st.booleans(), st.binary(max_size=200).filter(lambda b: not b.endswith(b"\0")))
def test_rpci_reply_round_trip(ok: bool, body: bytes) -> None:
    # A body ending in NUL loses it: parse_reply drops one trailing NUL, as vmtoolsd's callers
    # treat replies as C strings.
    assert rpci.parse_reply(rpci.RPCIReply(ok, body).encode()) == rpci.RPCIReply(ok, body)


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"1 ", rpci.RPCIReply(True)),
        (b"1 value", rpci.RPCIReply(True, b"value")),
        (b"0 Unknown command", rpci.RPCIReply(False, rpci.UNKNOWN_COMMAND)),
        (b"1 \0", rpci.RPCIReply(True)),
    ],
)
def test_rpci_parse_reply(data: bytes, reply: rpci.RPCIReply) -> None:
    assert rpci.parse_reply(data) == reply


@pytest.mark.parametrize("data", [b"", b"1", b"0", b"\0", b"1\0", b"2 x", b"10", b"OK ", b" 1 "])
def test_rpci_bad_reply_is_rejected(data: bytes) -> None:
    with pytest.raises(rpci.RPCIFormatError):
        rpci.parse_reply(data)


@given(st.binary(max_size=300))
def test_rpci_garbage_raises_only_rpci_format_error(data: bytes) -> None:
    for parse in (rpci.parse_request, rpci.parse_reply):
        try:
            parse(data)
        except rpci.RPCIFormatError:
            pass



@given(NAMES.filter(lambda n: not n.endswith(b"\0")), st.binary(max_size=40).filter(lambda b: not b.endswith(b"\0")))
def test_rpci_request_encode_round_trips(name: bytes, args: bytes) -> None:
    request = rpci.RPCIRequest(name, args, args)
    assert rpci.parse_request(request.encode()) == request
