"""One RPCI connection over a stream endpoint, shared by the stream and vsock channels."""

from __future__ import annotations

from collections import deque

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from .interfaces import ChannelError
from .stream_protocols import GuestRPCIProtocol


class RPCIConnection:
    """Opened on first use, reopened after a loss; requests leave in call order.

    Calls made while the connection is being opened wait in a queue and go
    out in the order they were made, once it is up.  A reply that does not
    come within ``timeout`` fails its call and drops the connection (the
    stream is out of step).  With ``retry_lost`` a call whose connection
    was lost before its reply is sent once more on a new connection, as
    open-vm-tools does on vsock.
    """

    log = Logger()

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        protocol: type[GuestRPCIProtocol],
        clock: IReactorTime,
        *,
        name: str,
        timeout: float,
        retry_lost: bool = False,
    ) -> None:
        self._endpoint = endpoint
        self._factory = Factory.forProtocol(protocol)
        self._clock = clock
        self.name = name
        self._timeout = timeout
        self._retry_lost = retry_lost
        self._protocol: GuestRPCIProtocol | None = None
        self._connecting = False
        self._backlog: deque[tuple[bytes, Deferred[bytes], int]] = deque()
        self._stopped = False

    def call(self, request: bytes) -> Deferred[bytes]:
        """Send ``request``; fires with the raw reply or fails with `ChannelError`."""
        if self._stopped:
            return defer.fail(ChannelError(f"the channel to {self.name} is stopped"))
        protocol = self._protocol
        if not self._retry_lost and protocol is not None and not protocol.lost and not self._backlog:
            # The usual case: connected, nothing queued, no retry: the reply's own Deferred will do.
            reply = protocol.request(request)
            reply.addTimeout(self._timeout, self._clock)  # type: ignore[arg-type]
            return reply.addErrback(self._timed_out, protocol)
        result: Deferred[bytes] = Deferred()
        self._submit(request, result, 2 if self._retry_lost else 1)
        return result

    def _submit(self, request: bytes, result: Deferred[bytes], attempts: int) -> None:
        protocol = self._protocol
        if protocol is not None and not protocol.lost and not self._backlog:
            self._issue(protocol, request, result, attempts)
            return
        self._backlog.append((request, result, attempts))
        if not self._connecting:
            self._connect()

    def _connect(self) -> None:
        self._connecting = True
        connecting = self._endpoint.connect(self._factory)
        connecting.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, protocol: object) -> None:
        self._connecting = False
        assert isinstance(protocol, GuestRPCIProtocol)
        if self._stopped:
            protocol.transport.loseConnection()  # type: ignore[union-attr]
            return
        self._protocol = protocol
        while self._backlog and not protocol.lost:
            request, result, attempts = self._backlog.popleft()
            self._issue(protocol, request, result, attempts)
        if self._backlog:  # lost while flushing: try again for the rest
            self._connect()

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = False
        if failure.check(ChannelError):
            error = failure.value
        else:
            error = ChannelError(f"cannot reach the VMX at {self.name}: {failure.getErrorMessage()}")
        backlog, self._backlog = self._backlog, deque()
        for _, result, _ in backlog:
            result.errback(error)

    def _issue(self, protocol: GuestRPCIProtocol, request: bytes, result: Deferred[bytes], attempts: int) -> None:
        reply = protocol.request(request)
        reply.addTimeout(self._timeout, self._clock)  # type: ignore[arg-type]
        reply.addCallbacks(result.callback, self._failed, errbackArgs=(protocol, request, result, attempts))

    def _timed_out(self, failure: Failure, protocol: GuestRPCIProtocol) -> Failure:
        if failure.check(defer.TimeoutError):
            protocol.transport.loseConnection()  # type: ignore[union-attr]
            return Failure(ChannelError(f"no RPCI reply from {self.name} within {self._timeout} s"))
        return failure

    def _failed(
        self, failure: Failure, protocol: GuestRPCIProtocol, request: bytes, result: Deferred[bytes], attempts: int
    ) -> None:
        if failure.check(defer.TimeoutError):
            result.errback(self._timed_out(failure, protocol))
        elif protocol.lost and attempts > 1 and not self._stopped:
            self.log.info("RPCI connection to {name} lost; sending again", name=self.name)
            self._submit(request, result, attempts - 1)
        else:
            result.errback(failure)

    def stop(self) -> None:
        self._stopped = True
        if self._protocol is not None:
            self._protocol.transport.loseConnection()  # type: ignore[union-attr]
            self._protocol = None
        backlog, self._backlog = self._backlog, deque()
        for _, result, _ in backlog:
            result.errback(ChannelError(f"the channel to {self.name} is stopped"))
