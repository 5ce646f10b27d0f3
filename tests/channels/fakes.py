"""A small in-memory VMX for the channel tests: endpoints behind `BackdoorHost`."""

from __future__ import annotations

import errno
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue, succeed
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_vmtools.channels.interfaces import ITCLOHandler
from twisted_vmtools.channels.vsock import RPCI_PORT, TCLO_PORT
from twisted_vmtools.codecs.datamap import VsockPacket, VsockPacketError
from twisted_vmtools.codecs.message import (
    PROTO_RPCI,
    PROTO_TCLO,
    Backdoor,
    BackdoorCall,
    BackdoorOp,
    BackdoorResult,
    ChannelEndpoint,
    MessageType,
    Status,
)
from twisted_vmtools.codecs.registers import Registers, high16, pack16
from twisted_vmtools.framing import PacketProtocol
from twisted_vmtools.vmx.backdoor_host import BackdoorHost

_reactor: Any = reactor


@dataclass
class RPCIServer:
    """Answers ``1 <request>`` unless ``answer`` says otherwise."""

    answer: Callable[[bytes], bytes] = lambda request: b"1 " + request
    requests: list[bytes] = field(default_factory=list)
    closes: int = 0
    _reply: bytes | None = None

    def message_received(self, data: bytes) -> None:
        self.requests.append(data)
        self._reply = self.answer(data)

    def next_message(self) -> bytes | None:
        return self._reply

    def message_delivered(self, data: bytes) -> None:
        self._reply = None

    def message_refused(self, data: bytes) -> None:
        self._reply = None

    def closed(self) -> None:
        self.closes += 1


@dataclass
class TCLOQueue:
    """Commands waiting for the guest; what it sent back (empty polls included)."""

    commands: deque[bytes] = field(default_factory=deque)
    received: list[bytes] = field(default_factory=list)
    delivered: list[bytes] = field(default_factory=list)
    closes: int = 0

    @property
    def replies(self) -> list[bytes]:
        return [m for m in self.received if m]

    @property
    def polls(self) -> int:
        return len(self.received)

    def message_received(self, data: bytes) -> None:
        self.received.append(data)

    def next_message(self) -> bytes | None:
        return self.commands[0] if self.commands else None

    def message_delivered(self, data: bytes) -> None:
        self.delivered.append(self.commands.popleft())

    def message_refused(self, data: bytes) -> None:
        pass  # it stays at the head of the queue

    def closed(self) -> None:
        self.closes += 1


class FakeVMX:
    """`BackdoorHost` with one RPCI server and one TCLO queue; ``refuse`` makes OPEN fail."""

    def __init__(self, *, high_bandwidth: bool = True) -> None:
        self.rpci = RPCIServer()
        self.tclo = TCLOQueue()
        self.refuse = False
        self.opens: list[int] = []
        self.host = BackdoorHost(self._endpoint, high_bandwidth=high_bandwidth)

    def _endpoint(self, protocol: int, owner: int) -> ChannelEndpoint | None:
        self.opens.append(protocol)
        if self.refuse:
            return None
        endpoints: dict[int, ChannelEndpoint] = {PROTO_RPCI: self.rpci, PROTO_TCLO: self.tclo}
        return endpoints.get(protocol)


def message_type(call: BackdoorCall) -> MessageType | None:
    if call.op is not BackdoorOp.LOW_BANDWIDTH:
        return None
    return MessageType(high16(call.regs.cx))


def status_reply(call: BackdoorCall, status: Status) -> BackdoorResult:
    """What a VMX answers to fail ``call`` with ``status`` without touching its state."""
    if call.op is BackdoorOp.LOW_BANDWIDTH:
        return BackdoorResult(call.regs.with_(cx=pack16(status, 0)))
    return BackdoorResult(call.regs.with_(bx=pack16(status, 0)))


class Interposer:
    """Wraps an executor; ``rules`` may answer a call instead of the VMX (checkpoints, garbage)."""

    def __init__(self, inner: Backdoor) -> None:
        self.inner = inner
        self.calls: list[BackdoorCall] = []
        self.rules: list[Callable[[BackdoorCall], BackdoorResult | None]] = []

    def __call__(self, call: BackdoorCall) -> BackdoorResult:
        self.calls.append(call)
        for rule in list(self.rules):
            result = rule(call)
            if result is not None:
                return result
        return self.inner(call)

    def once(self, match: Callable[[BackdoorCall], bool], answer: Callable[[BackdoorCall], BackdoorResult]) -> None:
        """Answer the next call matching ``match`` with ``answer``, then step aside."""

        def rule(call: BackdoorCall) -> BackdoorResult | None:
            if match(call):
                self.rules.remove(rule)
                return answer(call)
            return None

        self.rules.append(rule)

    def ops(self) -> list[str]:
        return [
            call.op.value if call.op is not BackdoorOp.LOW_BANDWIDTH else MessageType(high16(call.regs.cx)).name
            for call in self.calls
        ]


GARBAGE = Registers(ax=0xDEADBEEF, bx=0xFFFFFFFFFFFFFFFF, cx=0x1234ABCD, dx=0xFFFF0000, si=7, di=9)


class VMXPeer(PacketProtocol):
    """The VMX's end of one connection."""

    def __init__(self) -> None:
        super().__init__()
        self.packets: DeferredQueue[VsockPacket] = DeferredQueue()
        self.lost: Deferred[None] = Deferred()
        self.bad: list[VsockPacketError] = []

    def packetReceived(self, packet: VsockPacket) -> None:
        self.packets.put(packet)

    def badPacket(self, error: VsockPacketError) -> None:
        self.bad.append(error)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.lost.callback(None)

    def send(self, payload: bytes) -> None:
        self.sendPacket(VsockPacket.data(payload))

    def close(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


class PairConnector:
    """Hands the guest one end of a socketpair and puts a `VMXPeer` on the other."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool]] = []
        self.peers: dict[int, DeferredQueue[VMXPeer]] = {RPCI_PORT: DeferredQueue(), TCLO_PORT: DeferredQueue()}
        self.refuse: set[int] = set()

    def __call__(self, port: int, privileged: bool) -> socket.socket:
        self.calls.append((port, privileged))
        if port in self.refuse:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "no VMX here")
        guest, vmx = socket.socketpair()
        vmx.setblocking(False)
        peer = VMXPeer()
        _reactor.adoptStreamConnection(vmx.fileno(), socket.AF_UNIX, Factory.forProtocol(lambda: peer))
        vmx.close()
        self.peers[port].put(peer)
        return guest


@implementer(ITCLOHandler)
class RecordingHandler:
    """A TCLO handler that records its commands.

    With ``answer``, each command is answered by ``answer(command)``: bytes (answered at once), a
    Deferred, or an exception raised from `handle` itself.  Without, each command waits on a
    Deferred in ``pending`` for the test to fire.
    """

    def __init__(self, answer: Callable[[bytes], bytes | Deferred[bytes]] | None = None) -> None:
        self.commands: list[bytes] = []
        self.pending: list[Deferred[bytes]] = []
        self.answer = answer

    def handle(self, command: bytes) -> Deferred[bytes]:
        self.commands.append(command)
        if self.answer is None:
            waiting: Deferred[bytes] = Deferred()
            self.pending.append(waiting)
            return waiting
        answer = self.answer(command)
        return answer if isinstance(answer, Deferred) else succeed(answer)
