"""Bad control input costs a bounded amount of memory and one log line per peer, never a traceback."""

from __future__ import annotations

import struct
from typing import cast

import pytest
from twisted.internet.interfaces import IAddress
from twisted.logger import ILogObserver, Logger, LogPublisher, globalLogPublisher

from tests.support import Harness
from tests.vmx.peers import RawPeer, connect_raw
from tests.vmx.test_control import call, control
from twisted_vmtools.codecs.stream import StreamKind
from twisted_vmtools.vmx.control import MAX_BOX_BYTES, ControlServer, Status
from twisted_vmtools.vmx.ratelimit import RateLimitedLog
from twisted_vmtools.vmx.stream import PreambleRouter

CTRL = StreamKind.CONTROL.preamble


def amp_string(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


class Watched:
    """A harness whose control servers log into ``lines``, and are kept for inspection."""

    def __init__(self) -> None:
        self.harness = Harness()
        self.harness.start()
        self.lines: list[dict[str, object]] = []
        publisher = LogPublisher(cast(ILogObserver, self.lines.append))
        self.log = RateLimitedLog(Logger(observer=publisher), clock=lambda: 0.0)
        self.servers: list[ControlServer] = []
        factory = self.harness.endpoint.server_factory

        def make() -> ControlServer:
            server = ControlServer(self.harness.vmx, self.log)
            self.servers.append(server)
            return server

        factory._control = make  # type: ignore[attr-defined]

    def peer(self, data: bytes) -> RawPeer:
        peer = connect_raw(self.harness, CTRL)
        peer.write(data)
        self.harness.settle()
        return peer

    def tracebacks(self) -> list[dict[str, object]]:
        return [e for e in self.lines + everywhere if "log_failure" in e]


everywhere: list[dict[str, object]] = []  # what reached the global log (AMP's own tracebacks go there)


@pytest.fixture(autouse=True)
def global_log() -> object:
    observer = cast(ILogObserver, everywhere.append)
    everywhere.clear()
    globalLogPublisher.addObserver(observer)
    yield
    globalLogPublisher.removeObserver(observer)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00",  # an empty box
        b"\x00\x03abc\x00\x01x\x00\x00",  # a box that is no command
        b"\x00\x08_command\x00\x04Nope\x00\x04_ask\x00\x011\x00\x00",  # unknown command
        b"\x00\x08_command\x00\x06RPCLog\x00\x04_ask\x00\x011\x00\x04last\x00\x03abc\x00\x00",  # bad integer
        b"\x00\x08_command\x00\x06Status\x00\x04_ask\x00\x011\x00\x00" * 0 + b"\xff\xff" + b"x" * 18,  # key too long
    ],
)
def test_bad_input_is_one_line_and_no_traceback(garbage: bytes) -> None:
    watched = Watched()
    watched.peer(garbage)
    assert watched.tracebacks() == []
    assert len(watched.lines) <= 1
    assert call(watched.harness, control(watched.harness), Status)  # the next client is served


def test_many_bad_peers_are_rate_limited() -> None:
    watched = Watched()
    for _ in range(100):
        watched.peer(b"\x00\x00").close()
    watched.harness.settle()
    assert 1 <= len(watched.lines) <= 11 and watched.tracebacks() == []


def test_an_unterminated_box_is_bounded_and_freed() -> None:
    watched = Watched()
    value = amp_string(b"v" * 60_000)
    peer = connect_raw(watched.harness, CTRL)
    sent = 0
    for index in range(200):  # 12 MB of one box that never ends
        peer.write(amp_string(b"k%d" % index) + value)
        sent += 60_000
        watched.harness.settle()
        if peer.lost:
            break
    assert peer.lost and sent <= MAX_BOX_BYTES + 120_000
    (server,) = watched.servers
    assert server._currentBox is None and server._unprocessed == b""
    assert server.boxReceiver is None and server.locator is None  # no self-reference keeps it alive


def test_the_router_lets_go_of_a_closed_control_channel() -> None:
    watched = Watched()
    routers: list[PreambleRouter] = []
    factory = watched.harness.endpoint.server_factory
    build = factory.buildProtocol

    def keep(addr: IAddress | None) -> PreambleRouter:
        router = build(addr)
        assert isinstance(router, PreambleRouter)
        routers.append(router)
        return router

    factory.buildProtocol = keep  # type: ignore[method-assign]
    watched.peer(b"\x00\x00")
    assert routers and routers[0]._next is None


def test_a_flood_of_malformed_packets_costs_a_few_log_lines() -> None:
    harness = Harness()
    harness.start()
    before = len(everywhere)
    rpci = connect_raw(harness, StreamKind.RPCI.preamble)
    garbage = b"\x00\x00\x00\x08" + b"\x00\x00\x00\x09\x00\x00\x00\x01"  # a frame whose DataMap is garbage
    for _ in range(10):
        rpci.write(garbage * 100)
        harness.settle()
    assert len(rpci.packets) == 1000 and all(p.payload == b"0 malformed packet" for p in rpci.packets)
    for _ in range(50):  # and as many refused second TCLO channels
        connect_raw(harness, StreamKind.TCLO.preamble)
    lines = [e for e in everywhere[before:] if str(e.get("log_namespace", "")).startswith("twisted_vmtools.vmx")]
    assert len(lines) <= 12, [e.get("log_format") for e in lines]
