"""Run by test_backpressure: a real reactor, a VMX on a socketpair, a peer that never reads.

The peer sends ``sys.argv[1]`` requests whose answers are 1 MB each, then nothing; the VMX's
end of the connection is inspected after a while: the bytes it holds for that peer are printed.
"""

from __future__ import annotations

import socket
import sys

from twisted.internet import reactor

from twisted_vmtools.codecs.datamap import VsockPacket
from twisted_vmtools.codecs.stream import StreamKind
from twisted_vmtools.vmx.access import Peer
from twisted_vmtools.vmx.model import VMX
from twisted_vmtools.vmx.stream import VMXStreamFactory


def main(requests: int) -> None:
    vmx = VMX(reactor)  # type: ignore[arg-type]
    vmx.guestinfo["guestinfo.big"] = b"b" * 1_000_000
    factory = VMXStreamFactory(vmx, peer=lambda transport: Peer(uid=0))
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, factory)  # type: ignore[attr-defined]
    ours.close()
    theirs.sendall(StreamKind.RPCI.preamble + VsockPacket.data(b"info-get guestinfo.big").encode() * requests)

    def inspect() -> None:
        held = [c._tempDataLen + len(c.dataBuffer) for c in reactor.getWriters()]  # type: ignore[attr-defined]
        print(max(held, default=0))
        reactor.stop()

    reactor.callLater(1.0, inspect)
    reactor.run()
    theirs.close()


main(int(sys.argv[1]))
