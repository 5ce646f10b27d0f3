"""The backdoor register file (codecs/registers.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_vmtools.codecs.registers import (
    BDOOR_PORT,
    CMD_MESSAGE,
    MASK64,
    Registers,
    high16,
    low16,
    pack16,
)

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
