"""One RPCI connection over a stream endpoint, shared by the stream and vsock channels.

Its life cycle is an Automat machine, as Twisted's `ClientService` has one:

    idle --send--> connecting --connected--> connected --lost--> idle
    connecting --connect failed--> idle (the calls that waited fail)
    any --stop--> stopped (every call fails; a late connection is closed at once)

A call on a live connection changes no state: it goes straight to what
``connected`` does with a send (`RPCIConnection.call`), with no transition to
look up and no Deferred but the caller's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from automat import TypeMachineBuilder, pep614
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from .interfaces import ChannelError
from .stream_protocols import GuestRPCIProtocol

# A call waiting for a connection: the request, the Deferred its caller holds, the sends left.
_Waiting = tuple[bytes, Deferred[bytes], int]


class _Inputs(Protocol):
    """What happens to the connection (the machine's inputs; not a zope interface: Automat's typed
    machines are declared with a `typing.Protocol`, and nothing outside this module provides it)."""

    def send(self, request: bytes, reply: Deferred[bytes], attempts: int) -> None:
        "A call: ``reply`` fires with the VMX's answer; ``attempts`` counts sends left after a loss."

    def connected(self, protocol: GuestRPCIProtocol) -> None:
        "The endpoint connected."

    def connect_failed(self, failure: Failure) -> None:
        "The endpoint could not connect."

    def lost(self, protocol: GuestRPCIProtocol) -> None:
        "``protocol``'s connection closed."

    def stop(self) -> None:
        "The channel stops for good."


@dataclass
class _Core:
    endpoint: IStreamClientEndpoint
    factory: Factory
    clock: IReactorTime
    name: str
    timeout: float
    # The "connected" state's protocol, None in every other state: a call on a live connection
    # changes no state, so it goes straight to `issue` without a transition (Automat's lookup
    # of the transition costs more than the rest of the call; see `RPCIConnection.call`).
    live: GuestRPCIProtocol | None = None
    log: Logger = field(default_factory=Logger)

    def issue(
        self, machine: _Inputs, protocol: GuestRPCIProtocol, request: bytes, reply: Deferred[bytes], attempts: int
    ) -> Deferred[bytes]:
        """Send ``request`` on ``protocol``; ``reply`` fires with the answer.

        The timeout and the retry must come first in the caller's chain: ``reply`` must not
        have the caller's callbacks yet (`resume` is for one that may).
        """
        protocol.request(request, reply)
        reply.addTimeout(self.timeout, self.clock)  # type: ignore[arg-type]
        return reply.addErrback(self.failed, machine, protocol, request, attempts)

    def resume(
        self, machine: _Inputs, protocol: GuestRPCIProtocol, request: bytes, reply: Deferred[bytes], attempts: int
    ) -> None:
        """`issue` for a call that waited for the connection: its caller has its Deferred."""
        self.issue(machine, protocol, request, Deferred(), attempts).chainDeferred(reply)

    def failed(
        self, failure: Failure, machine: _Inputs, protocol: GuestRPCIProtocol, request: bytes, attempts: int
    ) -> Deferred[bytes]:
        # Runs first in the caller's chain: what it returns is what the caller sees.
        if failure.check(defer.TimeoutError):
            # The stream is out of step: close it; its loss takes the machine back to idle.
            protocol.transport.loseConnection()  # type: ignore[union-attr]
            return defer.fail(ChannelError(f"no RPCI reply from {self.name} within {self.timeout} s"))
        if protocol.lost and attempts > 1:
            self.log.info("RPCI connection to {name} lost; sending again", name=self.name)
            again: Deferred[bytes] = Deferred()
            machine.send(request, again, attempts - 1)
            return again
        return defer.fail(failure)

    def arrived(self, protocol: IProtocol, machine: _Inputs) -> None:
        assert isinstance(protocol, GuestRPCIProtocol)
        if protocol.lost:  # lost before the endpoint said it connected: as good as a failed connect
            machine.connect_failed(Failure(ChannelError(f"the connection to {self.name} closed at once")))
        else:
            machine.connected(protocol)

    def stopped(self) -> ChannelError:
        return ChannelError(f"the channel to {self.name} is stopped")


@dataclass
class _Connecting:
    attempt: Deferred[IProtocol]
    waiting: deque[_Waiting]


def _machine() -> Callable[[_Core], _Inputs]:
    builder = TypeMachineBuilder(_Inputs, _Core)

    def connect(machine: _Inputs, core: _Core, request: bytes, reply: Deferred[bytes], attempts: int) -> _Connecting:
        connecting = _Connecting(core.endpoint.connect(core.factory), deque([(request, reply, attempts)]))
        # A connect that fails at once calls back here re-entrantly; Automat runs that input
        # after this one, when the state is "connecting" and ``connecting`` is its data.
        connecting.attempt.addCallbacks(core.arrived, machine.connect_failed, callbackArgs=(machine,))
        return connecting

    def go_live(machine: _Inputs, core: _Core, protocol: GuestRPCIProtocol) -> GuestRPCIProtocol:
        # Only the live connection reports its loss, before failing the calls it carries, so
        # that a call sent again on loss finds the machine already without it.
        protocol.on_lost = machine.lost
        core.live = protocol
        return protocol

    idle = builder.state("idle")
    connecting = builder.state("connecting", connect)
    connected = builder.state("connected", go_live)
    stopped = builder.state("stopped")

    idle.upon(_Inputs.send).to(connecting).returns(None)

    @pep614(connecting.upon(_Inputs.send).loop())
    def wait(
        machine: _Inputs, core: _Core, state: _Connecting, request: bytes, reply: Deferred[bytes], attempts: int
    ) -> None:
        state.waiting.append((request, reply, attempts))

    @pep614(connecting.upon(_Inputs.connected).to(connected))
    def flush(machine: _Inputs, core: _Core, state: _Connecting, protocol: GuestRPCIProtocol) -> None:
        for request, reply, attempts in state.waiting:  # in call order
            core.resume(machine, protocol, request, reply, attempts)

    @pep614(connecting.upon(_Inputs.connect_failed).to(idle))
    def fail_waiting(machine: _Inputs, core: _Core, state: _Connecting, failure: Failure) -> None:
        if failure.check(ChannelError):
            error = failure.value
        else:
            error = ChannelError(f"cannot reach the VMX at {core.name}: {failure.getErrorMessage()}")
        for _, reply, _ in state.waiting:
            reply.errback(error)

    @pep614(connecting.upon(_Inputs.stop).to(stopped))
    def abandon_connect(machine: _Inputs, core: _Core, state: _Connecting) -> None:
        # Not cancelled: not every endpoint can take a connection back; a late one is closed
        # when it arrives in "stopped".
        for _, reply, _ in state.waiting:
            reply.errback(core.stopped())

    # No output on "connected" fires a caller's callbacks (the connection is live: a request
    # cannot fail at once), so no call reaches here postponed behind one: its Deferred is new.
    @pep614(connected.upon(_Inputs.send).loop())
    def issue(
        machine: _Inputs, core: _Core, live: GuestRPCIProtocol, request: bytes, reply: Deferred[bytes], attempts: int
    ) -> None:
        core.issue(machine, live, request, reply, attempts)

    @pep614(connected.upon(_Inputs.lost).to(idle))
    def forget(machine: _Inputs, core: _Core, live: GuestRPCIProtocol, protocol: GuestRPCIProtocol) -> None:
        core.live = None  # the next call connects afresh

    @pep614(connected.upon(_Inputs.stop).to(stopped))
    def close(machine: _Inputs, core: _Core, protocol: GuestRPCIProtocol) -> None:
        core.live = None
        protocol.transport.loseConnection()  # type: ignore[union-attr]

    @pep614(stopped.upon(_Inputs.send).loop())
    def refuse(machine: _Inputs, core: _Core, request: bytes, reply: Deferred[bytes], attempts: int) -> None:
        reply.errback(core.stopped())

    @pep614(stopped.upon(_Inputs.connected).loop())
    def close_late(machine: _Inputs, core: _Core, protocol: GuestRPCIProtocol) -> None:
        protocol.transport.loseConnection()  # type: ignore[union-attr]

    idle.upon(_Inputs.stop).to(stopped).returns(None)
    stopped.upon(_Inputs.stop).loop().returns(None)
    stopped.upon(_Inputs.lost).loop().returns(None)  # the connection stop closed
    stopped.upon(_Inputs.connect_failed).loop().returns(None)  # the attempt under way at stop

    return builder.build()


_build = _machine()


class RPCIConnection:
    """Opened on first use, reopened after a loss; requests leave in call order.

    Calls made while the connection is being opened wait and go out in the
    order they were made, once it is up.  A reply that does not come within
    ``timeout`` fails its call and drops the connection (the stream is out
    of step).  With ``retry_lost`` a call whose connection was lost before
    its reply is sent once more on a new connection, as open-vm-tools does
    on vsock.
    """

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
        self.name = name
        self._attempts = 2 if retry_lost else 1
        self._core = _Core(endpoint, Factory.forProtocol(protocol), clock, name, timeout)
        self._machine = _build(self._core)

    def call(self, request: bytes) -> Deferred[bytes]:
        """Send ``request``; fires with the raw reply or fails with `ChannelError`."""
        reply: Deferred[bytes] = Deferred()
        live = self._core.live
        if live is not None:
            # What "connected" does with a send, without looking the transition up: 10-20 %
            # of a call's CPU (benchmarks/stream_rpc.py counts about 25 µs per side).
            self._core.issue(self._machine, live, request, reply, self._attempts)
        else:
            self._machine.send(request, reply, self._attempts)
        return reply

    def stop(self) -> None:
        self._machine.stop()
