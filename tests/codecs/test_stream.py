"""The stream transport's preamble (codecs/stream.py)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_vmtools.codecs.message import PROTO_RPCI, PROTO_TCLO
from twisted_vmtools.codecs.stream import (
    PREAMBLE_SIZE,
    StreamKind,
    StreamPreambleError,
    parse_preamble,
)


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
