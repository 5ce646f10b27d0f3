"""A small x86-64 instruction *length* decoder.

The trap engine must find the `cpuid` instructions (0F A2) of a binary
without objdump.  Searching for the two bytes is not enough: they also occur
inside displacements and immediates.  This decoder only computes instruction
lengths in 64-bit mode (legacy prefixes, REX, VEX, EVEX, the one-, two- and
three-byte opcode maps, ModRM/SIB/displacement/immediate), which is all a
linear sweep from a known instruction boundary (a function start) needs.
Opcodes that are invalid in 64-bit mode count as one byte, like a
disassembler's "(bad)", so a sweep never stalls.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator

# Immediate kinds.
_NONE, _IB, _IW, _IZ, _IV, _ENTER, _MOFFS, _GROUP3 = range(8)

_LEGACY_PREFIXES = frozenset((0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65))
# One-byte opcodes that do not exist in 64-bit mode (push/pop of segment
# registers, BCD arithmetic, pusha/popa, far call/jmp, ...).
_INVALID_64 = frozenset(bytes.fromhex("06070e16171e1f272f373f6061829ad4d5d6ea"))


def _one_byte_tables() -> tuple[bytes, tuple[int, ...]]:
    modrm = bytearray(256)
    imm = [_NONE] * 256
    # The eight ALU blocks: op r/m,r (x4 with ModRM), op al,ib, op eAX,iz.
    for base in range(0x00, 0x40, 0x08):
        for i in range(4):
            modrm[base + i] = 1
        imm[base + 4] = _IB
        imm[base + 5] = _IZ
    modrm[0x63] = 1  # movsxd
    imm[0x68] = _IZ
    modrm[0x69], imm[0x69] = 1, _IZ
    imm[0x6A] = _IB
    modrm[0x6B], imm[0x6B] = 1, _IB
    for op in range(0x70, 0x80):
        imm[op] = _IB  # jcc rel8
    for op in (0x80, 0x82, 0x83):
        modrm[op], imm[op] = 1, _IB
    modrm[0x81], imm[0x81] = 1, _IZ
    for op in range(0x84, 0x90):
        modrm[op] = 1
    for op in range(0xA0, 0xA4):
        imm[op] = _MOFFS
    imm[0xA8], imm[0xA9] = _IB, _IZ
    for op in range(0xB0, 0xB8):
        imm[op] = _IB
    for op in range(0xB8, 0xC0):
        imm[op] = _IV
    modrm[0xC0], imm[0xC0] = 1, _IB
    modrm[0xC1], imm[0xC1] = 1, _IB
    imm[0xC2] = _IW
    modrm[0xC6], imm[0xC6] = 1, _IB
    modrm[0xC7], imm[0xC7] = 1, _IZ
    imm[0xC8] = _ENTER
    imm[0xCA] = _IW
    imm[0xCD] = _IB
    for op in range(0xD0, 0xD4):
        modrm[op] = 1
    for op in range(0xD8, 0xE0):
        modrm[op] = 1  # x87
    for op in range(0xE0, 0xE8):
        imm[op] = _IB  # loop*, jrcxz, in/out imm8
    imm[0xE8] = imm[0xE9] = _IZ  # call/jmp rel32 (rel16 is not used in 64-bit code)
    imm[0xEB] = _IB
    modrm[0xF6], imm[0xF6] = 1, _GROUP3
    modrm[0xF7], imm[0xF7] = 1, _GROUP3
    modrm[0xFE] = modrm[0xFF] = 1
    return bytes(modrm), tuple(imm)


def _two_byte_tables() -> tuple[bytes, tuple[int, ...]]:
    modrm = bytearray(b"\x01" * 256)
    imm = [_NONE] * 256
    no_modrm = [0x05, 0x06, 0x07, 0x08, 0x09, 0x0B, 0x0E, 0x77, 0xA0, 0xA1, 0xA2, 0xA8, 0xA9, 0xAA]
    no_modrm += list(range(0x30, 0x38))
    no_modrm += list(range(0x80, 0x90))
    no_modrm += list(range(0xC8, 0xD0))
    for op in no_modrm:
        modrm[op] = 0
    for op in range(0x80, 0x90):
        imm[op] = _IZ  # jcc rel32
    for op in (0x0F, 0x70, 0x71, 0x72, 0x73, 0xA4, 0xAC, 0xBA, 0xC2, 0xC4, 0xC5, 0xC6):
        imm[op] = _IB
    return bytes(modrm), tuple(imm)


_ONE_MODRM, _ONE_IMM = _one_byte_tables()
_TWO_MODRM, _TWO_IMM = _two_byte_tables()


def _modrm_length(code: bytes, pos: int) -> int:
    """Length of ModRM + SIB + displacement starting at `pos` (64-bit addressing)."""
    modrm = code[pos]
    mod = modrm >> 6
    rm = modrm & 7
    if mod == 3:
        return 1
    length = 1
    if rm == 4:
        length += 1
        if mod == 0 and (code[pos + 1] & 7) == 5:
            return length + 4
    elif mod == 0 and rm == 5:
        return length + 4  # RIP-relative
    if mod == 1:
        length += 1
    elif mod == 2:
        length += 4
    return length


def _imm_length(kind: int, opsize16: bool, rex_w: bool, addr32: bool, modrm: int) -> int:
    if kind == _NONE:
        return 0
    if kind == _IB:
        return 1
    if kind == _IW:
        return 2
    if kind == _IZ:
        return 2 if opsize16 else 4
    if kind == _IV:
        return 8 if rex_w else (2 if opsize16 else 4)
    if kind == _ENTER:
        return 3
    if kind == _MOFFS:
        return 4 if addr32 else 8
    # _GROUP3: only test (reg 0/1) of F6/F7 carries an immediate.
    return -1 if (modrm >> 3) & 7 in (0, 1) else 0


def instruction_length(code: bytes, pos: int) -> int:
    """Length in bytes of the instruction at `code[pos]` (64-bit mode)."""
    try:
        return _decode(code, pos)
    except IndexError:
        return len(code) - pos  # truncated at the end of the buffer


def _decode(code: bytes, pos: int) -> int:
    start = pos
    opsize16 = addr32 = rex_w = False
    byte = code[pos]
    while byte in _LEGACY_PREFIXES:
        if byte == 0x66:
            opsize16 = True
        elif byte == 0x67:
            addr32 = True
        pos += 1
        if pos - start >= 14:
            return 1
        byte = code[pos]
    while 0x40 <= byte <= 0x4F:
        rex_w = bool(byte & 8)
        pos += 1
        byte = code[pos]

    if byte in (0xC4, 0xC5, 0x62):
        return _decode_vex(code, start, pos)

    pos += 1
    if byte != 0x0F:
        if byte in _INVALID_64:
            return pos - start  # invalid in 64-bit mode
        has_modrm = _ONE_MODRM[byte]
        kind = _ONE_IMM[byte]
    else:
        byte = code[pos]
        pos += 1
        if byte == 0x38:
            pos += 1  # opcode
            return pos - start + _modrm_length(code, pos)
        if byte == 0x3A:
            pos += 1
            return pos - start + _modrm_length(code, pos) + 1
        has_modrm = _TWO_MODRM[byte]
        kind = _TWO_IMM[byte]

    modrm = 0
    if has_modrm:
        modrm = code[pos]
        pos += _modrm_length(code, pos)
    size = _imm_length(kind, opsize16, rex_w, addr32, modrm)
    if size < 0:  # F6/F7 test: ib for F6, iz for F7
        size = 1 if byte == 0xF6 else (2 if opsize16 else 4)
    return pos + size - start


def _decode_vex(code: bytes, start: int, pos: int) -> int:
    kind = code[pos]
    if kind == 0xC5:
        mmap = 1
        pos += 2
    elif kind == 0xC4:
        mmap = code[pos + 1] & 0x1F
        pos += 3
    else:  # EVEX 62 P0 P1 P2
        mmap = code[pos + 1] & 0x07
        pos += 4
    opcode = code[pos]
    pos += 1
    if mmap == 1 and opcode == 0x77:
        return pos - start  # vzeroupper / vzeroall: no ModRM
    pos += _modrm_length(code, pos)
    if mmap == 3 or (mmap == 1 and _TWO_IMM[opcode] == _IB):
        pos += 1
    return pos - start


def iter_instructions(code: bytes, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Linear sweep: (offset, length) of each instruction in code[start:end]."""
    pos = start
    while pos < end:
        length = instruction_length(code, pos)
        yield pos, length
        pos += length


CPUID = b"\x0f\xa2"


def sweep_to(code: bytes, start: int, target: int) -> int:
    """The first instruction boundary >= `target`, sweeping from `start`."""
    pos = start
    while pos < target:
        pos += instruction_length(code, pos)
    return pos


def find_cpuid(
    code: bytes, anchors: list[int], start: int, end: int, boundary: Callable[[bytes, int, int], int] = sweep_to
) -> list[int]:
    """Offsets of `cpuid` instructions in code[start:end].

    `anchors` are known instruction boundaries (function starts, sorted).  Each
    candidate 0F A2 byte pair is confirmed by a linear sweep from the nearest
    anchor before it, so a pair inside another instruction's displacement or
    immediate is rejected.  `boundary(code, anchor, candidate)` does the sweep:
    this module's decoder by default, a real disassembler's (`disasm`) if given.
    """
    sites: list[int] = []
    candidate = code.find(CPUID, start, end)
    while candidate != -1:
        index = bisect_right(anchors, candidate) - 1
        pos = anchors[index] if index >= 0 and anchors[index] >= start else start
        if boundary(code, pos, candidate) == candidate:
            sites.append(candidate)
        candidate = code.find(CPUID, candidate + 1, end)
    return sites
