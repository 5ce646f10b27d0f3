"""Just enough ELF64 (little-endian) parsing for the trap engine.

What the engine asks of an object file: its executable bytes, where its
functions start (from `.eh_frame_hdr`, which every x86-64 object built by GCC
or Clang carries, stripped or not), whether its code holds the backdoor magic,
the file offsets of its `cpuid` instructions, and a dynamic symbol's address
(ld.so's `_dl_debug_state`).  Results are cached per file identity because
vmtoolsd's fork-and-exec pipelines map the same libraries dozens of times.
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass, field

from twisted_vmtools.codecs.registers import BDOOR_MAGIC

from . import disasm, x86

PT_LOAD = 1
PT_NOTE = 4
PT_GNU_EH_FRAME = 0x6474E550
PF_X = 1
SHT_DYNSYM = 11
SHF_EXECINSTR = 4
NT_GNU_BUILD_ID = 3

# `mov eax, 0x564D5868` and every other use of the magic as an immediate
# contains these four bytes; a library without them cannot issue backdoor
# calls, so its CPUID results need no faking.
MAGIC_BYTES = struct.pack("<I", BDOOR_MAGIC)


class ELFError(Exception):
    """The file is not a little-endian x86-64 ELF64 object we can read."""


@dataclass(frozen=True)
class Segment:
    vaddr: int
    offset: int
    filesz: int
    flags: int


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    entsize: int


@dataclass
class ObjectInfo:
    """What the engine needs to know about one object file."""

    build_id: bytes | None
    has_backdoor: bool
    # File offsets of verified `cpuid` instructions (only if has_backdoor).
    cpuid_offsets: list[int] = field(default_factory=list)
    # File offsets of the dynamic symbols asked for (None: not defined).
    symbols: dict[str, int | None] = field(default_factory=dict)


class ELFFile:
    def __init__(self, data: bytes) -> None:
        if data[:4] != b"\x7fELF" or len(data) < 64:
            raise ELFError("not an ELF file")
        if data[4] != 2 or data[5] != 1:
            raise ELFError("not a little-endian ELF64 file")
        self.data = data
        try:
            (
                self.type,
                machine,
                _version,
                _entry,
                phoff,
                shoff,
                _flags,
                _ehsize,
                phentsize,
                phnum,
                shentsize,
                shnum,
                shstrndx,
            ) = struct.unpack_from("<HHIQQQIHHHHHH", data, 16)
            if machine != 62:
                raise ELFError("not an x86-64 object")
            self.segments = self._read_segments(phoff, phentsize, phnum)
            self.sections = self._read_sections(shoff, shentsize, shnum, shstrndx)
        except struct.error as exc:
            raise ELFError(f"truncated ELF file: {exc}") from None

    def _read_segments(self, phoff: int, size: int, count: int) -> list[tuple[int, Segment]]:
        segments = []
        for i in range(count):
            p_type, p_flags, p_offset, p_vaddr, _paddr, p_filesz, _memsz, _align = struct.unpack_from(
                "<IIQQQQQQ", self.data, phoff + i * size
            )
            segments.append((p_type, Segment(p_vaddr, p_offset, p_filesz, p_flags)))
        return segments

    def _read_sections(self, shoff: int, size: int, count: int, strndx: int) -> list[Section]:
        if not shoff or not count or shoff + count * size > len(self.data):
            return []
        raw = [struct.unpack_from("<IIQQQQIIQQ", self.data, shoff + i * size) for i in range(count)]
        names_offset = raw[strndx][4] if strndx < count else 0
        sections = []
        for name, s_type, flags, addr, offset, s_size, link, _info, _align, entsize in raw:
            end = self.data.find(b"\0", names_offset + name)
            label = self.data[names_offset + name : end].decode("latin-1") if names_offset else ""
            sections.append(Section(label, s_type, flags, addr, offset, s_size, link, entsize))
        return sections

    def code_ranges(self) -> list[tuple[int, int, int]]:
        """(file offset, end offset, vaddr) of the executable code.

        Executable sections when the section table exists (an executable
        segment may also hold headers and read-only data), else executable
        PT_LOAD segments.
        """
        ranges = [
            (s.offset, s.offset + s.size, s.addr)
            for s in self.sections
            if s.flags & SHF_EXECINSTR and s.type != 8  # SHT_NOBITS
        ]
        if ranges:
            return ranges
        return [
            (seg.offset, seg.offset + seg.filesz, seg.vaddr)
            for p_type, seg in self.segments
            if p_type == PT_LOAD and seg.flags & PF_X
        ]

    def vaddr_to_offset(self, vaddr: int) -> int | None:
        for p_type, seg in self.segments:
            if p_type == PT_LOAD and seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                return vaddr - seg.vaddr + seg.offset
        return None

    def build_id(self) -> bytes | None:
        for p_type, seg in self.segments:
            if p_type != PT_NOTE:
                continue
            pos, end = seg.offset, seg.offset + seg.filesz
            while pos + 12 <= end:
                namesz, descsz, n_type = struct.unpack_from("<III", self.data, pos)
                name_end = pos + 12 + ((namesz + 3) & ~3)
                desc_end = name_end + ((descsz + 3) & ~3)
                if n_type == NT_GNU_BUILD_ID and self.data[pos + 12 : pos + 15] == b"GNU":
                    return self.data[name_end : name_end + descsz]
                pos = desc_end
        return None

    def function_starts(self) -> list[int]:
        """Virtual addresses of the functions listed in `.eh_frame_hdr`."""
        for p_type, seg in self.segments:
            if p_type != PT_GNU_EH_FRAME:
                continue
            base = seg.offset
            _version, ptr_enc, count_enc, table_enc = self.data[base : base + 4]
            # The universal layout: 4-byte eh_frame pointer, udata4 count,
            # datarel|sdata4 table.  Anything else: no anchors, fall back to
            # a sweep from the section start.
            if ptr_enc & 0x0F not in (0x03, 0x0B) or count_enc != 0x03 or table_enc != 0x3B:
                return []
            (count,) = struct.unpack_from("<I", self.data, base + 8)
            table = struct.unpack_from(f"<{2 * count}i", self.data, base + 12)
            return sorted(seg.vaddr + table[2 * i] for i in range(count))
        return []

    def dynamic_symbol(self, name: str) -> int | None:
        wanted = name.encode()
        for section in self.sections:
            if section.type != SHT_DYNSYM or section.link >= len(self.sections):
                continue
            strtab = self.sections[section.link]
            for pos in range(section.offset, section.offset + section.size, section.entsize or 24):
                st_name, _info, _other, _shndx, value, _size = struct.unpack_from("<IBBHQQ", self.data, pos)
                start = strtab.offset + st_name
                if self.data[start : start + len(wanted) + 1] == wanted + b"\0" and value:
                    return int(value)
        return None

    def has_backdoor_code(self) -> bool:
        return any(self.data.find(MAGIC_BYTES, start, end) != -1 for start, end, _ in self.code_ranges())

    def cpuid_offsets(self, sweeper: disasm.Sweeper | None = None) -> list[int]:
        """File offsets of the `cpuid` instructions, verified by decoding
        (with `sweeper`, by default capstone if installed, else our decoder)."""
        boundary = (sweeper or disasm.preferred()).boundary
        anchors = []
        for vaddr in self.function_starts():
            offset = self.vaddr_to_offset(vaddr)
            if offset is not None:
                anchors.append(offset)
        anchors.sort()
        sites: list[int] = []
        for start, end, _vaddr in self.code_ranges():
            sites.extend(x86.find_cpuid(self.data, anchors, start, end, boundary))
        return sites


def _analyse(elf: ELFFile, symbols: tuple[str, ...]) -> ObjectInfo:
    has_backdoor = elf.has_backdoor_code()
    info = ObjectInfo(
        build_id=elf.build_id(),
        has_backdoor=has_backdoor,
        cpuid_offsets=elf.cpuid_offsets() if has_backdoor else [],
    )
    for name in symbols:
        value = elf.dynamic_symbol(name)
        info.symbols[name] = elf.vaddr_to_offset(value) if value is not None else None
    return info


_cache: dict[tuple[int, int, int, int], ObjectInfo] = {}
_cache_lock = threading.Lock()


def analyse(path: str, symbols: tuple[str, ...] = ()) -> ObjectInfo:
    """Analyse an object file (cached by device, inode, size and mtime)."""
    with open(path, "rb") as file:
        st = os.fstat(file.fileno())
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with _cache_lock:
            cached = _cache.get(key)
        if cached is not None and all(name in cached.symbols for name in symbols):
            return cached
        data = file.read()
    try:
        info = _analyse(ELFFile(data), symbols)
    except (struct.error, IndexError, ValueError) as exc:
        raise ELFError(f"{path}: malformed ELF file: {exc}") from None
    if cached is not None:
        info.symbols = {**cached.symbols, **info.symbols}
    with _cache_lock:
        _cache[key] = info
    return info
