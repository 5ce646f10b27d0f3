"""Run under the trap engine by test_trapped.py: the C extension against the simulated VMX.

Exits 0 when detection, RPCI (high-bandwidth both ways) and a TCLO exchange
all work through the real backdoor instructions; prints what failed otherwise.
"""

from __future__ import annotations

import sys

from twisted.internet.task import Clock

from twisted_vmtools.channels.backdoor import BackdoorChannel, hardware_executor
from twisted_vmtools.channels.detect import detect
from twisted_vmtools.codecs.message import PROTO_TCLO, GuestChannel, run_steps


def main() -> int:
    found = detect()
    if not found.vmware or found.interface is None:
        print(f"detection failed: {found}")
        return 1
    print(f"detected: {found}")
    executor = hardware_executor(found.interface)
    channel = BackdoorChannel(executor, Clock())
    replies: list[object] = []
    value = b"v" * 3000
    channel.rpci(b"info-set guestinfo.trapped " + value).addBoth(replies.append)
    channel.rpci(b"info-get guestinfo.trapped").addBoth(replies.append)
    if replies != [b"1 ", b"1 " + value]:
        print(f"RPCI failed: {[r if not isinstance(r, bytes) else r[:40] for r in replies]}")
        return 1

    # The VMX greets a new TCLO channel with reset, then Capabilities_Register; each reply rides the next poll.
    tclo = GuestChannel(PROTO_TCLO)
    run_steps(tclo.open(), executor)
    run_steps(tclo.send(b""), executor)
    first = run_steps(tclo.receive(), executor)
    run_steps(tclo.send(b"OK ATR toolbox"), executor)
    second = run_steps(tclo.receive(), executor)
    run_steps(tclo.close(), executor)
    if (first, second) != (b"reset", b"Capabilities_Register"):
        print(f"TCLO failed: {first!r}, {second!r}")
        return 1
    # The trap engine never advertises the hypercall interface, so the extension
    # must refuse vmcall/vmmcall rather than hand them to the real hypervisor.
    from twisted_vmtools import _backdoor

    for mode in (_backdoor.MODE_VMCALL, _backdoor.MODE_VMMCALL):
        try:
            _backdoor.lb(0x564D5868, 0, 10, 0x5658, 0, 0, mode)
        except OSError:
            continue
        print(f"hypercall mode {mode} was not refused")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
