"""The CPUID view a trapped program gets."""

from __future__ import annotations

import struct

from twisted_vmtools.vmx.trap.cpuid import VMwareCPUID, real_cpuid


def test_vmware_leaves() -> None:
    view = VMwareCPUID(tsc_khz=2_000_000, bus_khz=66_000)
    eax, ebx, ecx, edx = view(0x40000000, 0xDEAD)  # garbage sub-leaf, as the tools pass
    assert eax == 0x40000010
    assert struct.pack("<III", ebx, ecx, edx) == b"VMwareVMware"
    assert view(0x40000010, 0) == (2_000_000, 66_000, 0, 0)
    assert view(0x40000001, 0) == (0, 0, 0, 0)
    assert view(0x40000100, 0) == (0, 0, 0, 0)


def test_real_leaves_pass_through_with_the_hypervisor_bit() -> None:
    view = VMwareCPUID(tsc_khz=1)
    assert view(0, 0) == real_cpuid(0)
    assert view(1, 0)[2] & (1 << 31)
    assert view(1, 0)[0] == real_cpuid(1)[0]  # family/model/stepping
