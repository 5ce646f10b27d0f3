"""Instruction boundaries for the CPUID site finder: a real disassembler when installed.

The engine plants `int3` over what it decides is a `cpuid` instruction, so a wrong
instruction boundary corrupts the program.  capstone (the `disasm` extra) decodes the
whole x86-64 instruction set, so the engine prefers it; the package's own length decoder
(`x86`) is the fallback, so the engine works without it.  Both answer one question for
`x86.find_cpuid`: sweeping linearly from a known instruction boundary, where is the
first boundary at or after a given offset?  Undecodable bytes count as one byte in both
(capstone's SKIPDATA, the decoder's "(bad)"), so a sweep never stalls.
"""

from __future__ import annotations

from typing import Any, Protocol

from . import x86

MAX_INSTRUCTION = 15  # bytes: the architectural limit


class Sweeper(Protocol):
    name: str

    def boundary(self, code: bytes, start: int, target: int) -> int:
        """The first instruction boundary >= `target`, sweeping from `start`."""


class BuiltinSweeper:
    """The package's own instruction-length decoder."""

    name = "builtin"

    def boundary(self, code: bytes, start: int, target: int) -> int:
        return x86.sweep_to(code, start, target)


class CapstoneSweeper:
    """capstone, 64-bit mode, lengths only (no operand details)."""

    name = "capstone"

    def __init__(self) -> None:
        import capstone  # the `disasm` extra

        self._capstone: Any = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self._capstone.skipdata = True

    def boundary(self, code: bytes, start: int, target: int) -> int:
        # Enough bytes past the target to decode an instruction straddling it whole.
        chunk = code[start : target + MAX_INSTRUCTION]
        offset = target - start
        for address, _size, _mnemonic, _operands in self._capstone.disasm_lite(chunk, 0):
            if address >= offset:
                return start + address
        return start + len(chunk)


def capstone_sweeper() -> CapstoneSweeper | None:
    """capstone's sweeper, or None when capstone is not installed."""
    try:
        return CapstoneSweeper()
    except ImportError:
        return None


_preferred: Sweeper | None = None


def preferred() -> Sweeper:
    """capstone when installed, else the builtin decoder (decided once)."""
    global _preferred
    if _preferred is None:
        _preferred = capstone_sweeper() or BuiltinSweeper()
    return _preferred
