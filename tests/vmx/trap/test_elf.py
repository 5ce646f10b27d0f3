"""Object analysis: backdoor detection, CPUID sites, the loader hook."""

from __future__ import annotations

import os

import pytest

from twisted_vmtools.vmx.trap import elf

RPCTOOL = "/usr/bin/vmware-rpctool"
LIBVMTOOLS = "/usr/lib/x86_64-linux-gnu/libvmtools.so.0"
LOADER = "/lib64/ld-linux-x86-64.so.2"


def needs(path: str) -> None:
    if not os.path.exists(path):
        pytest.skip(f"{path} absent")


@pytest.mark.parametrize(("path", "sites"), [(RPCTOOL, 37), (LIBVMTOOLS, 41)])
def test_open_vm_tools_objects(path: str, sites: int) -> None:
    # The counts objdump gives for Debian's open-vm-tools 12.2.0.
    needs(path)
    info = elf.analyse(path)
    assert info.has_backdoor
    assert len(info.cpuid_offsets) == sites
    data = open(path, "rb").read()
    assert all(data[offset : offset + 2] == b"\x0f\xa2" for offset in info.cpuid_offsets)


def test_ordinary_objects_have_no_backdoor() -> None:
    info = elf.analyse("/bin/true")
    assert not info.has_backdoor
    assert info.cpuid_offsets == []


@pytest.mark.slow
def test_test_programs(programs) -> None:
    assert elf.analyse(programs.trapped).has_backdoor
    assert elf.analyse(programs.bdlib).has_backdoor
    assert not elf.analyse(programs.dlmain).has_backdoor


def test_loader_hook_symbol() -> None:
    needs(LOADER)
    info = elf.analyse(LOADER, ("_dl_debug_state", "no_such_symbol"))
    offset = info.symbols["_dl_debug_state"]
    assert offset is not None
    body = open(LOADER, "rb").read()[offset : offset + 5]
    assert body[:1] == b"\xc3" or body == b"\xf3\x0f\x1e\xfa\xc3"
    assert info.symbols["no_such_symbol"] is None


def test_not_elf(tmp_path) -> None:
    path = tmp_path / "script"
    path.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(elf.ELFError):
        elf.analyse(str(path))
