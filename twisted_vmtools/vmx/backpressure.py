"""Read no more requests from a peer that does not read its replies.

Twisted buffers whatever is written to a transport; a peer that sends
requests with large answers and never reads would grow that buffer without
bound.  Registered as its own transport's streaming producer, a protocol is
paused when the transport's write buffer fills, and stops reading the peer
until the buffer drains: at most one buffer and one reply per connection.
"""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer, ITransport
from zope.interface import implementer


@implementer(IPushProducer)
class ReadsPausedByWrites:
    """Mix into a protocol; call `hold_reads_while_writing` from ``connectionMade``."""

    transport: ITransport | None
    writes_pending = False  # the transport's write buffer is full: answer nothing more for now

    def hold_reads_while_writing(self) -> None:
        register = getattr(self.transport, "registerProducer", None)
        if register is not None and getattr(self.transport, "producer", None) is None:
            register(self, True)

    def pauseProducing(self) -> None:
        self.writes_pending = True
        pause = getattr(self.transport, "pauseProducing", None)
        if pause is not None:
            pause()

    def resumeProducing(self) -> None:
        self.writes_pending = False
        resume = getattr(self.transport, "resumeProducing", None)
        if resume is not None:
            resume()

    def stopProducing(self) -> None:
        pass
