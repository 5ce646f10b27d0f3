"""VsockChannel over socketpairs: a VMX peer speaks the framing, the guest's clock is a `Clock`.

No test creates an AF_VSOCK socket: the connector is always injected.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from zope.interface.verify import verifyObject

from twisted_vmtools.channels import vsock
from twisted_vmtools.channels.interfaces import ChannelError, IGuestChannel
from twisted_vmtools.channels.vsock import RPCI_PORT, TCLO_PORT, VsockChannel, vsock_connect
from twisted_vmtools.codecs.datamap import PacketType, VsockPacket

from .fakes import PairConnector
from .fakes import RecordingHandler as Handler

_reactor: Any = reactor


def turn() -> Deferred[None]:
    """Let the real reactor move bytes across the socketpair."""
    return deferLater(_reactor, 0.01, lambda: None)


@pytest.fixture
def connector() -> PairConnector:
    return PairConnector()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def channel(connector: PairConnector, clock: Clock) -> Any:
    ch = VsockChannel(_reactor, clock=clock, connector=connector)
    yield ch
    ch.stop()


def test_provides_interface(channel: VsockChannel) -> None:
    assert verifyObject(IGuestChannel, channel)
    assert channel.name == "vsock"


# -- RPCI


@pytest_twisted.ensureDeferred
async def test_rpci_round_trip(channel: VsockChannel, connector: PairConnector) -> None:
    reply = channel.rpci(b"info-get guestinfo.foo\0")
    peer = await connector.peers[RPCI_PORT].get()
    request = await peer.packets.get()
    assert (request.type, request.payload) == (PacketType.DATA, b"info-get guestinfo.foo\0")
    peer.send(b"1 bar")
    assert await reply == b"1 bar"
    assert connector.calls == [(RPCI_PORT, True)]

    # Persistent: the next call goes over the same connection, and calls queue in order.
    second, third = channel.rpci(b"two"), channel.rpci(b"three")
    assert (await peer.packets.get()).payload == b"two"
    assert (await peer.packets.get()).payload == b"three"
    peer.send(b"1 2")
    peer.send(b"0 3")
    assert await second == b"1 2"
    assert await third == b"0 3"
    assert len(connector.calls) == 1


@pytest_twisted.ensureDeferred
async def test_rpci_large_request(channel: VsockChannel, connector: PairConnector) -> None:
    request = b"SetGuestInfo  10 " + bytes(range(256)) * 400
    reply = channel.rpci(request)
    peer = await connector.peers[RPCI_PORT].get()
    assert (await peer.packets.get()).payload == request
    peer.send(b"1 ")
    assert await reply == b"1 "


@pytest_twisted.ensureDeferred
async def test_rpci_vmx_closes_mid_call_then_retry(channel: VsockChannel, connector: PairConnector) -> None:
    reply = channel.rpci(b"log hello")
    first = await connector.peers[RPCI_PORT].get()
    await first.packets.get()
    first.close()
    second = await connector.peers[RPCI_PORT].get()
    assert (await second.packets.get()).payload == b"log hello"
    second.send(b"1 ")
    assert await reply == b"1 "


@pytest_twisted.ensureDeferred
async def test_rpci_garbage_reply_fails_that_call_only(channel: VsockChannel, connector: PairConnector) -> None:
    reply = channel.rpci(b"one")
    peer = await connector.peers[RPCI_PORT].get()
    await peer.packets.get()
    peer.transport.write(b"\0\0\0\x08" + b"\0\0\0\x09\0\0\0\x01")  # type: ignore[union-attr]
    with pytest.raises(ChannelError):
        await reply
    reply = channel.rpci(b"two")
    assert (await peer.packets.get()).payload == b"two"
    peer.send(b"1 ok")
    assert await reply == b"1 ok"
    assert len(connector.calls) == 1


@pytest_twisted.ensureDeferred
async def test_rpci_broken_framing_reconnects(channel: VsockChannel, connector: PairConnector) -> None:
    reply = channel.rpci(b"one")
    peer = await connector.peers[RPCI_PORT].get()
    await peer.packets.get()
    peer.transport.write(b"\xff\xff\xff\xff")  # type: ignore[union-attr]
    await peer.lost
    second = await connector.peers[RPCI_PORT].get()
    assert (await second.packets.get()).payload == b"one"
    second.send(b"1 again")
    assert await reply == b"1 again"


@pytest_twisted.ensureDeferred
async def test_rpci_unreachable(channel: VsockChannel, connector: PairConnector) -> None:
    connector.refuse.add(RPCI_PORT)
    with pytest.raises(ChannelError, match="976"):
        await channel.rpci(b"x")


@pytest_twisted.ensureDeferred
async def test_rpci_timeout(channel: VsockChannel, connector: PairConnector, clock: Clock) -> None:
    reply = channel.rpci(b"x")
    peer = await connector.peers[RPCI_PORT].get()
    await peer.packets.get()
    clock.advance(vsock.RPCI_TIMEOUT)
    with pytest.raises(ChannelError, match="no RPCI reply"):
        await reply
    await peer.lost


# -- TCLO


@pytest_twisted.ensureDeferred
async def test_tclo_push_reply_and_heartbeat(channel: VsockChannel, connector: PairConnector, clock: Clock) -> None:
    handler = Handler(lambda command: b"OK ATR toolbox" if command == b"reset" else b"OK ")
    channel.start(handler)
    peer = await connector.peers[TCLO_PORT].get()
    assert await channel.first_tclo_attempt() is not None
    assert connector.calls == [(TCLO_PORT, False)]
    # No heartbeat before the first answer: the VMX speaks first.
    clock.advance(5)
    await turn()
    assert not peer.packets.pending
    peer.send(b"reset")
    answer = await peer.packets.get()
    assert (answer.type, answer.payload) == (PacketType.DATA, b"OK ATR toolbox")
    assert handler.commands == [b"reset"]
    for _ in range(3):
        clock.advance(0.999)
        await turn()
        assert not peer.packets.pending
        clock.advance(0.001)
        assert (await peer.packets.get()).type is PacketType.PING
    peer.send(b"ping")
    assert (await peer.packets.get()).payload == b"OK "


@pytest_twisted.ensureDeferred
async def test_tclo_one_command_at_a_time(channel: VsockChannel, connector: PairConnector) -> None:
    handler = Handler()
    channel.start(handler)
    peer = await connector.peers[TCLO_PORT].get()
    peer.send(b"Vix_1_Relayed_Command slow")
    peer.send(b"ping")
    await turn()
    assert handler.commands == [b"Vix_1_Relayed_Command slow"]
    handler.pending[0].callback(b"OK slow")
    assert (await peer.packets.get()).payload == b"OK slow"
    assert handler.commands[1] == b"ping"
    handler.pending[1].callback(b"OK ")
    assert (await peer.packets.get()).payload == b"OK "


@pytest_twisted.ensureDeferred
async def test_tclo_garbage_answered_and_dropped(channel: VsockChannel, connector: PairConnector) -> None:
    handler = Handler(lambda command: b"OK " + command)
    channel.start(handler)
    peer = await connector.peers[TCLO_PORT].get()
    # A frame whose DataMap is nonsense, a PING from the VMX, then a real command.
    peer.transport.write(b"\0\0\0\x05hello")  # type: ignore[union-attr]
    peer.sendPacket(VsockPacket.ping())
    peer.send(b"ping")
    assert (await peer.packets.get()).payload == b"ERROR malformed packet"
    assert (await peer.packets.get()).payload == b"OK ping"
    assert handler.commands == [b"ping"]


@pytest_twisted.ensureDeferred
async def test_tclo_vmx_closes_then_reconnect(channel: VsockChannel, connector: PairConnector, clock: Clock) -> None:
    handler = Handler(lambda command: b"OK ")
    channel.start(handler)
    first = await connector.peers[TCLO_PORT].get()
    first.send(b"ping")
    await first.packets.get()
    first.close()
    await first.lost
    for _ in range(100):  # until the guest's side has seen the close
        await turn()
        if any(call.getTime() == 1.5 for call in clock.getDelayedCalls()):
            break
    # The heartbeat stopped with the connection; only the reconnect (back-off 1.5 s) is left.
    assert [call.getTime() for call in clock.getDelayedCalls()] == [1.5]
    clock.advance(1.5)
    second = await connector.peers[TCLO_PORT].get()
    await turn()
    assert not first.packets.pending
    second.send(b"reset")
    assert (await second.packets.get()).payload == b"OK "
    assert connector.calls == [(TCLO_PORT, False)] * 2


@pytest_twisted.ensureDeferred
async def test_tclo_connect_failure_is_reported(channel: VsockChannel, connector: PairConnector) -> None:
    connector.refuse.add(TCLO_PORT)
    channel.start(Handler())
    with pytest.raises(ChannelError):
        await channel.first_tclo_attempt()


@pytest_twisted.ensureDeferred
async def test_stop_closes_everything(channel: VsockChannel, connector: PairConnector) -> None:
    channel.start(Handler())
    tclo = await connector.peers[TCLO_PORT].get()
    reply = channel.rpci(b"x")
    rpci = await connector.peers[RPCI_PORT].get()
    await channel.stop()
    await tclo.lost
    await rpci.lost
    with pytest.raises(ChannelError):
        await reply


# -- the connect policy, with fake sockets


class FakeSocket:
    def __init__(self, log: list[tuple[str, object]], bind_errors: dict[int, int], connect_errors: list[int]) -> None:
        self.log = log
        self.bind_errors = bind_errors
        self.connect_errors = connect_errors
        self.bound: int | None = None
        log.append(("socket", None))

    def settimeout(self, timeout: float) -> None:
        pass

    def bind(self, address: tuple[int, int]) -> None:
        code = self.bind_errors.get(address[1])
        if code is not None:
            raise OSError(code, errno.errorcode[code])
        self.bound = address[1]
        self.log.append(("bind", address[1]))

    def connect(self, address: tuple[int, int]) -> None:
        if self.connect_errors:
            code = self.connect_errors.pop(0)
            raise OSError(code, errno.errorcode[code])
        self.log.append(("connect", address))

    def close(self) -> None:
        self.log.append(("close", self.bound))


def fake_factory(bind_errors: dict[int, int] | None = None, connect_errors: list[int] | None = None):  # noqa: ANN201
    log: list[tuple[str, object]] = []
    errors = list(connect_errors or [])

    def factory() -> Any:
        return FakeSocket(log, bind_errors or {}, errors)

    return factory, log


def test_privileged_skips_ports_in_use() -> None:
    factory, log = fake_factory({1023: errno.EADDRINUSE, 1022: errno.EADDRINUSE})
    sock = vsock_connect(RPCI_PORT, True, socket_factory=factory)
    assert sock.bound == 1021  # type: ignore[attr-defined]
    assert ("connect", (0, RPCI_PORT)) in log


def test_privileged_falls_back_to_ephemeral_on_eacces() -> None:
    factory, log = fake_factory({1023: errno.EACCES})
    sock = vsock_connect(RPCI_PORT, True, socket_factory=factory)
    assert sock.bound is None  # type: ignore[attr-defined]
    assert log[-1] == ("connect", (0, RPCI_PORT))


def test_connect_retries_transient_errors() -> None:
    factory, log = fake_factory(connect_errors=[errno.ECONNRESET, errno.ECONNRESET, errno.ENOBUFS])
    sock = vsock_connect(TCLO_PORT, False, socket_factory=factory)
    assert log[-1] == ("connect", (0, TCLO_PORT))
    assert sock.bound is None  # type: ignore[attr-defined]


def test_connect_gives_up() -> None:
    factory, _ = fake_factory(connect_errors=[errno.ECONNRESET] * 9)
    with pytest.raises(OSError) as info:
        vsock_connect(TCLO_PORT, False, socket_factory=factory)
    assert info.value.errno == errno.ECONNRESET
    factory, _ = fake_factory(connect_errors=[errno.ECONNREFUSED])
    with pytest.raises(ConnectionRefusedError):
        vsock_connect(TCLO_PORT, False, socket_factory=factory)


def test_all_privileged_ports_in_use() -> None:
    factory, _ = fake_factory(dict.fromkeys(range(1, 1024), errno.EADDRINUSE))
    with pytest.raises(OSError) as info:
        vsock_connect(RPCI_PORT, True, socket_factory=factory)
    assert info.value.errno == errno.EADDRINUSE


def test_real_vsock_refused_outside_vmware(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_vsock() -> socket.socket:
        pytest.fail("an AF_VSOCK socket was about to be created")

    monkeypatch.setattr(vsock, "_vsock_socket", no_vsock)
    with pytest.raises(ChannelError, match="not a VMware VM"):
        vsock_connect(RPCI_PORT, True, is_vmware=lambda: False)


@pytest_twisted.ensureDeferred
async def test_real_connector_runs_off_the_reactor_and_refuses_outside_vmware() -> None:
    # On this (non-VMware) machine vsock_connect refuses before creating any socket;
    # the point is that the refusal arrives as a Deferred from the thread pool.
    connecting = vsock.threaded_connector(reactor)(RPCI_PORT, True)
    assert isinstance(connecting, Deferred)
    with pytest.raises(ChannelError, match="not a VMware VM"):
        await connecting


@pytest.mark.parametrize(
    ("description", "port", "privileged"),
    [("vsock:976", 976, False), ("vsock:port=975", 975, False), ("vsock:port=976:privileged=1", 976, True),
     ("vsock:976:privileged=no", 976, False)],
)
def test_vsock_client_endpoint_strings(description: str, port: int, privileged: bool) -> None:
    # Parsed only: nothing here connects (a real vsock connect refuses outside VMware anyway).
    from twisted.internet.endpoints import clientFromString

    endpoint = clientFromString(Clock(), description)
    assert isinstance(endpoint, vsock.VsockEndpoint)
    assert (endpoint.port, endpoint.privileged) == (port, privileged)


@pytest.mark.parametrize(
    ("description", "message"),
    [("vsock:", "port number"), ("vsock:abc", "port number"), ("vsock:4294967296", "port number"),
     ("vsock:1:2", "one port"), ("vsock:1:cid=3", "not cid"), ("vsock:1:privileged=maybe", "1 or 0")],
)
def test_bad_vsock_client_endpoint_strings(description: str, message: str) -> None:
    from twisted.internet.endpoints import clientFromString

    with pytest.raises(ValueError, match=message):
        clientFromString(Clock(), description)


@pytest_twisted.ensureDeferred
async def test_a_parsed_vsock_endpoint_connects_through_its_connector() -> None:
    connector = PairConnector()
    endpoint = vsock.parse_vsock_client(reactor, "975", connector=connector)
    protocol = await endpoint.connect(Factory.forProtocol(Protocol))
    peer = await connector.peers[TCLO_PORT].get()
    assert protocol.transport.getPeer() == vsock.VsockAddress(vsock.HYPERVISOR_CID, TCLO_PORT)  # type: ignore[attr-defined]
    protocol.transport.loseConnection()  # type: ignore[attr-defined]
    del peer
