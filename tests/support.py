"""Shared test scaffolding: a guest and a simulated VMX joined in memory by iosim."""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.test import iosim
from zope.interface import implementer

from twisted_vmtools.channels.stream import StreamChannel
from twisted_vmtools.service import ToolsService
from twisted_vmtools.vmx.control import ControlServer
from twisted_vmtools.vmx.model import VMX
from twisted_vmtools.vmx.stream import VMXStreamFactory


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


class Harness:
    """A `ToolsService` over a `StreamChannel`, talking to a `VMX`, all on one Clock."""

    def __init__(self, *, primary_ip: str | None = "198.51.100.7", tclo_timeout: float = 30.0) -> None:
        self.clock = Clock()
        self.vmx = VMX(self.clock, tclo_timeout=tclo_timeout)
        self.endpoint = PumpEndpoint(VMXStreamFactory(self.vmx, control=lambda: ControlServer(self.vmx)))
        self.channel = StreamChannel(self.clock, "memory", endpoint=self.endpoint)
        self.service = ToolsService(self.clock, self.channel, primary_ip=primary_ip)

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
        replies: list[object] = []
        self.vmx.send(command).addBoth(replies.append)
        self.settle()
        assert replies, f"no reply to {command!r}"
        reply = replies[0]
        assert isinstance(reply, bytes), reply
        return reply

    def rpci(self, request: bytes) -> object:
        results: list[object] = []
        self.service.rpci.call(request).addBoth(results.append)
        self.settle()
        assert results, f"no reply to {request!r}"
        return results[0]
