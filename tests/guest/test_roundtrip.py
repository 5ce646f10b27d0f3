"""``http.RoundTrip`` in the guest: stdin to a loopback server, its reply to stdout, and how it fails."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from twisted_vmtools.guest.accounts import GuestUser
from twisted_vmtools.guest.processes import ManagedProcess, ProcessManager, StartRequest
from twisted_vmtools.guest.roundtrip import RoundTrip, RoundTripError, parse_address

ME = GuestUser.current()


class Upper(Protocol):
    """Answers once a line has come, then closes (as an HTTP server with Connection: close)."""

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.factory.received += data  # type: ignore[attr-defined]
        if data.endswith(b"\n"):
            assert self.transport is not None
            self.transport.write(self.factory.received.upper() * 1000)  # type: ignore[attr-defined]
            self.transport.loseConnection()


class Silent(Protocol):
    def connectionMade(self) -> None:  # noqa: N802
        self.factory.connections.append(self)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.factory.lost += 1  # type: ignore[attr-defined]


def listen(protocol: type[Protocol]) -> tuple[Any, Any]:
    factory = Factory.forProtocol(protocol)
    factory.received = b""  # type: ignore[attr-defined]
    factory.connections = []  # type: ignore[attr-defined]
    factory.lost = 0  # type: ignore[attr-defined]
    return reactor.listenTCP(0, factory, interface="127.0.0.1"), factory  # type: ignore[attr-defined,arg-type]


def start(manager: ProcessManager, argument: str, name: str = "http.RoundTrip") -> ManagedProcess:
    return manager.start(StartRequest(name, argument), ME)


@pytest_twisted.ensureDeferred
async def test_stdin_to_the_server_and_its_reply_to_stdout() -> None:
    port, _ = listen(Upper)
    try:
        manager = ProcessManager(reactor)
        process = start(manager, f"127.0.0.1:{port.getHost().port}")
        assert process.io is not None
        process.io.stdin.write(b"get me\n")
        process.io.stdin.close()
        ended = await process.when_ended()
        assert ended.exit_code == 0
        assert process.io.stdout.read() == b"GET ME\n" * 1000
        manager.stop()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_refused_is_exit_1_with_a_message() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    manager = ProcessManager(reactor)
    process = start(manager, f"127.0.0.1:{free}")
    ended = await process.when_ended()
    assert ended.exit_code == 1 and process.io is not None
    message = process.io.stderr.read()
    assert message.startswith(f"http.RoundTrip: cannot connect to 127.0.0.1:{free}".encode()) and b"refused" in message
    manager.stop()


@pytest_twisted.ensureDeferred
async def test_a_silent_server_times_out() -> None:
    port, factory = listen(Silent)
    try:
        manager = ProcessManager(reactor)
        manager.register("quick.RoundTrip", RoundTrip(reactor, timeout=0.3))
        address = f"127.0.0.1:{port.getHost().port}"
        process = start(manager, address, "quick.RoundTrip")
        assert (await process.when_ended()).exit_code == 1 and process.io is not None
        assert process.io.stderr.read() == b"http.RoundTrip: no reply within 0.3 s\n"
        while not factory.lost:  # type: ignore[attr-defined]  # the connection was dropped
            await _tick()

        manager.stop()
    finally:
        await port.stopListening()


async def _tick() -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, 0.01)  # type: ignore[arg-type]


@pytest.mark.parametrize("argument", ["", "host", "host:", ":80", "h:0", "h:65536", "h:x", "http://h:80"])
def test_bad_arguments(argument: str) -> None:
    with pytest.raises(RoundTripError):
        parse_address(argument)


def test_addresses() -> None:
    assert parse_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_address("[::1]:80") == ("::1", 80)
    assert parse_address("localhost:1") == ("localhost", 1)
