"""`SimulatorService`: a VMX listening on a stream endpoint, with its control channel."""

from __future__ import annotations

import os

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXServerEndpoint, serverFromString
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger

from .control import ControlServer
from .model import VMX, RPCRecord
from .stream import VMXStreamFactory


def server_endpoint(reactor: object, where: str) -> IStreamServerEndpoint:
    """A path means a Unix socket; anything else is a Twisted endpoint description."""
    if ":" not in where:
        return UNIXServerEndpoint(reactor, where)  # type: ignore[arg-type]
    return serverFromString(reactor, where)


def client_description(where: str) -> str:
    return where if ":" in where else f"unix:{where}"


class SimulatorService(MultiService):
    """One simulated VMX serving one guest at ``where`` (a socket path or endpoint).

    The same socket carries the guest's RPCI and TCLO connections and the
    ``vmtools-sim`` control channel.  A stale socket file is replaced.
    """

    log = Logger()

    def __init__(self, reactor: IReactorTime, where: str, *, vmx: VMX | None = None, trace: bool = False) -> None:
        super().__init__()
        self.reactor = reactor
        self.where = where
        self.vmx = vmx or VMX(reactor)
        if trace:
            self.vmx.observe(self._trace)
        factory = VMXStreamFactory(self.vmx, control=lambda: ControlServer(self.vmx))
        self.listener = StreamServerEndpointService(server_endpoint(reactor, where), factory)
        self.listener.setServiceParent(self)
        self._cleaned = False

    def privilegedStartService(self) -> None:
        # twistd listens here, before startService: a stale socket must be gone by then.
        self._remove_stale_socket()
        super().privilegedStartService()

    def startService(self) -> None:
        self._remove_stale_socket()
        super().startService()
        self.log.info("simulated VMX listening at {where}", where=self.where)

    def _remove_stale_socket(self) -> None:
        """Once, before listening: a socket file left by a dead simulator would block us."""
        if self._cleaned:
            return
        self._cleaned = True
        if ":" not in self.where and os.path.exists(self.where):
            os.unlink(self.where)

    def stopService(self) -> Deferred[None]:
        self.vmx.stop()
        stopping: Deferred[None] = super().stopService()
        return stopping

    def _trace(self, record: RPCRecord) -> None:
        self.log.info(
            "{direction:>8} {channel}: {data!r}", direction=record.direction, channel=record.channel, data=record.data
        )
