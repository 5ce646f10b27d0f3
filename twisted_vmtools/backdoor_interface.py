"""`IBackdoorHost`: the register-level VMX, as every backdoor caller sees it.

Beside both stacks: the simulated VMX implements it (`vmx.backdoor_host`), the
trap engine calls it for a traced program's trapped instructions, and the
guest's `channels.backdoor.host_executor` calls it in memory (tests, benchmarks).

Threading, under the trap engine: every method is called from the engine's
own tracer thread (ptrace only accepts requests from the thread that
attached), never from the reactor thread.  A provider backed by
reactor-owned state must marshal, for example with
`twisted.internet.threads.blockingCallFromThread`.  The traced thread stays
stopped until the method returns, which is exactly the semantics of the real
instruction.
"""

from __future__ import annotations

from zope.interface import Interface

from twisted_vmtools.codecs.registers import Registers


class IBackdoorHost(Interface):
    """The host side of the VMware backdoor, as seen by trapped programs."""

    def low_bandwidth(owner: int, regs: Registers) -> Registers | None:
        """`in eax,dx` on port 0x5658 with EAX = the magic.

        `owner` is the tgid of the calling process.  Return the registers to
        write back (ax, bx, cx, dx, si, di are written zero-extended from 32
        bits; bp is left untouched), or None to deliver the SIGSEGV to the
        program unchanged, as real hardware without a VMX would.
        """

    def high_bandwidth_out(owner: int, regs: Registers, data: bytes) -> Registers:
        """`rep outsb` on port 0x5659: guest -> VMX.

        `data` is the RCX bytes read at RSI.  If they cannot be read the engine
        does not call this method and reports status 0 in EBX[31:16] itself.
        Return the registers to write back (the status is EBX[31:16]); the
        engine then applies the rep semantics (RSI += len(data), RCX = 0).
        """

    def high_bandwidth_in(owner: int, regs: Registers) -> tuple[Registers, bytes]:
        """`rep insb` on port 0x5659: VMX -> guest.

        Return the registers and the bytes (at most RCX) that the engine writes
        at RDI; it then applies the rep semantics (RDI += len(bytes), RCX = 0).
        """

    def owner_exited(owner: int) -> None:
        """Process `owner` (a tgid that used the backdoor) ended or exec'd.

        Its message channels must be closed.
        """
