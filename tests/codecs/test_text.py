"""TCLO and RPCI text, the stream preamble, and the backdoor register file."""

from __future__ import annotations

import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from twisted_vmtools.codecs import rpci, tclo
from twisted_vmtools.codecs.message import PROTO_RPCI, PROTO_TCLO
from twisted_vmtools.codecs.registers import (
    BDOOR_PORT,
    CMD_MESSAGE,
    MASK64,
    Registers,
    high16,
    low16,
    pack16,
)
from twisted_vmtools.codecs.stream import (
    PREAMBLE_SIZE,
    StreamKind,
    StreamPreambleError,
    parse_preamble,
)

# A command or request name: no space (it ends the name) and no NUL.
NAMES = st.binary(min_size=1, max_size=40).filter(lambda b: b" " not in b and b"\0" not in b)

# -- TCLO


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


# -- RPCI


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


# -- stream preamble


@pytest.mark.parametrize(
    ("data", "kind"),
    [(b"RPCI", StreamKind.RPCI), (b"TCLO", StreamKind.TCLO), (b"CTRL", StreamKind.CONTROL)],
)
def test_preamble_is_the_ascii_channel_name(data: bytes, kind: StreamKind) -> None:
    assert kind.preamble == data
    assert parse_preamble(data) is kind


def test_preamble_reuses_the_message_channel_protocol_numbers() -> None:
    assert StreamKind.RPCI == PROTO_RPCI and StreamKind.TCLO == PROTO_TCLO
    assert struct.unpack("<I", StreamKind.RPCI.preamble) == (PROTO_RPCI,)


@given(st.binary(max_size=8))
def test_preamble_garbage_raises_only_stream_preamble_error(data: bytes) -> None:
    try:
        kind = parse_preamble(data)
    except StreamPreambleError:
        assert len(data) != PREAMBLE_SIZE or data not in (b"RPCI", b"TCLO", b"CTRL")
    else:
        assert kind.preamble == data


# -- backdoor registers

REGISTER_VALUES = st.integers(0, MASK64)


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_pack16_halves(high: int, low: int) -> None:
    packed = pack16(high, low)
    assert packed <= 0xFFFFFFFF
    assert (high16(packed), low16(packed)) == (high, low)


@given(REGISTER_VALUES)
def test_halves_ignore_garbage_above_32_bits(value: int) -> None:
    # The guest's C code leaves stack garbage in the upper halves; readers must mask it away.
    assert high16(value) == high16(value & 0xFFFFFFFF)
    assert low16(value) == value & 0xFFFF


@given(st.sampled_from(["ax", "bx", "cx", "dx", "si", "di", "bp"]), st.integers(-(1 << 70), 1 << 70))
def test_with_masks_to_64_bits_and_changes_one_register(name: str, value: int) -> None:
    regs = Registers(1, 2, 3, 4, 5, 6, 7)
    changed = regs.with_(**{name: value})
    assert getattr(changed, name) == value & MASK64
    for other in Registers._fields:
        if other != name:
            assert getattr(changed, other) == getattr(regs, other)


def test_command_and_port_are_the_low_halves() -> None:
    regs = Registers(cx=0xDEAD0000 | (5 << 16) | CMD_MESSAGE, dx=0xBEEF0000 | BDOOR_PORT)
    assert regs.command == CMD_MESSAGE
    assert regs.port == BDOOR_PORT


def test_registers_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Registers().ax = 1  # type: ignore[misc]


@given(NAMES.filter(lambda n: not n.endswith(b"\0")), st.binary(max_size=40).filter(lambda b: not b.endswith(b"\0")))
def test_rpci_request_encode_round_trips(name: bytes, args: bytes) -> None:
    request = rpci.RPCIRequest(name, args, args)
    assert rpci.parse_request(request.encode()) == request


def test_every_codec_error_is_a_codec_error() -> None:
    import importlib
    import pkgutil

    import twisted_vmtools.codecs as package
    from twisted_vmtools.codecs.errors import CodecError

    errors = []
    for module in pkgutil.iter_modules(package.__path__):
        loaded = importlib.import_module(f"twisted_vmtools.codecs.{module.name}")
        errors += [
            value for name, value in vars(loaded).items()
            if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == loaded.__name__
        ]
    assert len(errors) >= 10
    assert [e.__name__ for e in errors if not issubclass(e, CodecError)] == []
