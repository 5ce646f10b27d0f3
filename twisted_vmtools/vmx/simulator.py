"""`SimulatorService`: a VMX listening on a stream endpoint, with its control channel."""

from __future__ import annotations

import ipaddress
import os
import socket
import stat

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IAddress, IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger

from ..endpoint_strings import TCP_KINDS, EndpointStringError, ServerAddress, parse_server
from ..exit_codes import CannotListen, UsageError
from ..simsocket import UntrustedSocket, private_directory
from .access import SECRET_ENV, ControlAccess, load_secret
from .control import ControlServer
from .model import VMX, RPCRecord
from .private_socket import BACKLOG, PrivateUNIXServerEndpoint
from .rpc_text import TRACE_BYTES, record_line
from .stream import VMXStreamFactory

log = Logger()


class RemoteListenError(UsageError, ValueError):
    """Listening where other machines can connect, without ``--allow-remote``."""


def server_endpoint(
    reactor: object, where: str | ServerAddress, *, group: int | None = None, allow_remote: bool = False
) -> IStreamServerEndpoint:
    """Where the simulator listens: ``where`` as `serverFromString` reads it (`parse_server`).

    The grammar is Twisted's, the walls are ours: a Unix socket is created
    owner-only (0600; 0660 for ``group``) through `PrivateUNIXServerEndpoint`,
    never Twisted's 0666 listener; anything but a Unix socket or loopback TCP
    reaches other machines and is refused unless ``allow_remote``.
    """
    address = parse_server(where) if isinstance(where, str) else where
    if address.path is not None:
        return PrivateUNIXServerEndpoint(reactor, address.path, group, backlog=address.backlog or BACKLOG)
    if group is not None:
        raise UsageError(f"--socket-group is for a Unix socket's group; {address.text} is not one")
    if address.kind in TCP_KINDS:
        assert address.port is not None
        _check_remote(address.text, is_loopback(address.interface), allow_remote)
        kind = TCP6ServerEndpoint if address.kind == "tcp6" else TCP4ServerEndpoint
        return kind(reactor, address.port, backlog=address.backlog or 50, interface=address.interface)  # type: ignore[arg-type]
    _check_remote(address.text, False, allow_remote)
    try:
        return serverFromString(reactor, address.description)
    except ValueError as error:  # Twisted's "Unknown endpoint type", a plugin's own sentence
        raise EndpointStringError(f"{address.text!r}: {error}") from None
    except OSError as error:  # ssl: reads its certificate while parsing
        raise EndpointStringError(f"{address.text!r}: {error.strerror or error}: {error.filename}") from None
    except Exception:  # arguments a parser does not take (TypeError, KeyError), a plugin's own failure
        raise EndpointStringError(f"{address.text!r} is not an endpoint string Twisted can listen on") from None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _check_remote(where: str, loopback: bool, allow_remote: bool) -> None:
    if loopback:
        return
    if not allow_remote:
        raise RemoteListenError(
            f"{where} can be reached from other machines, and a guest's channels there have no "
            "authentication: pass --allow-remote to listen there anyway"
        )
    log.warn(
        "listening at {where}: any machine that reaches it can act as this VM's guest; "
        "the control channel needs the shared secret",
        where=where,
    )


def socket_path(where: str) -> str | None:
    """The file a Unix-socket ``where`` names (None for TCP); `EndpointStringError` if it cannot work."""
    return parse_server(where).path


class SocketInUseError(CannotListen):
    """The simulator's socket path is taken: by a live simulator, or by something that is not a socket."""


def claim_socket(where: str) -> None:
    """Make way for listening at ``where``: remove a dead simulator's socket file, and nothing else.

    A path that is not a socket, or a socket something still answers on, is
    refused: `vmtools-sim serve` must never delete a user's file or cut a
    running simulator off from its guests.
    """
    path = socket_path(where)
    if path is None:
        return
    try:
        private_directory(path)  # the default path's directory is made here, ours and 0700
    except UntrustedSocket as error:
        raise SocketInUseError(str(error)) from None
    except OSError as error:
        directory = os.path.dirname(os.path.abspath(path))
        raise SocketInUseError(f"cannot listen at {path}: {_why(error)} ({directory})") from None
    if not os.path.lexists(path):
        return
    status = os.lstat(path)
    if not stat.S_ISSOCK(status.st_mode):
        raise SocketInUseError(f"{path} exists and is not a socket; not touching it")
    if status.st_uid not in (os.geteuid(), 0):
        # Someone else's socket at our path may be a squatter waiting for our clients.
        raise SocketInUseError(f"{path} belongs to uid {status.st_uid}, not to us; not touching it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # nobody listens: a dead simulator's leftover
        return
    except OSError as error:
        raise SocketInUseError(f"cannot tell whether {path} is in use ({error}); not touching it") from None
    finally:
        probe.close()
    raise SocketInUseError(f"a simulator is already serving {path}")


def _why(error: BaseException) -> str:
    """An OSError's own words ("Address already in use"), without errno numbers or Python's repr."""
    if isinstance(error, CannotListenError):
        return _why(error.socketError)  # type: ignore[arg-type]
    strerror = getattr(error, "strerror", None)
    return str(strerror) if strerror else str(error)


class SimulatorService(MultiService):
    """One simulated VMX serving one guest at ``where`` (a socket path or endpoint).

    The same socket carries the guest's RPCI and TCLO connections and the
    ``vmtools-sim`` control channel.  A stale socket file is replaced.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        where: str,
        *,
        vmx: VMX | None = None,
        trace: bool = False,
        socket_group: int | None = None,
        allow_remote: bool = False,
        control_secret: bytes | None = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.where = where
        self.vmx = vmx or VMX(reactor)
        if trace:
            self.vmx.observe(self._trace)
        address = parse_server(where)
        if address.deprecated:
            self.log.warn("{note}", note=address.deprecated)
        endpoint = server_endpoint(reactor, address, group=socket_group, allow_remote=allow_remote)
        if address.path is None:
            control_secret = control_secret or load_secret()
            if control_secret is None:
                self.log.warn("no shared secret set ({env}): the control channel is closed over the network",
                              env=SECRET_ENV)
        access = ControlAccess(owner=os.geteuid(), group=socket_group, secret=control_secret)
        factory = VMXStreamFactory(self.vmx, control=lambda: ControlServer(self.vmx), access=access)
        self.listener = StreamServerEndpointService(endpoint, factory)
        self.listener._raiseSynchronously = True  # a socket we cannot create is an error, not a log line
        self.listener.setServiceParent(self)
        self._cleaned = False

    def privilegedStartService(self) -> None:
        # twistd listens here, before startService: a stale socket must be gone by then.
        self._remove_stale_socket()
        try:
            super().privilegedStartService()
        except CannotListenError as error:
            raise CannotListen(f"cannot listen at {self.where}: {_why(error)}") from None

    def startService(self) -> None:
        """Listen, or raise `CannotListen` (one sentence) at once: never a running VMX nobody can reach."""
        self._remove_stale_socket()
        try:
            super().startService()
        except CannotListenError as error:
            self.running = False
            raise CannotListen(f"cannot listen at {self.where}: {_why(error)}") from None
        # The port Twisted bound (already there: listening is synchronous here) names where we
        # really are, e.g. the port the kernel chose for tcp:0, which the string does not say.
        waiting = self.listener._waitingForPort
        if waiting is not None:
            waiting.addCallback(self._listening)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.log.info("simulated VMX listening at {where}", where=bound_address(port.getHost(), self.where))
        return port

    def _remove_stale_socket(self) -> None:
        """Once, before listening: a socket file left by a dead simulator would block us."""
        if self._cleaned:
            return
        self._cleaned = True
        claim_socket(self.where)

    def stopService(self) -> Deferred[None]:
        self.vmx.stop()
        stopping: Deferred[None] = super().stopService()
        return stopping

    def _trace(self, record: RPCRecord) -> None:
        self.log.info("{line}", line=record_line(record, TRACE_BYTES), record=record)


def bound_address(address: IAddress, where: str) -> str:
    """A bound TCP address in serverFromString's words (the port the kernel chose too); any other as given."""
    if isinstance(address, (IPv4Address, IPv6Address)):
        kind = "tcp" if isinstance(address, IPv4Address) else "tcp6"
        host = address.host.replace(":", "\\:")  # a colon in an endpoint string is escaped
        return f"{kind}:port={address.port}:interface={host}"
    return where

