"""Shared test scaffolding: synchronous Deferred results, and a guest and a simulated VMX joined in
memory by iosim."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from twisted_vmtools.channels.stream import StreamChannel
from twisted_vmtools.codecs.powerops import PowerState
from twisted_vmtools.guest.feature import IGuestFeature
from twisted_vmtools.guest.powerops import IPowerHandler
from twisted_vmtools.service import ToolsService
from twisted_vmtools.vmx.access import Peer
from twisted_vmtools.vmx.control import ControlServer
from twisted_vmtools.vmx.model import VMX
from twisted_vmtools.vmx.stream import VMXStreamFactory

T = TypeVar("T")


def outcome_of(d: defer.Deferred[Any]) -> object:
    """What ``d`` has already fired with: its result, or the `Failure` (consumed)."""
    results: list[object] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def result_of(d: defer.Deferred[T]) -> T:
    """The result ``d`` has already fired with; a failure is raised here."""
    outcome = outcome_of(d)
    if isinstance(outcome, Failure):
        outcome.raiseException()
    return outcome  # type: ignore[return-value]


def failure_of(d: defer.Deferred[Any]) -> Failure:
    """The `Failure` ``d`` has already fired with (consumed); a success fails the test."""
    outcome = outcome_of(d)
    assert isinstance(outcome, Failure), f"the Deferred succeeded with {outcome!r}"
    return outcome


@implementer(IStreamClientEndpoint)
@dataclass
class PumpEndpoint:
    """A client endpoint whose connections are iosim pumps into a server factory."""

    server_factory: Factory
    refuse: bool = False
    pumps: list[iosim.IOPump] = field(default_factory=list)

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        if self.refuse:
            return defer.fail(ConnectionRefusedError("the VMX is not there"))
        address = UNIXAddress(b"memory")
        client = factory.buildProtocol(address)
        server = self.server_factory.buildProtocol(address)
        assert client is not None and server is not None
        pump = iosim.connect(
            server, iosim.FakeTransport(server, isServer=True), client, iosim.FakeTransport(client, isServer=False),
            greet=False,
        )
        self.pumps.append(pump)
        return defer.succeed(client)

    def flush(self) -> None:
        for _ in range(100):
            moved = False
            for pump in list(self.pumps):
                moved |= bool(pump.pump())
            self.pumps = [p for p in self.pumps if not (p.clientIO.disconnected and p.serverIO.disconnected)]
            if not moved:
                return

    def drop_all(self) -> None:
        """The VMX goes away: every connection is closed from its side."""
        for pump in self.pumps:
            pump.serverIO.loseConnection()
        self.flush()


@implementer(IPowerHandler)
class RecordingPowerHandler:
    """Records what a power operation would run; ``scripts`` decides each script's outcome.

    A state mapped to a Deferred keeps its script "running" until the test fires it.
    """

    def __init__(self) -> None:
        self.scripts: dict[PowerState, object] = {}
        self.ran: list[PowerState] = []
        self.shut_downs: list[PowerState] = []

    def run_script(self, state: PowerState) -> Any:
        self.ran.append(state)
        outcome = self.scripts.get(state, True)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def shut_down(self, state: PowerState) -> None:
        self.shut_downs.append(state)


def same_user(transport: object) -> Peer:
    """In memory there are no peer credentials: every connection is this user's, like a test's own."""
    return Peer(uid=os.geteuid(), gid=os.getegid(), pid=os.getpid())


class Harness:
    """A `ToolsService` over a `StreamChannel`, talking to a `VMX`, all on one Clock."""

    def __init__(
        self,
        *,
        primary_ip: str | None = "198.51.100.7",
        tclo_timeout: float = 30.0,
        features: Callable[[Clock], Sequence[IGuestFeature]] | None = None,
    ) -> None:
        """``features``, given the harness's clock, replaces the default features."""
        self.clock = Clock()
        self.vmx = VMX(self.clock, tclo_timeout=tclo_timeout)
        self.endpoint = PumpEndpoint(
            VMXStreamFactory(self.vmx, control=lambda: ControlServer(self.vmx), peer=same_user)
        )
        self.channel = StreamChannel(self.clock, "memory", endpoint=self.endpoint)
        # Never the default power handler: an OS_Halt in a test must not reach /sbin/shutdown.
        self.power = RecordingPowerHandler()
        if features is None:
            self.service = ToolsService(self.clock, self.channel, primary_ip=primary_ip, power_handler=self.power)
        else:
            self.service = ToolsService(self.clock, self.channel, features=features(self.clock))

    def start(self) -> None:
        self.service.startService()
        self.settle()

    def settle(self, seconds: float = 0.0) -> None:
        """Move bytes until quiet, then let ``seconds`` of reactor time pass."""
        self.endpoint.flush()
        self.clock.advance(0)
        self.endpoint.flush()
        if seconds:
            self.clock.advance(seconds)
            self.endpoint.flush()

    def send(self, command: bytes) -> bytes:
        """Send a TCLO command and return the guest's reply (it must arrive while settling)."""
        sent = self.vmx.send(command)
        self.settle()
        reply = outcome_of(sent)
        assert isinstance(reply, bytes), reply
        return reply

    def rpci(self, request: bytes) -> object:
        called = self.service.rpci.call(request)
        self.settle()
        return outcome_of(called)
