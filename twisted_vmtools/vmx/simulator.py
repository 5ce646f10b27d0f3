"""`SimulatorService`: a VMX listening on a stream endpoint, with its control channel."""

from __future__ import annotations

import os

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, UNIXServerEndpoint, serverFromString
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger

from .control import ControlServer
from .model import VMX, RPCRecord
from .stream import VMXStreamFactory


def server_endpoint(reactor: object, where: str) -> IStreamServerEndpoint:
    """Where the simulator listens, named as the guest's ``--transport`` names it.

    A path or ``unix:PATH`` is a Unix socket; ``tcp:HOST:PORT`` listens on
    that address (the same words a client connects with, so one ``--socket``
    value serves ``serve``, the guest and every control command).
    """
    kind, _, rest = where.partition(":")
    if not rest or kind == "unix":
        return UNIXServerEndpoint(reactor, rest or where)  # type: ignore[arg-type]
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"expected tcp:HOST:PORT, not {where!r}")
        return TCP4ServerEndpoint(reactor, int(port), interface=host)  # type: ignore[arg-type]
    return serverFromString(reactor, where)


def socket_path(where: str) -> str | None:
    """The file a Unix-socket ``where`` names (None for TCP)."""
    kind, _, rest = where.partition(":")
    if not rest:
        return where
    return rest if kind == "unix" else None


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
        path = socket_path(self.where)
        if path is not None and os.path.exists(path):
            os.unlink(path)

    def stopService(self) -> Deferred[None]:
        self.vmx.stop()
        stopping: Deferred[None] = super().stopService()
        return stopping

    def _trace(self, record: RPCRecord) -> None:
        self.log.info(
            "{direction:>8} {channel}: {data!r}", direction=record.direction, channel=record.channel, data=record.data
        )
