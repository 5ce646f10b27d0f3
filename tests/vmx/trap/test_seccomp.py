"""The seccomp filter's decisions, checked by interpreting its BPF."""

from __future__ import annotations

import errno
import struct

import pytest

from twisted_vmtools.vmx.trap import seccomp

X86_64 = seccomp.AUDIT_ARCH_X86_64


def decide(nr: int, arg0: int = 0, arch: int = X86_64) -> int:
    """Run the filter on a `struct seccomp_data` (classic BPF subset)."""
    program = seccomp.seccomp_program()
    insns = [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)]
    data = struct.pack("<iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    acc = pc = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:
            (acc,) = struct.unpack_from("<I", data, k)
        elif code == 0x15:
            pc += jt if acc == k else jf
        elif code == 0x45:
            pc += jt if acc & k else jf
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected BPF opcode {code:#x}")


ALLOW = seccomp.SECCOMP_RET_ALLOW


def errno_of(action: int) -> int:
    assert action & 0xFFFF0000 == seccomp.SECCOMP_RET_ERRNO
    return action & 0xFFFF


@pytest.mark.parametrize("nr", seccomp.FORBIDDEN_SYSCALLS)
def test_forbidden_calls_fail_with_eperm(nr: int) -> None:
    assert errno_of(decide(nr)) == errno.EPERM


def test_vsock_sockets_are_refused() -> None:
    for nr in (seccomp.SYS_SOCKET, seccomp.SYS_SOCKETPAIR):
        assert errno_of(decide(nr, seccomp.AF_VSOCK)) == errno.EAFNOSUPPORT
        # Garbage in the upper half of the int argument does not matter.
        assert errno_of(decide(nr, (0xFFFF << 32) | seccomp.AF_VSOCK)) == errno.EAFNOSUPPORT
        assert decide(nr, 2) == ALLOW  # AF_INET
        assert decide(nr, 1) == ALLOW  # AF_UNIX


def test_x32_and_foreign_architectures() -> None:
    assert errno_of(decide(seccomp.X32_SYSCALL_BIT | seccomp.SYS_IOPL)) == errno.ENOSYS
    assert decide(0, arch=0x40000003) == seccomp.SECCOMP_RET_KILL_PROCESS  # i386
    assert errno_of(decide(seccomp.SYS_IO_URING_SETUP)) == errno.ENOSYS


def test_ordinary_calls_are_allowed() -> None:
    # read write open connect clone fork execve kill arch_prctl exit_group clone3
    for nr in (0, 1, 2, 42, 56, 57, 59, 62, 158, 231, 435):
        assert decide(nr) == ALLOW


def test_the_walls_named_in_the_threat_model_are_refused() -> None:
    # docs/security.md: ptrace and cross-process memory; undoing the mount
    # table or recreating /dev/vsock; leaving the namespaces.
    for nr in (101, 310, 311, 438, 165, 166, 133, 259, 272, 308, 428, 429, 430, 442):
        assert errno_of(decide(nr)) == errno.EPERM, nr
