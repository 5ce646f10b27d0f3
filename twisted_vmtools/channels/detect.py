"""Are we in a VMware VM, and how do we reach its backdoor?

The order is the one open-vm-tools follows, and it is a safety rule: the
backdoor instruction is only ever executed once CPUID has said
``VMwareVMware``.  Anywhere else it faults (killing the interpreter) or, for
``vmmcall`` under KVM, is a real hypercall.

1. CPUID leaf 1, ECX bit 31: a hypervisor is present.
2. CPUID leaf 0x40000000: its signature is ``VMwareVMware``.
3. The interface: vmcall/vmmcall when leaf 0x40000000 reaches 0x40000010
   and leaf 0x40000010 ECX advertises it (bit 1 vmcall, bit 0 vmmcall),
   otherwise the I/O port.
4. GETVERSION through that interface: EAX must be 6 and EBX the magic;
   ECX is the VMX type.
"""

from __future__ import annotations

import enum
import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass

from twisted.logger import Logger

from ..codecs.message import Backdoor, BackdoorCall, BackdoorOp
from ..codecs.registers import (
    BDOOR_MAGIC,
    BDOOR_PORT,
    CMD_GETVERSION,
    MASK32,
    VERSION_MAGIC,
    Registers,
    high16,
)

log = Logger()

CpuidFunction = Callable[[int, int], tuple[int, int, int, int]]

VMWARE_SIGNATURE = b"VMwareVMware"
LEAF_FEATURES = 1
LEAF_HYPERVISOR = 0x40000000
LEAF_VMW_FEATURES = 0x40000010
HYPERVISOR_BIT = 1 << 31
VMCALL_BIT = 1 << 1
VMMCALL_BIT = 1 << 0
GETVERSION_UNSET = 0xFFFF  # ECX high half left as pre-loaded: the VMX did not say its type
UNSUPPORTED = 0xFFFFFFFF


class BackdoorInterface(enum.Enum):
    """How a backdoor call reaches the VMX."""

    PORT = "port"  # in / rep insb / rep outsb on 0x5658/0x5659
    VMCALL = "vmcall"  # Intel hypercall
    VMMCALL = "vmmcall"  # AMD hypercall


@dataclass(frozen=True)
class Detection:
    """What detection found; ``vmware`` is the only field a caller must check."""

    vmware: bool
    reason: str
    signature: bytes = b""
    interface: BackdoorInterface | None = None
    version: int | None = None
    vmx_type: int | None = None


def hypervisor_signature(cpuid: CpuidFunction) -> bytes | None:
    """The 12-byte hypervisor signature, or None on bare metal."""
    if not cpuid(LEAF_FEATURES, 0)[2] & HYPERVISOR_BIT:
        return None
    _, ebx, ecx, edx = cpuid(LEAF_HYPERVISOR, 0)
    return struct.pack("<III", ebx & MASK32, ecx & MASK32, edx & MASK32)


def backdoor_interface(cpuid: CpuidFunction) -> BackdoorInterface:
    """Which instruction the VMX wants; only meaningful once the signature is VMware's."""
    if cpuid(LEAF_HYPERVISOR, 0)[0] & MASK32 < LEAF_VMW_FEATURES:
        return BackdoorInterface.PORT
    features = cpuid(LEAF_VMW_FEATURES, 0)[2]
    if features & VMCALL_BIT:
        return BackdoorInterface.VMCALL
    if features & VMMCALL_BIT:
        return BackdoorInterface.VMMCALL
    return BackdoorInterface.PORT


def getversion_call() -> BackdoorCall:
    return BackdoorCall(
        BackdoorOp.LOW_BANDWIDTH,
        Registers(
            ax=BDOOR_MAGIC,
            bx=~BDOOR_MAGIC & MASK32,
            cx=(GETVERSION_UNSET << 16) | CMD_GETVERSION,
            dx=BDOOR_PORT,
        ),
    )


def detect(
    cpuid: CpuidFunction | None = None,
    backdoor_for: Callable[[BackdoorInterface], Backdoor] | None = None,
) -> Detection:
    """Run the whole detection.  Never raises; a refusal says why.

    ``cpuid`` and ``backdoor_for`` default to the C extension; tests inject
    theirs.  ``backdoor_for`` is only called after the signature check.
    """
    if cpuid is None or backdoor_for is None:
        try:
            from .. import _backdoor
        except ImportError as error:
            return Detection(False, f"the C extension twisted_vmtools._backdoor is not built ({error})")
        if not _backdoor.SUPPORTED:
            return Detection(False, "the VMware backdoor is only available on x86-64 Linux")
        cpuid = cpuid or _backdoor.cpuid
        if backdoor_for is None:
            from .backdoor import hardware_executor

            backdoor_for = hardware_executor

    signature = hypervisor_signature(cpuid)
    if signature is None:
        return Detection(False, "no hypervisor (CPUID leaf 1 ECX bit 31 is clear)")
    if signature != VMWARE_SIGNATURE:
        shown = signature.rstrip(b"\0").decode("ascii", "replace")
        return Detection(False, f"the hypervisor is {shown!r}, not VMware", signature)

    interface = backdoor_interface(cpuid)
    try:
        regs = backdoor_for(interface)(getversion_call()).regs
    except Exception as error:
        return Detection(False, f"GETVERSION through the backdoor failed: {error}", signature, interface)
    version, magic = regs.ax & MASK32, regs.bx & MASK32
    if version == UNSUPPORTED or magic != BDOOR_MAGIC:
        return Detection(False, "the backdoor did not answer GETVERSION", signature, interface)
    if version != VERSION_MAGIC:
        return Detection(False, f"unsupported backdoor version {version}", signature, interface, version)
    vmx_type = 0 if high16(regs.cx) == GETVERSION_UNSET else regs.cx & MASK32
    return Detection(True, "VMware", signature, interface, version, vmx_type)


@functools.cache
def detected() -> Detection:
    """`detect` with the real CPUID and backdoor, run once per process (as the tools do)."""
    result = detect()
    log.info(
        "VMware detection: {vmware} ({reason}); backdoor interface {interface}",
        vmware=result.vmware,
        reason=result.reason,
        interface=result.interface.value if result.interface else None,
    )
    return result
