"""HTTP to a server inside the guest through guest operations: `GuestAgent`, an ``IAgent`` for treq.

Each request is one round trip, as the Go toolbox's ``http.RoundTrip`` makes
it: StartProgramInGuest(``http.RoundTrip``, ``host:port``) → pid; the
serialized request uploaded to ``/proc/<pid>/stdin`` (its end is the
request's end); ``/proc/<pid>/stdout`` downloaded (again while the guest says
it is not ready) into Twisted's own HTTP/1.1 client protocol, which parses it
into a stock ``IResponse``.  Twisted's `Agent` does the HTTP: an endpoint
factory hands it a connection whose transport is the round trip.  Requests
carry ``Connection: close`` (the guest's connection ends with the reply).
Only ``http://``: a one-shot stdin/stdout exchange cannot carry TLS.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail, succeed
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IPushProducer, IStreamClientEndpoint
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, HTTPConnectionPool, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from .codecs.hgfs import Status
from .codecs.vix import Credentials, VixCode
from .vmx.guest_operations import GuestOperationError, IGuestOperations, ProgramSpec
from .vmx.hgfs_client import HGFSClientError

__all__ = ["GuestAgent", "GuestHTTPError", "UnsupportedScheme", "GuestRoundTripFailed", "GuestRoundTripTimeout",
           "connect_guest_operations", "ROUND_TRIP_PROGRAM"]

ROUND_TRIP_PROGRAM = "http.RoundTrip"
DEFAULT_TIMEOUT = 60.0
RETRY_DELAY = 0.05  # between "not ready yet" answers (our guest already waited before saying so)
LOGIN_VARIABLE = "VMTOOLS_SIM_GUEST_LOGIN"


class GuestHTTPError(Exception):
    """An HTTP request through guest operations could not be made."""


class UnsupportedScheme(GuestHTTPError):
    """Only ``http://`` URLs: the round trip is one plain stdin/stdout exchange (no TLS)."""


class GuestRoundTripFailed(GuestHTTPError):
    """The guest's ``http.RoundTrip`` failed (connection refused, timed out inside the guest, ...)."""

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class GuestRoundTripTimeout(GuestHTTPError):
    """No complete response within the agent's timeout; the guest process was terminated."""


def _default_login(guest_operations: object) -> Credentials:
    login = getattr(guest_operations, "default_login", None)
    if isinstance(login, Credentials):
        return login
    user, _, password = os.environ.get(LOGIN_VARIABLE, "").partition(":")
    return Credentials(user, password)


@implementer(IAgent)
class GuestAgent:
    """An ``IAgent`` whose requests are made from inside the guest by ``http.RoundTrip``.

    ``login`` is the guest account (user, password) the process runs as; by
    default the one `connect_guest_operations` was given, else
    ``$VMTOOLS_SIM_GUEST_LOGIN``.  ``timeout`` bounds each whole round trip.
    """

    def __init__(self, reactor: Any, guest_operations: IGuestOperations,
                 login: tuple[str, str] | Credentials | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.reactor = reactor
        self.guest_operations = guest_operations
        if isinstance(login, tuple):
            login = Credentials(*login)
        self.login = login if login is not None else _default_login(guest_operations)
        self.timeout = timeout

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: IBodyProducer | None = None) -> Deferred[IResponse]:  # noqa: N803 (IAgent's name)
        parsed = URI.fromBytes(uri)
        if parsed.scheme != b"http":
            return fail(UnsupportedScheme(
                f"GuestAgent: {parsed.scheme.decode('ascii', 'replace')}:// is not supported, only http:// "
                "(a one-shot stdin/stdout exchange cannot carry TLS)"))
        exchange = _Exchange(self, f"{parsed.host.decode('idna')}:{parsed.port}", bodyProducer is not None)
        headers = headers.copy() if headers is not None else Headers()
        headers.setRawHeaders(b"connection", [b"close"])
        agent = Agent.usingEndpointFactory(self.reactor, _OneEndpoint(exchange),
                                           pool=HTTPConnectionPool(self.reactor, persistent=False))
        body = _CompletionProducer(bodyProducer, exchange) if bodyProducer is not None else None
        # The whole exchange, body included, is bounded: a reply that stops half-way is cut off too.
        exchange.timer = self.reactor.callLater(self.timeout, exchange.time_out)
        return agent.request(method, uri, headers, body).addErrback(_plain_error)


def _plain_error(failure: Failure) -> Failure:
    """Twisted wraps a lost connection in ResponseNeverReceived: give the guest's own reason instead."""
    if failure.check(ResponseNeverReceived):
        for reason in failure.value.reasons:  # type: ignore[union-attr]
            if reason.check(GuestHTTPError):
                return reason  # type: ignore[no-any-return]
    return failure


@implementer(IBodyProducer)
class _CompletionProducer:
    """The caller's body producer, telling the exchange when the request (body and chunk trailer) is written."""

    def __init__(self, producer: IBodyProducer, exchange: _Exchange) -> None:
        self.producer = producer
        self.exchange = exchange
        self.length = producer.length

    def startProducing(self, consumer: Any) -> Deferred[None]:  # noqa: N802 (IBodyProducer's names)
        finished: Deferred[None] = Deferred(lambda _: self.producer.stopProducing())
        producing = self.producer.startProducing(consumer)

        def done(result: object) -> None:
            finished.callback(None)  # Twisted's callbacks write the last chunk marker first
            self.exchange.request_written()

        producing.addCallbacks(done, finished.errback)
        return finished

    def pauseProducing(self) -> None:  # noqa: N802
        self.producer.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802
        self.producer.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802
        self.producer.stopProducing()


@implementer(IAgentEndpointFactory)
class _OneEndpoint:
    def __init__(self, exchange: _Exchange) -> None:
        self.exchange = exchange

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:  # noqa: N802
        return self.exchange


@implementer(IStreamClientEndpoint, IPushProducer)
class _Exchange:
    """One request's endpoint and transport: buffers the request, then runs the round trip in the guest."""

    def __init__(self, agent: GuestAgent, address: str, has_body: bool) -> None:
        self.agent = agent
        self.address = address
        self.body_pending = has_body
        self.request = bytearray()
        self.protocol: IProtocol | None = None
        self.pid: int | None = None
        self.running: Deferred[None] | None = None
        self.finished = False
        self.timed_out = False
        self.disconnecting = False
        self._resume: Deferred[None] | None = None
        self.timer: Any = None

    # -- the endpoint -----------------------------------------------------------------------------------------

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        protocol = factory.buildProtocol(None)  # type: ignore[arg-type]
        if protocol is None:
            return fail(GuestHTTPError("the HTTP client protocol factory refused the connection"))
        self.protocol = protocol
        protocol.makeConnection(self)  # type: ignore[arg-type]
        return succeed(protocol)

    # -- the transport Twisted's HTTP client writes to -------------------------------------------------------

    def write(self, data: bytes) -> None:
        self.request += data
        if not self.body_pending:
            self.request_written()

    def writeSequence(self, data: list[bytes]) -> None:  # noqa: N802
        self.write(b"".join(data))

    def request_written(self) -> None:
        """The whole request is serialized: start the round trip (once, after the current call returns)."""
        self.body_pending = False
        if self.running is None and not self.finished:
            self.running = Deferred()
            self.agent.reactor.callLater(0, self._start)

    def _start(self) -> None:
        if self.finished:
            return
        self.running = ensureDeferred(self._round_trip())
        self.running.addErrback(self._failed)

    def loseConnection(self) -> None:  # noqa: N802 (the response is complete: the guest's connection ends by itself)
        self.disconnecting = True

    def abortConnection(self) -> None:  # noqa: N802 (cancelled)
        # Like a socket's, the loss is reported later: Twisted gives up on the request first.
        self._stop(Failure(ConnectionAborted()), later=True)

    def registerProducer(self, producer: object, streaming: bool) -> None:  # noqa: N802 (the request is buffered)
        pass

    def unregisterProducer(self) -> None:  # noqa: N802
        pass

    def getPeer(self) -> Any:  # noqa: N802
        return None

    def getHost(self) -> Any:  # noqa: N802
        return None

    def pauseProducing(self) -> None:  # noqa: N802 (the response's reader is slow: HGFS reads wait)
        if self._resume is None:
            self._resume = Deferred()

    def resumeProducing(self) -> None:  # noqa: N802
        resume, self._resume = self._resume, None
        if resume is not None:
            resume.callback(None)

    def stopProducing(self) -> None:  # noqa: N802
        self.abortConnection()

    # -- the round trip ---------------------------------------------------------------------------------------

    async def _round_trip(self) -> None:
        ops, login = self.agent.guest_operations, self.agent.login
        self.pid = await ops.start_program(login, ProgramSpec(ROUND_TRIP_PROGRAM, self.address))
        request, self.request = bytes(self.request), bytearray()
        view = memoryview(request)
        sent = 0

        def read(count: int) -> bytes:
            nonlocal sent
            piece = bytes(view[sent:sent + count])
            sent += len(piece)
            return piece

        await ops.upload(login, f"/proc/{self.pid}/stdin", read, overwrite=True)
        await self._first_output()
        received = await self._fetch(f"/proc/{self.pid}/stdout", self._deliver)
        exit_code = await self._exit_code()
        if exit_code not in (0, None):
            errors = bytearray()
            await self._fetch(f"/proc/{self.pid}/stderr", errors.extend)
            message = errors.decode("utf-8", "replace").strip() or f"http.RoundTrip exited with {exit_code}"
            raise GuestRoundTripFailed(message + ("" if not received else " (after a partial response)"), exit_code)
        self._end(Failure(ConnectionDone()))

    async def _first_output(self) -> None:
        """Wait, asking, for the reply's first bytes or the process's end: a read of a silent process's
        stdout would hold the guest's one command channel while it waits."""
        delay = RETRY_DELAY / 5
        path = f"/proc/{self.pid}/stdout"
        while True:
            try:
                info = await self.agent.guest_operations.initiate_file_transfer_from_guest(self.agent.login, path)
                if info.size:
                    return
            except GuestOperationError as error:
                if error.code != VixCode.FILE_ACCESS_ERROR:  # CannotAccessFile: not ready yet
                    raise
            if await self._exit_code() is not None:
                return
            await deferLater(self.agent.reactor, delay)
            delay = min(delay * 2, RETRY_DELAY * 4)

    async def _fetch(self, path: str, write: Any) -> int:
        """Download ``path``, again while the guest answers that it is not ready (CannotAccessFile, or our
        guest's "no output yet"): what was delivered is gone from the guest, so a retry goes on from there."""
        total = 0

        def counted(data: bytes) -> object:
            nonlocal total
            total += len(data)
            return write(data)

        while True:
            try:
                await self.agent.guest_operations.download(self.agent.login, path, counted)
                return total
            except GuestOperationError as error:
                if error.code != VixCode.FILE_ACCESS_ERROR:
                    raise
            except HGFSClientError as error:
                if error.status != Status.SHARING_VIOLATION:
                    raise
            await deferLater(self.agent.reactor, RETRY_DELAY)

    def _deliver(self, data: bytes) -> Deferred[None] | None:
        if self.protocol is not None and not self.finished:
            self.protocol.dataReceived(data)
        return self._resume  # paused by the protocol: the next read waits

    async def _exit_code(self) -> int | None:
        assert self.pid is not None
        listed = await self.agent.guest_operations.list_processes(self.agent.login, (self.pid,))
        for info in listed:
            if info.pid == self.pid:
                return info.exit_code if info.end_time else None
        return None

    def _failed(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            self._stop(failure)

    def time_out(self) -> None:
        self._stop(Failure(GuestRoundTripTimeout(
            f"GuestAgent: no complete response from {self.address} within {self.agent.timeout:g} s")))

    def _stop(self, reason: Failure, later: bool = False) -> None:
        """End early: stop the work in flight and the guest process, and tell the protocol why."""
        if self.finished:
            return
        running, self.running = self.running, None
        if later:
            self.finished = True  # nothing more reaches the protocol but the loss itself
            self.agent.reactor.callLater(0, self._lost, reason)
        else:
            self._end(reason)
        if running is not None:
            running.cancel()
        if self.pid is not None:
            ops = self.agent.guest_operations
            ops.terminate_process(self.agent.login, self.pid).addErrback(lambda _: None)  # it may have just ended

    def _end(self, reason: Failure) -> None:
        if self.finished:
            return
        self.finished = True
        self._lost(reason)

    def _lost(self, reason: Failure) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.resumeProducing()
        if self.protocol is not None:
            self.protocol.connectionLost(reason)


def connect_guest_operations(reactor: Any, where: str, login: tuple[str, str] | None = None
                             ) -> Deferred[IGuestOperations]:
    """Fires with the `IGuestOperations` of the simulator at ``where`` (as ``--socket`` takes it), over its
    control channel; ``login`` becomes the `default_login` a `GuestAgent` uses."""
    return ensureDeferred(_connect(reactor, where, login))


async def _connect(reactor: Any, where: str, login: tuple[str, str] | None) -> IGuestOperations:
    from .simsocket import client_endpoint
    from .vmx.control import connect_control, control_secret
    from .vmx.guest_verbs import guest_operations

    endpoint = client_endpoint(reactor, where)
    control = await _awaited(connect_control(endpoint, control_secret(where), clock=reactor))
    ops = guest_operations(control)
    ops.default_login = Credentials(*login) if login is not None else None  # type: ignore[attr-defined]
    ops.control = control  # type: ignore[attr-defined]  # kept: the connection lives as long as the operations
    return ops


async def _awaited(value: Awaitable[Any]) -> Any:
    return await value
