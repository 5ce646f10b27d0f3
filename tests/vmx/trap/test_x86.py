"""The instruction length decoder and the CPUID site finder."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from twisted_vmtools.vmx.trap import x86
from twisted_vmtools.vmx.trap.elf import ELFFile

RPCTOOL = "/usr/bin/vmware-rpctool"


@pytest.mark.parametrize(
    ("code", "length"),
    [
        ("90", 1),
        ("0f a2", 2),  # cpuid
        ("ed", 1),  # in eax,dx
        ("f3 6e", 2),  # rep outsb
        ("48 8b 04 24", 4),  # mov rax,[rsp]  (SIB)
        ("48 87 04 24", 4),  # xchg rax,[rsp]
        ("48 8b 05 00 00 00 00", 7),  # RIP-relative
        ("8b 04 25 00 00 00 00", 7),  # SIB, no base: disp32
        ("48 b8 01 02 03 04 05 06 07 08", 10),  # movabs rax, imm64
        ("66 b8 34 12", 4),  # mov ax, imm16
        ("c7 44 24 08 01 00 00 00", 8),  # mov dword [rsp+8], imm32
        ("66 c7 44 24 08 01 00", 7),  # mov word [rsp+8], imm16
        ("e8 00 00 00 00", 5),
        ("0f 84 00 00 00 00", 6),
        ("f3 0f 1e fa", 4),  # endbr64
        ("66 0f 1f 44 00 00", 6),  # nopw
        ("66 2e 0f 1f 84 00 00 00 00 00", 10),
        ("f6 c1 01", 3),  # test cl,1
        ("f6 d1", 2),  # not cl: no immediate
        ("f7 c1 01 00 00 00", 6),  # test ecx,imm32
        ("a1 00 00 00 00 00 00 00 00", 9),  # mov eax,[moffs64]
        ("67 a1 00 00 00 00", 6),
        ("c8 10 00 00", 4),  # enter
        ("c5 f8 77", 3),  # vzeroupper
        ("c5 fd 6f 04 24", 5),  # vmovdqa ymm0,[rsp]
        ("c4 e3 79 16 c0 01", 6),  # vpextrd eax,xmm0,1
        ("62 f1 fd 48 6f 44 24 01", 8),  # vmovdqa64 zmm0,[rsp+0x40] (disp8*N)
        ("0f 3a 0f c1 08", 5),  # palignr
        ("66 0f 38 00 c1", 5),  # pshufb
        ("0f 0b", 2),  # ud2
        ("0f 01 c1", 3),  # vmcall
        ("0f 01 d9", 3),  # vmmcall
    ],
)
def test_lengths(code: str, length: int) -> None:
    data = bytes.fromhex(code) + b"\x90" * 16
    assert x86.instruction_length(data, 0) == length


def test_cpuid_inside_an_immediate_is_not_a_site() -> None:
    # mov eax, 0xa20f ; cpuid ; mov ecx, [rip + 0x..a20f..] ; cpuid
    code = bytes.fromhex("b8 0f a2 00 00  0f a2  8b 0d 00 0f a2 00  0f a2")
    assert x86.find_cpuid(code, [0], 0, len(code)) == [5, 13]


def test_xen_probe_cpuid_is_found_like_a_disassembler_does() -> None:
    # ud2; "xen"; cpuid -- a linear sweep lands on the cpuid.
    code = bytes.fromhex("87 db 0f 0b 78 65 6e 0f a2 87 db")
    assert x86.find_cpuid(code, [0], 0, len(code)) == [7]


@pytest.mark.skipif(not shutil.which("objdump") or not shutil.which("readelf"), reason="needs binutils")
@pytest.mark.parametrize("path", [RPCTOOL, "/bin/true"])
@pytest.mark.slow
def test_agrees_with_objdump(path: str) -> None:
    try:
        data = open(path, "rb").read()
    except FileNotFoundError:
        pytest.skip(f"{path} absent")
    text = next(s for s in ELFFile(data).sections if s.name == ".text")
    listing = subprocess.run(
        ["objdump", "-d", "-j", ".text", "--no-show-raw-insn", path], capture_output=True, text=True, check=True
    ).stdout
    theirs = {int(m.group(1), 16) for m in re.finditer(r"^\s+([0-9a-f]+):\t", listing, re.M)}
    ours = {
        text.addr + offset - text.offset
        for offset, _length in x86.iter_instructions(data, text.offset, text.offset + text.size)
    }
    assert theirs <= ours
    assert len(ours - theirs) <= 2  # objdump elides runs of zero bytes ("...")
