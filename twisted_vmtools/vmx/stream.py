"""The VMX's end of the stream transport: one listener for RPCI, TCLO and control."""

from __future__ import annotations

import hmac
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count

from twisted.internet.interfaces import IDelayedCall, IProtocol, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..codecs.datamap import MALFORMED_PACKET as MALFORMED
from ..codecs.datamap import PacketType, VsockPacket, VsockPacketError
from ..codecs.message import MAX_MESSAGE
from ..codecs.rpci import RPCIReply
from ..codecs.stream import PREAMBLE_SIZE, StreamKind, StreamPreambleError, parse_preamble
from ..codecs.tclo import ERROR_PREFIX
from ..framing import PacketProtocol
from .access import (
    ACCEPTED,
    CHALLENGE_MAGIC,
    NONCE_SIZE,
    PREAMBLE_TIMEOUT,
    PROOF_SIZE,
    ConnectionLimits,
    ControlAccess,
    Peer,
    PeerLookup,
    default_access,
    peer_of,
    proof,
)
from .backpressure import ReadsPausedByWrites
from .model import VMX
from .ratelimit import RateLimitedLog
from .tclo_queue import ITCLOPusher

# What a peer's bytes make the VMX say (malformed packets, refusals) is rate limited: a peer
# that loops on bad input must not fill the log.  It is used where a Logger's warn would be.
PEER_LOG = RateLimitedLog(Logger(namespace="twisted_vmtools.vmx.stream"))
TOO_LONG = b"Message too long"


class VMXRPCIProtocol(PacketProtocol, ReadsPausedByWrites):
    """Answers each RPCI request packet with one reply packet, in order.

    A guest that does not read its replies is not read from either: once the
    transport's write buffer is full, requests already read wait (`_held`,
    at most one read's worth) until it drains.
    """

    log = PEER_LOG  # type: ignore[assignment]

    def __init__(self, vmx: VMX, name: str) -> None:
        super().__init__()
        self.vmx = vmx
        self.name = name
        self._held: deque[VsockPacket | VsockPacketError] = deque()

    def connectionMade(self) -> None:
        self.hold_reads_while_writing()

    def dataReceived(self, data: bytes) -> None:
        try:
            self._held.extend(self._decoder.feed(data))
        except VsockPacketError as error:
            self.log.warn("closing stream: {error}", error=str(error))
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self._answer_held()

    def resumeProducing(self) -> None:
        super().resumeProducing()
        self._answer_held()

    def _answer_held(self) -> None:
        while self._held and not self.writes_pending and not getattr(self.transport, "disconnecting", False):
            item = self._held.popleft()
            if isinstance(item, VsockPacketError):
                self.badPacket(item)
            else:
                self.packetReceived(item)

    def packetReceived(self, packet: VsockPacket) -> None:
        if packet.type is PacketType.PING or packet.payload is None:
            return
        if len(packet.payload) > MAX_MESSAGE:
            # The same cap as on the backdoor (where SENDSIZE is refused): a VMX takes 64 KiB.
            self.sendPacket(VsockPacket.data(RPCIReply(False, TOO_LONG).encode()))
            return
        self.sendPacket(VsockPacket.data(self.vmx.rpci(packet.payload, self.name)))
        if packet.fast_close:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def badPacket(self, error: VsockPacketError) -> None:
        super().badPacket(error)
        self.sendPacket(VsockPacket.data(RPCIReply(False, MALFORMED).encode()))


@implementer(ITCLOPusher)
class VMXTCLOProtocol(PacketProtocol):
    """Pushes queued TCLO commands to the guest and hands its replies back.

    One command at a time, or as many as the guest's first reply says it
    accepts (MAX_IN_FLIGHT, capped by the queue); replies come in command order.

    One VM has one guest: while a guest's TCLO stream is open, another is
    refused (closed at once, the live one untouched).  A dead guest's stream
    does not block its successor for long: a guest that stops answering is
    dropped when its command times out (the VMX pings every few seconds).
    """

    log = PEER_LOG  # type: ignore[assignment]

    def __init__(self, vmx: VMX, name: str) -> None:
        super().__init__()
        self.vmx = vmx
        self.name = name
        self.attached = False

    def connectionMade(self) -> None:
        if self.vmx.tclo.pushed:
            self.log.warn(
                "{name}: refused, the guest's TCLO channel {live} is live",
                name=self.name, live=", ".join(sorted(self.vmx.connected_channels)) or "?",
            )
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.attached = True
        self.vmx.tclo.attach(self)
        self.vmx.tclo_connected(self.name)

    def push(self, command: bytes) -> None:
        self.vmx.tclo_sent(command, self.name)
        self.sendPacket(VsockPacket.data(command))

    def out_of_step(self) -> None:
        self.log.warn("{name}: the guest did not answer in time; dropping the connection", name=self.name)
        self.transport.loseConnection()  # type: ignore[union-attr]

    def packetReceived(self, packet: VsockPacket) -> None:
        if not self.attached:
            return
        if packet.type is PacketType.PING:
            self.vmx.guest_alive()
        elif packet.payload is not None:
            if packet.max_in_flight:
                # The guest takes several commands at once (its first reply says so): the
                # queue may send the next ones before this reply's own callbacks run.
                self.vmx.tclo.allow(self, packet.max_in_flight)
            self._reply(packet.payload)

    def badPacket(self, error: VsockPacketError) -> None:
        super().badPacket(error)
        if self.attached:
            # The guest answered, if unreadably: settle the command so the queue moves on.
            self._reply(ERROR_PREFIX + MALFORMED)

    def _reply(self, data: bytes) -> None:
        if not self.vmx.tclo_reply(data, self.name):
            # Nothing was asked: a guest out of step, or a peer filling our memory.
            self.log.warn("{name}: unsolicited TCLO reply; dropping the connection", name=self.name)
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        if self.attached:
            self.attached = False
            self.vmx.tclo.detach(self)
            self.vmx.tclo_disconnected(self.name)


class PreambleRouter(Protocol):
    """Reads the 4-byte preamble, then hands the connection to the protocol it names.

    Before that: the peer must be under its connection limit, must name a
    channel within `PREAMBLE_TIMEOUT` seconds, and for the control channel
    must be allowed (its uid, or over TCP the shared secret's proof).
    """

    def __init__(self, routes: dict[StreamKind, Callable[[], IProtocol]], gate: Gate) -> None:
        self._routes = routes
        self._gate = gate
        self._buffer = bytearray()  # at most PREAMBLE_SIZE, then PROOF_SIZE bytes
        self._next: IProtocol | None = None
        self._peer = Peer()
        self._counted = False
        self._timer: IDelayedCall | None = None
        self._nonce: bytes | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self._peer = self._gate.peer_of(self.transport)
        if not self._gate.limits.admit(self._peer.key):
            self._refuse("over {limit} open connections", limit=self._gate.limits.per_peer)
            return
        self._counted = True
        self._timer = self._gate.clock.callLater(self._gate.preamble_timeout, self._idle)

    def dataReceived(self, data: bytes) -> None:
        if self._next is not None:
            self._next.dataReceived(data)
            return
        if self.transport is None or getattr(self.transport, "disconnecting", False):
            return
        wanted = PROOF_SIZE if self._nonce is not None else PREAMBLE_SIZE
        # Bounded: only the bytes still missing are kept; the rest goes on with the route.
        take = wanted - len(self._buffer)
        self._buffer += data[:take]
        rest = data[take:]
        if len(self._buffer) < wanted:
            return
        head = bytes(self._buffer)
        self._buffer.clear()
        if self._nonce is not None:
            self._check_proof(head, rest)
        else:
            self._route(head, rest)

    def _route(self, head: bytes, rest: bytes) -> None:
        try:
            kind = parse_preamble(head)
        except StreamPreambleError as error:
            self._refuse("{error}", error=str(error))
            return
        factory = self._routes.get(kind)
        if factory is None:
            self._refuse("no {kind} channel here", kind=kind.name)
            return
        if kind is StreamKind.CONTROL and not self._control_allowed(rest):
            return
        self._hand_over(factory, rest)

    def _control_allowed(self, rest: bytes) -> bool:
        """True to go on at once; False if refused, or while a TCP peer is challenged."""
        access = self._gate.access
        if self._peer.uid is not None:
            if access.allows_local(self._peer):
                return True
            self._refuse("control channel refused: not the simulator's user, root or its group")
            return False
        if access.secret is None:
            self._refuse("control channel refused: no shared secret is set for control over the network")
            return False
        self._nonce = self._gate.nonce()
        self.transport.write(CHALLENGE_MAGIC + self._nonce)  # type: ignore[union-attr]
        if rest:
            self.dataReceived(rest)
        return False

    def _check_proof(self, answer: bytes, rest: bytes) -> None:
        assert self._nonce is not None and self._gate.access.secret is not None
        if not hmac.compare_digest(answer, proof(self._gate.access.secret, self._nonce)):
            self._refuse("control channel refused: wrong shared secret")
            return
        self._nonce = None
        self.transport.write(ACCEPTED)  # type: ignore[union-attr]
        self._hand_over(self._routes[StreamKind.CONTROL], rest)

    def _hand_over(self, factory: Callable[[], IProtocol], rest: bytes) -> None:
        self._cancel_timer()
        self._next = factory()
        assert self.transport is not None
        self._next.makeConnection(self.transport)
        if rest:
            self._next.dataReceived(rest)

    def _idle(self) -> None:
        self._timer = None
        self._refuse("no channel named within {timeout} s", timeout=self._gate.preamble_timeout)

    def _refuse(self, why: str, **fields: object) -> None:
        self._gate.log.warn("closing connection from {peer}: " + why, peer=str(self._peer), **fields)
        self._cancel_timer()
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self._cancel_timer()
        if self._counted:
            self._counted = False
            self._gate.limits.release(self._peer.key)
        if self._next is not None:
            self._next.connectionLost(reason)
            self._next = None  # no cycle through the transport keeps a closed channel alive


@dataclass
class Gate:
    """What every new connection passes: limits, a deadline for its preamble, control access."""

    clock: IReactorTime
    access: ControlAccess
    limits: ConnectionLimits
    peer_of: PeerLookup = peer_of
    preamble_timeout: float = PREAMBLE_TIMEOUT
    nonce: Callable[[], bytes] = lambda: os.urandom(NONCE_SIZE)
    log: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(Logger()))


class VMXStreamFactory(Factory):
    """The listener a guest (and `vmtools-sim` commands) connect to.

    ``access`` says who may use the control channel (default: this user and
    root); ``peer_of`` finds who is at the other end of a transport (tests
    give one for in-memory transports).
    """

    noisy = False

    def __init__(
        self,
        vmx: VMX,
        control: Callable[[], IProtocol] | None = None,
        *,
        access: ControlAccess | None = None,
        limits: ConnectionLimits | None = None,
        peer: PeerLookup = peer_of,
        preamble_timeout: float = PREAMBLE_TIMEOUT,
    ) -> None:
        self.vmx = vmx
        self._control = control
        # Numbered per kind, when a connection names its channel: control clients and
        # refused connections are not guest channels, and must not move the numbers.
        self._serials = {StreamKind.RPCI: count(1), StreamKind.TCLO: count(1)}
        self.gate = Gate(
            vmx.clock, access or default_access(), limits or ConnectionLimits(), peer, preamble_timeout
        )

    def buildProtocol(self, addr: object) -> PreambleRouter:
        routes: dict[StreamKind, Callable[[], IProtocol]] = {
            StreamKind.RPCI: lambda: VMXRPCIProtocol(self.vmx, f"rpci#{next(self._serials[StreamKind.RPCI])}"),
            StreamKind.TCLO: lambda: VMXTCLOProtocol(self.vmx, f"tclo#{next(self._serials[StreamKind.TCLO])}"),
        }
        if self._control is not None:
            routes[StreamKind.CONTROL] = self._control
        return PreambleRouter(routes, self.gate)
