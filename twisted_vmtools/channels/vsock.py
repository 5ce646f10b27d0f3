"""The vsock channel: AF_VSOCK to the hypervisor (CID 0), RPCI on 976, TCLO on 975.

Both ports carry the vsock packet framing; the protocols are the stream
channel's (`GuestTCLOProtocol`, `GuestRPCIProtocol`) without the stream
preamble, since here the port says which channel a connection is.  The VMX
speaks first on TCLO; the guest answers each command with one packet and,
from its first answer on, sends a PING every second.

Twisted has no AF_VSOCK support (``adoptStreamConnection`` takes AF_INET,
AF_INET6 and AF_UNIX only), so `SocketTransport` is a small
`FileDescriptor` over any connected stream socket, and `VsockEndpoint` an
`IStreamClientEndpoint` over a *connector*: a callable returning a
connected socket for ``(port, privileged)``.  Tests inject a connector
handing out ``socketpair()`` ends; only `vsock_connect` creates AF_VSOCK
sockets, and only once detection has said VMware.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, main
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .interfaces import ChannelError, IGuestChannel, ITCLOHandler
from .rpci_connection import RPCIConnection
from .stream_protocols import GuestRPCIProtocol, GuestTCLOProtocol, TCLOFactory

AF_VSOCK = getattr(socket, "AF_VSOCK", 40)
VMADDR_CID_ANY = getattr(socket, "VMADDR_CID_ANY", 0xFFFFFFFF)
HYPERVISOR_CID = 0  # VMCI_HYPERVISOR_CONTEXT_ID: the VMX
TCLO_PORT = 975
RPCI_PORT = 976
PRIVILEGED_PORTS = range(1023, 0, -1)  # tried in this order, as the tools do
CONNECT_RETRIES = {errno.ECONNRESET: 8, errno.ENOBUFS: 5}  # transient vsock connect errors
CONNECT_TIMEOUT = 5.0
RPCI_TIMEOUT = 30.0

log = Logger()


class VsockConnectError(ChannelError):
    """The vsock connection could not be made (as opposed to failing once made)."""


# (port, privileged) -> a connected stream socket, or a Deferred firing with one
Connector = Callable[[int, bool], "socket.socket | Deferred[socket.socket]"]
SocketFactory = Callable[[], socket.socket]


@implementer(IAddress)
@dataclass(frozen=True)
class VsockAddress:
    cid: int
    port: int


def _vsock_socket() -> socket.socket:
    return socket.socket(AF_VSOCK, socket.SOCK_STREAM)


def _connect_retrying(make: Callable[[], socket.socket], address: tuple[int, int]) -> socket.socket:
    budget = dict(CONNECT_RETRIES)
    while True:
        sock = make()
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(address)
            return sock
        except OSError as error:
            sock.close()
            if budget.get(error.errno or 0, 0) <= 0:
                raise
            budget[error.errno or 0] -= 1


def vsock_connect(
    port: int,
    privileged: bool,
    *,
    cid: int = HYPERVISOR_CID,
    socket_factory: SocketFactory | None = None,
    is_vmware: Callable[[], bool] | None = None,
) -> socket.socket:
    """Connect to ``cid:port`` over AF_VSOCK, from a privileged source port if asked.

    The privileged source (1023 downwards) is how the VMX knows the caller is
    root; a port in use is skipped, and EACCES (not root) falls back to an
    unprivileged ephemeral port.  The connect blocks for at most a few
    seconds: the peer is the local hypervisor, which answers at once.

    With the real socket factory this refuses unless detection says VMware:
    elsewhere vsock CID 0 is some other hypervisor's plumbing.
    """
    if socket_factory is None:
        if is_vmware is None:
            from .detect import detected

            def is_vmware() -> bool:
                return detected().vmware

        if not is_vmware():
            raise ChannelError("refusing to open AF_VSOCK to the hypervisor: not a VMware VM")
        socket_factory = _vsock_socket
    make = socket_factory
    if privileged:
        for local_port in PRIVILEGED_PORTS:

            def bound(local_port: int = local_port) -> socket.socket:
                sock = make()
                try:
                    sock.bind((VMADDR_CID_ANY, local_port))
                except BaseException:
                    sock.close()
                    raise
                return sock

            try:
                return _connect_retrying(bound, (cid, port))
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    continue
                if error.errno == errno.EACCES:
                    log.debug("no privileged vsock port (EACCES): connecting from an ephemeral one")
                    break
                raise
        else:
            raise OSError(errno.EADDRINUSE, "every privileged vsock port is in use")
    return _connect_retrying(make, (cid, port))


def threaded_connector(reactor: Any) -> Connector:
    """`vsock_connect` in the reactor's thread pool.

    A connect can wait (retries on ECONNRESET/ENOBUFS, a timeout), and nothing
    but the backdoor instruction may block the reactor.
    """

    def connect(port: int, privileged: bool) -> Deferred[socket.socket]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), vsock_connect, port, privileged)

    return connect


class SocketTransport(FileDescriptor):
    """A Twisted transport over a connected stream socket of any family."""

    def __init__(self, sock: socket.socket, protocol: IProtocol, reactor: Any, peer: IAddress) -> None:
        super().__init__(reactor)
        sock.setblocking(False)
        self.socket = sock
        self.protocol = protocol
        self._fd = sock.fileno()
        self._peer = peer
        self.connected = 1

    def fileno(self) -> int:
        return self._fd

    def getPeer(self) -> IAddress:
        return self._peer

    def getHost(self) -> IAddress:
        return VsockAddress(VMADDR_CID_ANY, 0)

    def logPrefix(self) -> str:
        return f"vsock:{self._peer}"

    def doRead(self) -> object:
        try:
            data = self.socket.recv(self.bufferSize)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        self.protocol.dataReceived(data)
        return None

    def writeSomeData(self, data: bytes) -> int | BaseException:
        try:
            return self.socket.send(data[: self.SEND_LIMIT])
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as error:
            if error.errno == errno.ENOBUFS:
                return 0
            return main.CONNECTION_LOST

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.socket.close()
        self._fd = -1
        protocol, self.protocol = self.protocol, None  # type: ignore[assignment]
        if protocol is not None:
            protocol.connectionLost(reason)


@implementer(IStreamClientEndpoint)
class VsockEndpoint:
    """Connects ``factory``'s protocols to one vsock port through ``connector``."""

    def __init__(self, reactor: Any, port: int, *, privileged: bool, connector: Connector) -> None:
        self._reactor = reactor
        self.port = port
        self.privileged = privileged
        self._connector = connector

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting: Deferred[socket.socket] = defer.maybeDeferred(
            self._connector, self.port, self.privileged  # type: ignore[call-overload]  # a socket or a Deferred of one
        )
        return connecting.addCallbacks(self._connected, self._failed, callbackArgs=(protocolFactory,))

    def _failed(self, failure: Failure) -> Failure:
        error = failure.value
        return Failure(VsockConnectError(f"cannot connect to vsock port {self.port}: {error}"))

    def _connected(self, sock: socket.socket, protocolFactory: IProtocolFactory) -> IProtocol:
        peer = VsockAddress(HYPERVISOR_CID, self.port)
        protocol = protocolFactory.buildProtocol(peer)
        if protocol is None:
            sock.close()
            raise VsockConnectError("the protocol factory refused the connection")
        transport = SocketTransport(sock, protocol, self._reactor, peer)
        protocol.makeConnection(transport)
        transport.startReading()
        return protocol


_TRUE, _FALSE = ("1", "yes", "true"), ("0", "no", "false")


def parse_vsock_client(
    reactor: Any, *args: str, connector: Connector | None = None, **kwargs: str
) -> VsockEndpoint:
    """The endpoint ``vsock:PORT`` or ``vsock:port=PORT[:privileged=1]`` names: the hypervisor's port.

    ``privileged`` connects from a port below 1024, as the tools do for RPCI
    (the VMX trusts such a caller as root).  The default ``connector`` runs
    `vsock_connect` in the thread pool, which refuses outside a VMware VM.
    """
    options = dict(kwargs)
    if args:
        if len(args) > 1 or "port" in options:
            raise ValueError(f"vsock: takes one port, not {[*args, *options.values()]!r}")
        options["port"] = args[0]
    unknown = set(options) - {"port", "privileged"}
    if unknown:
        raise ValueError(f"vsock: knows port= and privileged=, not {', '.join(sorted(unknown))}")
    port = options.get("port", "")
    if not (port.isascii() and port.isdigit() and int(port) <= 0xFFFFFFFF):
        raise ValueError(f"vsock: needs a port number from 0 to 4294967295, not {port!r}")
    privileged = options.get("privileged", "0").lower()
    if privileged not in _TRUE + _FALSE:
        raise ValueError(f"vsock: privileged= is 1 or 0, not {privileged!r}")
    return VsockEndpoint(
        reactor,
        int(port),
        privileged=privileged in _TRUE,
        connector=connector if connector is not None else threaded_connector(reactor),
    )


class VsockTCLOProtocol(GuestTCLOProtocol):
    preamble = b""  # port 975 is TCLO
    max_in_flight = 1  # a real VMX sends one command at a time: nothing to advertise


class VsockRPCIProtocol(GuestRPCIProtocol):
    preamble = b""  # port 976 is RPCI


@implementer(IGuestChannel)
class VsockChannel:
    """`IGuestChannel` over vsock: persistent RPCI connection, pushed TCLO.

    ``connector`` defaults to `vsock_connect` run in a thread; ``clock`` (heartbeat,
    timeouts, reconnect back-off) defaults to ``reactor``.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        *,
        clock: IReactorTime | None = None,
        connector: Connector | None = None,
        rpci_timeout: float = RPCI_TIMEOUT,
        max_retry_delay: float = 30.0,
        name: str = "vsock",
    ) -> None:
        self.name = name
        self._clock: IReactorTime = clock if clock is not None else reactor
        connector = connector if connector is not None else threaded_connector(reactor)
        self._rpci_endpoint = VsockEndpoint(reactor, RPCI_PORT, privileged=True, connector=connector)
        self._tclo_endpoint = VsockEndpoint(reactor, TCLO_PORT, privileged=False, connector=connector)
        self._max_retry_delay = max_retry_delay
        # A connection the VMX dropped is restarted and the call sent again once, as the tools do.
        self._rpci = RPCIConnection(
            self._rpci_endpoint, VsockRPCIProtocol, self._clock, name="vsock", timeout=rpci_timeout, retry_lost=True
        )
        self._tclo: ClientService | None = None
        self._first_outcome: IProtocol | Failure | None = None
        self._first_waiters: list[Deferred[IProtocol]] = []

    # -- RPCI

    def rpci(self, request: bytes) -> Deferred[bytes]:
        return self._rpci.call(request)

    # -- TCLO

    def start(self, tclo: ITCLOHandler) -> None:
        if self._tclo is not None:
            raise RuntimeError("the vsock channel's TCLO connection is already running")
        self._tclo = ClientService(
            self._tclo_endpoint,
            TCLOFactory(tclo, self._clock, VsockTCLOProtocol),
            # No jitter: one guest, one VMX; nobody to de-synchronise from, and tests stay exact.
            retryPolicy=backoffPolicy(initialDelay=1.0, maxDelay=self._max_retry_delay, jitter=lambda: 0.0),
            clock=self._clock,
        )
        # Registered before the service starts, so that a connect failing at once is seen.
        self._first_outcome = None
        self._first_waiters = []
        self._tclo.whenConnected(failAfterFailures=1).addBoth(self._first_attempt_done)
        self._tclo.startService()

    def _first_attempt_done(self, outcome: IProtocol | Failure) -> None:
        self._first_outcome = outcome
        waiters, self._first_waiters = self._first_waiters, []
        for waiter in waiters:
            self._deliver_first(waiter)

    def _deliver_first(self, waiter: Deferred[IProtocol]) -> None:
        outcome = self._first_outcome
        assert outcome is not None
        if isinstance(outcome, Failure):
            waiter.errback(outcome)
        else:
            waiter.callback(outcome)

    def first_tclo_attempt(self) -> Deferred[IProtocol]:
        """The outcome of the first TCLO connect after `start`: the protocol, or why it failed.

        This is what decides the fallback to the backdoor (`select.AutoChannel`);
        later failures are retried with back-off by the channel itself.
        """
        if self._tclo is None:
            return defer.fail(ChannelError("TCLO is not started"))
        waiter: Deferred[IProtocol] = Deferred()
        if self._first_outcome is None:
            self._first_waiters.append(waiter)
        else:
            self._deliver_first(waiter)
        return waiter

    def stop_tclo(self) -> Deferred[None]:
        tclo, self._tclo = self._tclo, None
        if tclo is None:
            return defer.succeed(None)
        return tclo.stopService().addCallback(lambda _: None)

    def stop(self) -> Deferred[None]:
        self._rpci.stop()
        return self.stop_tclo()
