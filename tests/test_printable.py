"""RPCs as `vmtools-sim log` and ``--trace`` show them: text, with the rest escaped."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_vmtools.printable import readable
from twisted_vmtools.vmx.rpc_text import record_line
from twisted_vmtools.vmx.stores import RPCRecord


def test_text_is_shown_as_is_and_the_rest_escaped() -> None:
    assert readable(b"info-set guestinfo.ip 192.0.2.7") == "info-set guestinfo.ip 192.0.2.7"
    assert readable("café ☃".encode()) == "café ☃"
    assert readable(b"caf\xe9\x00\x01\n\t\x7f") == "caf\\xe9\\x00\\x01\\n\\t\\x7f"
    assert readable(b"C:\\dir") == "C:\\\\dir"  # a backslash is escaped too: an escape is never ambiguous
    assert readable("\u2028\U000e0001".encode()) == "\\u2028\\U000e0001"


@given(st.binary(max_size=32), st.binary(max_size=32))
def test_any_bytes_make_one_printable_line_and_different_bytes_look_different(one: bytes, other: bytes) -> None:
    assert readable(one).isprintable()
    assert (readable(one) == readable(other)) == (one == other)


def test_a_record_line_says_how_much_is_not_shown() -> None:
    record = RPCRecord(0.0, "rpci-in", "rpci#1", b"info-set guestinfo.big " + b"x" * 1000)
    assert record_line(record, shown=12) == "guest→VMX RPCI rpci#1: info-set gue (+1011 bytes)"
    cut = RPCRecord(0.0, "tclo-in", "tclo#2", b"OK ", size=10)  # as the control channel sends it: data cut
    assert record_line(cut) == "guest→VMX TCLO tclo#2: OK  (+7 bytes)"


def test_the_demo_shows_a_binary_report_abridged(capsys: pytest.CaptureFixture[str]) -> None:
    from twisted_vmtools.demo import DEMO_BYTES, _show

    _show(RPCRecord(0.0, "rpci-in", "rpci#1", b"SetGuestInfo  11 " + b"\x01" * 1000 + b"\x00"))  # NUL: dropped
    line = capsys.readouterr().out
    assert line.startswith("    guest→VMX RPCI  SetGuestInfo  11 \\x01\\x01")
    assert line.endswith(f"\\x01 (+{1017 - DEMO_BYTES} bytes)\n")
