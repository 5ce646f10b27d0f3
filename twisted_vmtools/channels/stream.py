"""The stream channel: vsock framing over any Twisted stream endpoint.

This is how a guest reaches `vmtools-sim` (``unix:PATH``, ``tcp:HOST:PORT``).
Two connections, as on vsock: TCLO (the VMX pushes commands, the guest
answers each and sends a heartbeat PING every second) and RPCI (requests and
replies in order).  The TCLO connection is kept up by a `ClientService`, so
when the VMX goes away the guest reconnects with back-off and the tools
service keeps running.  The wire format is in docs/stream-transport.md.
"""

from __future__ import annotations

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from .interfaces import IGuestChannel, ITCLOHandler
from .rpci_connection import RPCIConnection
from .stream_protocols import GuestRPCIProtocol, TCLOFactory

RPCI_TIMEOUT = 30.0


@implementer(IGuestChannel)
class StreamChannel:
    """An `IGuestChannel` over a stream endpoint (``unix:PATH`` or ``tcp:HOST:PORT``)."""

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        description: str | None = None,
        *,
        endpoint: IStreamClientEndpoint | None = None,
        rpci_timeout: float = RPCI_TIMEOUT,
        max_retry_delay: float = 5.0,
    ) -> None:
        if endpoint is None:
            if description is None:
                raise ValueError("StreamChannel needs a description or an endpoint")
            endpoint = clientFromString(reactor, description)
        self.name = description or repr(endpoint)
        self._reactor = reactor
        self._endpoint = endpoint
        self._max_retry_delay = max_retry_delay
        self._rpci = RPCIConnection(endpoint, GuestRPCIProtocol, reactor, name=self.name, timeout=rpci_timeout)
        self._tclo: ClientService | None = None

    def rpci(self, request: bytes) -> Deferred[bytes]:
        return self._rpci.call(request)

    def start(self, tclo: ITCLOHandler) -> None:
        self._tclo = ClientService(
            self._endpoint,
            TCLOFactory(tclo, self._reactor),
            # Doubling from 0.1 s to the cap, with jitter so restarted guests do not stampede.
            retryPolicy=backoffPolicy(initialDelay=0.1, maxDelay=self._max_retry_delay, factor=2.0),
            clock=self._reactor,
        )
        self._tclo.startService()

    def stop(self) -> Deferred[None]:
        self._rpci.stop()
        if self._tclo is None:
            return defer.succeed(None)
        tclo, self._tclo = self._tclo, None
        return tclo.stopService().addCallback(lambda _: None)
