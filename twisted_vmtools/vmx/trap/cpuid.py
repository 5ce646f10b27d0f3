"""CPUID as a traced program must see it: the real CPU, dressed as VMware.

The guest tools decide whether they run on VMware from CPUID alone (leaf 1
ECX bit 31 and the 0x40000000 signature), so the tracer answers every CPUID a
traced backdoor-using object executes.  Real leaves are computed here, in the
tracer, by a tiny machine-code stub (CPUID and nothing else) because Python
has no CPUID.  The hypervisor range is replaced wholesale: the real
hypervisor's leaves never leak through, and the VMware features leaf never
advertises VMCALL/VMMCALL (the tools would then use them, and on KVM
`vmmcall` reaches the real hypervisor).
"""

from __future__ import annotations

import ctypes
import mmap
import struct

from .ptrace import libc

Result = tuple[int, int, int, int]

VMWARE_SIGNATURE = b"VMwareVMware"
HYPERVISOR_BIT = 1 << 31  # CPUID.1:ECX[31]
HYPERVISOR_BASE = 0x40000000
VMWARE_TIMING_LEAF = 0x40000010
DEFAULT_BUS_KHZ = 66000  # the APIC bus clock VMware typically reports

# push rbx; mov eax,edi; mov ecx,esi; mov r8,rdx; cpuid;
# mov [r8],eax; mov [r8+4],ebx; mov [r8+8],ecx; mov [r8+12],edx; pop rbx; ret
_STUB = bytes.fromhex("53 89f8 89f1 4989d0 0fa2 418900 41895804 41894808 4189500c 5b c3")

_CpuidFunction = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))

_mmap = libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_mprotect = libc.mprotect
_mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

_function: ctypes._CFuncPtr | None = None  # type: ignore[name-defined]


def _stub() -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    global _function
    if _function is None:
        size = mmap.PAGESIZE
        address = _mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap for the CPUID stub failed")
        ctypes.memmove(address, _STUB, len(_STUB))
        # W^X: the page is never writable and executable at once.
        if _mprotect(address, size, mmap.PROT_READ | mmap.PROT_EXEC) != 0:
            raise OSError(ctypes.get_errno(), "mprotect for the CPUID stub failed")
        _function = _CpuidFunction(address)
    return _function


def real_cpuid(leaf: int, subleaf: int = 0) -> Result:
    """CPUID executed on the tracer's CPU."""
    out = (ctypes.c_uint32 * 4)()
    _stub()(leaf & 0xFFFFFFFF, subleaf & 0xFFFFFFFF, out)
    return out[0], out[1], out[2], out[3]


def hypervisor_signature() -> bytes | None:
    """The real hypervisor's 12-byte signature, or None on bare metal."""
    if not real_cpuid(1)[2] & HYPERVISOR_BIT:
        return None
    _eax, ebx, ecx, edx = real_cpuid(HYPERVISOR_BASE)
    return struct.pack("<III", ebx, ecx, edx)


def _tsc_khz() -> int:
    """The TSC frequency for the VMware timing leaf, best source first."""
    signature = hypervisor_signature()
    if signature is not None:
        max_leaf = real_cpuid(HYPERVISOR_BASE)[0]
        if max_leaf >= VMWARE_TIMING_LEAF:
            eax = real_cpuid(VMWARE_TIMING_LEAF)[0]
            if eax:
                return eax
    if real_cpuid(0)[0] >= 0x15:
        denominator, numerator, crystal_hz, _ = real_cpuid(0x15)
        if denominator and numerator and crystal_hz:
            return crystal_hz * numerator // denominator // 1000
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError):
        pass
    return 0


class VMwareCPUID:
    """Answers CPUID leaves the way a VMware virtual CPU would."""

    def __init__(self, tsc_khz: int | None = None, bus_khz: int = DEFAULT_BUS_KHZ) -> None:
        self.tsc_khz = _tsc_khz() if tsc_khz is None else tsc_khz
        self.bus_khz = bus_khz

    def __call__(self, leaf: int, subleaf: int) -> Result:
        leaf &= 0xFFFFFFFF
        if leaf & 0xF0000000 == HYPERVISOR_BASE:
            # The whole 0x4xxxxxxx range: VMware's leaves, zeros elsewhere,
            # so no other hypervisor interface can be discovered.
            if leaf == HYPERVISOR_BASE:
                ebx, ecx, edx = struct.unpack("<III", VMWARE_SIGNATURE)
                return VMWARE_TIMING_LEAF, ebx, ecx, edx
            if leaf == VMWARE_TIMING_LEAF:
                # ECX bits 0/1 (VMMCALL/VMCALL backdoor) must stay clear.
                return self.tsc_khz & 0xFFFFFFFF, self.bus_khz & 0xFFFFFFFF, 0, 0
            return 0, 0, 0, 0
        eax, ebx, ecx, edx = real_cpuid(leaf, subleaf)
        if leaf == 1:
            ecx |= HYPERVISOR_BIT
        return eax, ebx, ecx, edx


def cpuid_faulting_available() -> bool:
    """Whether the kernel can make CPUID fault (ARCH_SET_CPUID)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return "cpuid_fault" in line.split()
    except OSError:
        pass
    return False
