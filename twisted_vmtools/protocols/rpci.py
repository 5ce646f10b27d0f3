"""RPCI: the guest's requests to the VMX."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ..channels.interfaces import IGuestChannel
from ..codecs.rpci import RPCIFormatError, parse_reply
from ..printable import TRACE_BYTES, abridged


class RPCIError(Exception):
    """The VMX answered ``0 …`` (or something that is not an RPCI reply)."""

    def __init__(self, request: bytes, reply: bytes) -> None:
        super().__init__(reply.decode("utf-8", "replace"))
        self.request = request
        self.reply = reply


class RPCI:
    """``call(b"info-get guestinfo.x")`` fires with the reply body, or fails with `RPCIError`.

    ``trace`` logs every request and reply, which is what ``--trace`` shows.
    """

    log = Logger()

    def __init__(self, channel: IGuestChannel, *, trace: bool = False) -> None:
        self.channel = channel
        self.trace = trace

    def call(self, request: bytes) -> Deferred[bytes]:
        # Plain callbacks rather than a coroutine: this is the per-RPC hot path.
        if self.trace:
            self.log.info("RPCI → {text}", text=abridged(request, TRACE_BYTES), request=request)
        return self.channel.rpci(request).addCallback(self._reply, request)

    def _reply(self, raw: bytes, request: bytes) -> bytes:
        if self.trace:
            self.log.info("RPCI ← {text}", text=abridged(raw, TRACE_BYTES), reply=raw)
        try:
            reply = parse_reply(raw)
        except RPCIFormatError:
            raise RPCIError(request, raw) from None
        if not reply.ok:
            raise RPCIError(request, reply.body)
        return reply.body
