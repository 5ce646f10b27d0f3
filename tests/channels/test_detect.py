"""Detection: CPUID first, the backdoor only after CPUID says VMware."""

from __future__ import annotations

import struct

import pytest

from twisted_vmtools.channels.backdoor import host_executor
from twisted_vmtools.channels.detect import (
    BackdoorInterface,
    backdoor_interface,
    detect,
    getversion_call,
    hypervisor_signature,
)
from twisted_vmtools.codecs.message import Backdoor, BackdoorCall, BackdoorResult
from twisted_vmtools.codecs.registers import BDOOR_MAGIC, VMX_TYPE_SCALABLE_SERVER

from .fakes import GARBAGE, FakeVMX


def fake_cpuid(signature: bytes | None, max_leaf: int = 0x40000010, features: int = 0):  # noqa: ANN201
    calls: list[int] = []

    def cpuid(leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        calls.append(leaf)
        if leaf == 1:
            return (0, 0, (1 << 31) if signature is not None else 0, 0)
        if leaf == 0x40000000 and signature is not None:
            return (max_leaf, *struct.unpack("<III", signature.ljust(12, b"\0")))
        if leaf == 0x40000010 and signature is not None:
            return (0, 0, features, 0)
        return (0, 0, 0, 0)

    cpuid.calls = calls  # type: ignore[attr-defined]
    return cpuid


def forbidden(interface: BackdoorInterface) -> Backdoor:
    pytest.fail(f"the backdoor ({interface}) must not be touched")


def vmx_backdoor(interface: BackdoorInterface) -> Backdoor:
    return host_executor(FakeVMX().host)


@pytest.mark.parametrize("signature", [b"KVMKVMKVM", b"XenVMMXenVMM", b"Microsoft Hv", b"TCGTCGTCGTCG", b"VMware"])
def test_other_hypervisors_refused_without_backdoor(signature: bytes) -> None:
    result = detect(fake_cpuid(signature), forbidden)
    assert not result.vmware
    assert result.interface is None
    assert "not VMware" in result.reason


def test_bare_metal_refused_without_backdoor() -> None:
    cpuid = fake_cpuid(None)
    result = detect(cpuid, forbidden)
    assert not result.vmware
    assert "no hypervisor" in result.reason
    assert cpuid.calls == [1]  # type: ignore[attr-defined]


def test_vmware_port() -> None:
    result = detect(fake_cpuid(b"VMwareVMware"), vmx_backdoor)
    assert result.vmware
    assert result.interface is BackdoorInterface.PORT
    assert result.version == 6
    assert result.vmx_type == VMX_TYPE_SCALABLE_SERVER


@pytest.mark.parametrize(
    ("max_leaf", "features", "expected"),
    [
        (0x40000010, 0b10, BackdoorInterface.VMCALL),
        (0x40000010, 0b11, BackdoorInterface.VMCALL),
        (0x40000010, 0b01, BackdoorInterface.VMMCALL),
        (0x40000010, 0b00, BackdoorInterface.PORT),
        (0x4000000F, 0b11, BackdoorInterface.PORT),  # leaf 0x40000010 absent: ignore it
    ],
)
def test_interface_selection(max_leaf: int, features: int, expected: BackdoorInterface) -> None:
    cpuid = fake_cpuid(b"VMwareVMware", max_leaf, features)
    assert backdoor_interface(cpuid) is expected
    seen: list[BackdoorInterface] = []

    def backdoor_for(interface: BackdoorInterface) -> Backdoor:
        seen.append(interface)
        return vmx_backdoor(interface)

    assert detect(cpuid, backdoor_for).interface is expected
    assert seen == [expected]


def test_getversion_registers() -> None:
    regs = getversion_call().regs
    assert (regs.ax, regs.bx, regs.cx, regs.dx) == (BDOOR_MAGIC, 0xA9B2A797, 0xFFFF000A, 0x5658)


def answering(**changes: int):  # noqa: ANN201
    def backdoor_for(interface: BackdoorInterface) -> Backdoor:
        def execute(call: BackdoorCall) -> BackdoorResult:
            return BackdoorResult(call.regs.with_(**changes))

        return execute

    return backdoor_for


@pytest.mark.parametrize(
    ("changes", "vmware", "vmx_type"),
    [
        ({"ax": 6, "bx": BDOOR_MAGIC, "cx": 4}, True, 4),
        ({"ax": 6, "bx": BDOOR_MAGIC}, True, 0),  # ECX high half untouched: type UNSET
        ({"ax": 0xFFFFFFFF, "bx": BDOOR_MAGIC}, False, None),
        ({"ax": 6}, False, None),  # EBX not the magic
        ({"ax": 5, "bx": BDOOR_MAGIC}, False, None),
        ({"ax": GARBAGE.ax, "bx": GARBAGE.bx}, False, None),
    ],
)
def test_getversion_answers(changes: dict[str, int], vmware: bool, vmx_type: int | None) -> None:
    result = detect(fake_cpuid(b"VMwareVMware"), answering(**changes))
    assert result.vmware is vmware
    assert result.vmx_type == vmx_type


def test_backdoor_raising_is_a_refusal() -> None:
    def backdoor_for(interface: BackdoorInterface) -> Backdoor:
        def execute(call: BackdoorCall) -> BackdoorResult:
            raise OSError("SIGSEGV, in spirit")

        return execute

    result = detect(fake_cpuid(b"VMwareVMware"), backdoor_for)
    assert not result.vmware
    assert "SIGSEGV" in result.reason


# -- this machine (a KVM VM): the real CPUID, and the backdoor never touched


def test_real_cpuid_here_refuses_without_backdoor() -> None:
    _backdoor = pytest.importorskip("twisted_vmtools._backdoor")
    if not _backdoor.SUPPORTED:
        pytest.skip("not x86-64 Linux")
    signature = hypervisor_signature(_backdoor.cpuid)
    if signature == b"VMwareVMware":
        pytest.skip("running in a real VMware VM")
    result = detect(_backdoor.cpuid, forbidden)
    assert not result.vmware
    # The C extension's own guard agrees, so its instructions would refuse too.
    assert _backdoor.vmware() is False


def test_default_detection_here_refuses() -> None:
    _backdoor = pytest.importorskip("twisted_vmtools._backdoor")
    if _backdoor.SUPPORTED and hypervisor_signature(_backdoor.cpuid) == b"VMwareVMware":
        pytest.skip("running in a real VMware VM")
    # Safe: the signature check comes before any backdoor call.
    assert not detect().vmware
