"""TCLO text: commands and replies (codecs/tclo.py)."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.codecs.strategies import NAMES
from twisted_vmtools.codecs import tclo


@given(NAMES, st.binary(max_size=200))
def test_tclo_command_round_trip(name: bytes, args: bytes) -> None:
    assert tclo.parse_command(tclo.TCLOCommand(name, args).encode()) == tclo.TCLOCommand(name, args)


@pytest.mark.parametrize(
    ("data", "name", "args"),
    [
        (b"reset", b"reset", b""),
        (b"ping\0", b"ping", b""),  # a trailing NUL on a bare name is not part of it
        (b"Set_Option broadcastIP 1", b"Set_Option", b"broadcastIP 1"),
        (b"f \x00\x01binary\0", b"f", b"\x00\x01binary\0"),  # binary arguments are kept byte-exact
        (b"Capabilities_Register ", b"Capabilities_Register", b""),
    ],
)
def test_tclo_parse_command(data: bytes, name: bytes, args: bytes) -> None:
    assert tclo.parse_command(data) == tclo.TCLOCommand(name, args)


@pytest.mark.parametrize("data", [b"", b"\0", b" ping", b"pi\0ng", b"a\0\0", b"\0 x"])
def test_tclo_command_without_a_name_is_rejected(data: bytes) -> None:
    with pytest.raises(tclo.TCLOError):
        tclo.parse_command(data)


@given(st.booleans(), st.binary(max_size=200))
def test_tclo_reply_round_trip(ok: bool, body: bytes) -> None:
    assert tclo.parse_reply(tclo.TCLOReply(ok, body).encode()) == tclo.TCLOReply(ok, body)


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"OK ", tclo.TCLOReply(True)),
        (b"OK ATR toolbox", tclo.TCLOReply(True, b"ATR toolbox")),
        (b"ERROR Unknown Command", tclo.TCLOReply(False, tclo.UNKNOWN_COMMAND)),
        (b"OK", tclo.TCLOReply(True)),
        (b"ERROR", tclo.TCLOReply(False)),
    ],
)
def test_tclo_parse_reply(data: bytes, reply: tclo.TCLOReply) -> None:
    assert tclo.parse_reply(data) == reply


@pytest.mark.parametrize("data", [b"", b"ok ", b"OKAY", b"1 yes", b"ERRORS", b" OK "])
def test_tclo_bad_reply_is_rejected(data: bytes) -> None:
    with pytest.raises(tclo.TCLOError):
        tclo.parse_reply(data)


@given(st.binary(max_size=300))
@example(b"\0")
@example(b"\xff\xfe ")
def test_tclo_garbage_raises_only_tclo_error(data: bytes) -> None:
    for parse in (tclo.parse_command, tclo.parse_reply):
        try:
            parse(data)
        except tclo.TCLOError:
            pass


@given(st.binary(max_size=40) | st.sampled_from([b"OK", b"ERROR", b"OK ", b"ERROR x", b"OKAY"]))
@example(b"")
def test_is_reply_agrees_with_parse_reply(data: bytes) -> None:
    try:
        tclo.parse_reply(data)
        parses = True
    except tclo.TCLOError:
        parses = False
    assert tclo.is_reply(data) is parses
    assert tclo.is_reply(b"OK " + data) and tclo.is_reply(b"ERROR " + data)


@given(st.binary(max_size=60))
@example(b"name\0")
@example(b"f ")
def test_command_name_agrees_with_parse_command(data: bytes) -> None:
    try:
        parsed = tclo.parse_command(data)
    except tclo.TCLOError:
        with pytest.raises(tclo.TCLOError):
            tclo.command_name(data)
        return
    name, start = tclo.command_name(data)
    assert (name, data[start:]) == (parsed.name, parsed.args)
