"""capstone against the builtin length decoder on the system's CPUID sites."""

from __future__ import annotations

import glob
import os

import pytest

from twisted_vmtools.vmx.trap import disasm, elf

# The objects the engine scans for backdoor code on this machine: Debian's
# open-vm-tools (programs, libraries, plugins), and the C library and dynamic
# loader every program maps (whose CPUIDs glibc's cpu-features code runs).
OBJECTS = [
    "/usr/bin/vmtoolsd",
    "/usr/bin/vmware-*",
    "/usr/lib/x86_64-linux-gnu/libvmtools.so.0",
    "/usr/lib/x86_64-linux-gnu/libguestlib.so.0",
    "/usr/lib/x86_64-linux-gnu/libhgfs.so.0",
    "/usr/lib/x86_64-linux-gnu/open-vm-tools/plugins/*/*.so",
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/lib64/ld-linux-x86-64.so.2",
]


def system_objects() -> list[str]:
    paths = []
    for pattern in OBJECTS:
        for path in sorted(glob.glob(pattern)):
            with open(path, "rb") as file:
                if file.read(4) == b"\x7fELF":
                    paths.append(os.path.realpath(path))
    return sorted(set(paths))


def test_capstone_is_preferred_when_installed() -> None:
    pytest.importorskip("capstone")
    assert disasm.preferred().name == "capstone"


def test_both_find_the_same_cpuid_sites_in_the_systems_binaries() -> None:
    capstone = disasm.capstone_sweeper()
    if capstone is None:
        pytest.skip("capstone not installed (the disasm extra)")
    builtin = disasm.BuiltinSweeper()
    total = 0
    for path in system_objects():
        with open(path, "rb") as file:
            image = elf.ELFFile(file.read())
        theirs, ours = image.cpuid_offsets(capstone), image.cpuid_offsets(builtin)
        assert theirs == ours, f"{path}: capstone {set(theirs) - set(ours)}, builtin {set(ours) - set(theirs)}"
        total += len(theirs)
    assert total > 0  # the dynamic loader alone has dozens


def test_a_cpuid_inside_an_immediate_is_no_site_for_either() -> None:
    code = bytes.fromhex("b8 0f a2 00 00  0f a2  8b 0d 00 0f a2 00  0f a2")
    sweepers: list[disasm.Sweeper] = [disasm.BuiltinSweeper()]
    if (capstone := disasm.capstone_sweeper()) is not None:
        sweepers.append(capstone)
    for sweeper in sweepers:
        assert [pos for pos in (5, 1, 9, 13) if sweeper.boundary(code, 0, pos) == pos] == [5, 13]
