"""``--transport auto``: vsock when it works, the backdoor when it does not (see select.py)."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..codecs.tclo import RESET
from .backdoor import BackdoorChannel
from .interfaces import ChannelError, IGuestChannel, ITCLOCommands, ITCLOHandler
from .vsock import VsockChannel, VsockConnectError

VSOCK_ATTEMPTS = 3
VSOCK_ATTEMPT_INTERVAL = 0.1
FIRST_FALLBACK_DELAY = 2.0
MAX_FALLBACK_DELAY = 300.0


@implementer(IGuestChannel)
class AutoChannel:
    """vsock when it works, the backdoor when it does not (``--transport auto``)."""

    log = Logger()

    def __init__(self, vsock: VsockChannel, backdoor: BackdoorChannel, clock: IReactorTime) -> None:
        self._vsock = vsock
        self._backdoor = backdoor
        self._clock = clock
        self._retry_at = 0.0  # before this, RPCI goes straight to the backdoor
        self._fallback_delay = FIRST_FALLBACK_DELAY
        self.tclo_via: str | None = None
        self.rpci_via: str | None = None
        self._unobserve: Callable[[], None] | None = None

    @property
    def name(self) -> str:
        return f"auto(tclo={self.tclo_via or '-'}, rpci={self.rpci_via or '-'})"

    # -- RPCI

    def rpci(self, request: bytes) -> Deferred[bytes]:
        return defer.ensureDeferred(self._rpci(request))

    async def _rpci(self, request: bytes) -> bytes:
        if self._clock.seconds() >= self._retry_at:
            try:
                reply = await self._vsock_rpci(request)
            except VsockConnectError as error:
                self._vsock_failed(error)
            else:
                if self.rpci_via != "vsock":
                    # Moving (back) to vsock: free the backdoor's channel, as the tools do.
                    await self._backdoor.close_rpci()
                    self.rpci_via = "vsock"
                self._fallback_delay = FIRST_FALLBACK_DELAY
                return reply
        self.rpci_via = "backdoor"
        return await self._backdoor.rpci(request)

    async def _vsock_rpci(self, request: bytes) -> bytes:
        for attempt in range(1, VSOCK_ATTEMPTS + 1):
            try:
                return await self._vsock.rpci(request)
            except VsockConnectError:
                if attempt == VSOCK_ATTEMPTS:
                    raise
            await deferLater(self._clock, VSOCK_ATTEMPT_INTERVAL, lambda: None)
        raise AssertionError("unreachable")

    def _vsock_failed(self, error: ChannelError) -> None:
        self.log.info(
            "vsock RPCI unavailable ({error}); using the backdoor for {delay} s",
            error=error,
            delay=self._fallback_delay,
        )
        self._retry_at = self._clock.seconds() + self._fallback_delay
        self._fallback_delay = min(self._fallback_delay * 2, MAX_FALLBACK_DELAY)

    def _reset_seen(self) -> None:
        # After a reset the VMX may have gained vsock (vMotion, upgrade): try it at the next call.
        self._retry_at = 0.0

    # -- TCLO

    def start(self, tclo: ITCLOHandler) -> None:
        # Through the dispatcher's observer seam, as guest features watch reset; a bare
        # ITCLOHandler cannot be watched and leaves only the timed retries.
        if ITCLOCommands.providedBy(tclo):
            self._unobserve = tclo.observe(RESET, lambda args: self._reset_seen())
        self._vsock.start(tclo)
        self._vsock.first_tclo_attempt().addCallbacks(self._tclo_on_vsock, self._tclo_fallback, errbackArgs=(tclo,))

    def _tclo_on_vsock(self, _: object) -> None:
        self.tclo_via = "vsock"

    def _tclo_fallback(self, failure: Failure, handler: ITCLOHandler) -> None:
        self.log.info("vsock TCLO unavailable ({error}); polling the backdoor", error=failure.getErrorMessage())
        # Not right now: this runs inside the vsock ClientService's own failure handling,
        # and stopping it from there is re-entrant.
        self._clock.callLater(0, self._vsock.stop_tclo)
        self.tclo_via = "backdoor"
        self._backdoor.start(handler)

    def stop(self) -> Deferred[None]:
        if self._unobserve is not None:
            self._unobserve()
            self._unobserve = None
        stopping = [self._vsock.stop(), self._backdoor.stop()]
        return defer.gatherResults(stopping).addCallback(lambda _: None)
