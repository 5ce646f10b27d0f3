"""What the Vix conformance steps compare of a raw reply."""

from __future__ import annotations

from twisted_vmtools.vmx.conformance_vix import _errno_hidden


def test_a_failed_replys_errno_residue_is_not_compared() -> None:
    # vmtoolsd's additional error for a refused request is errno left over from earlier work.
    assert _errno_hidden("OK 3025 2 \x00") == _errno_hidden("OK 3025 0 \x00") == "OK 3025 <errno> \x00"


def test_a_successful_reply_is_compared_whole() -> None:
    assert _errno_hidden("OK 0 0 1234") == "OK 0 0 1234"
    assert _errno_hidden("OK 10001 0 \x00") != _errno_hidden("OK 3025 0 \x00")
