"""Run under the trap engine by test_trapped.py: the C extension against the simulated VMX.

Exits 0 when detection, RPCI (high-bandwidth both ways) and a TCLO exchange
all work through the real backdoor instructions; prints what failed otherwise.
"""

from __future__ import annotations

import sys

from twisted.internet.task import Clock

from twisted_vmtools.channels.backdoor import BackdoorChannel, hardware_executor
from twisted_vmtools.channels.detect import detect
from twisted_vmtools.codecs.message import (
    PROTO_RPCI,
    PROTO_TCLO,
    BackdoorCall,
    BackdoorResult,
    DirectBackdoor,
    ExchangeWords,
    GuestChannel,
    run_steps,
)


class StoppingEarly:
    """The extension's calls, its exchange told that no status bit means high bandwidth."""

    def __init__(self, port: DirectBackdoor) -> None:
        self.port = port
        self.lb, self.hb_out, self.hb_in = port.lb, port.hb_out, port.hb_in
        self.stages: list[int] = []

    def __call__(self, call: BackdoorCall) -> BackdoorResult:
        return self.port(call)

    def exchange(self, payload: bytes, words: ExchangeWords, /) -> bytes | tuple[int, tuple[int, ...], bytes, int]:
        result = self.port.exchange(payload, words._replace(hb=0))
        if not isinstance(result, bytes):
            self.stages.append(result[0])
        return result


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
    # Through the extension's whole-exchange call (the channel's RPCI above went through it too).
    assert isinstance(executor, DirectBackdoor)
    tclo = GuestChannel(PROTO_TCLO)
    run_steps(tclo.open(), executor)
    first = tclo.exchange_direct(b"", executor)
    second = tclo.exchange_direct(b"OK ATR toolbox", executor)
    run_steps(tclo.close(), executor)
    if (first, second) != (b"reset", b"Capabilities_Register"):
        print(f"TCLO failed: {first!r}, {second!r}")
        return 1
    # Where the extension's exchange stops and the guest goes on: told that no status
    # means high bandwidth, it stops at SENDSIZE (the request then goes at low bandwidth)
    # or, with nothing to send, at RECVSIZE.
    rpci = GuestChannel(PROTO_RPCI)
    run_steps(rpci.open(), executor)
    stopping = StoppingEarly(executor)
    for request, stage in ((b"info-get guestinfo.trapped", 0), (b"", 2)):
        reply = rpci.exchange_direct(request, stopping)
        if stopping.stages != [stage] or (request and reply != b"1 " + value) or (not request and not reply):
            print(f"an exchange stopping early failed: {stopping.stages}, {reply[:40]!r}")
            return 1
        stopping.stages.clear()
    run_steps(rpci.close(), executor)
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
