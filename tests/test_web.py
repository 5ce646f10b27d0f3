"""`GuestAgent`: treq to a twisted.web server on 127.0.0.1 reached only through the simulated VMX.

The simulator and `twistd vmtools` run as real processes over a Unix socket;
the guest's ``http.RoundTrip`` makes the connection, the test process only
talks to the simulator's control socket.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.web.client import (
    ContentDecoderAgent,
    CookieAgent,
    GzipDecoder,
    RedirectAgent,
    ResponseNeverReceived,
    readBody,
)
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, GzipEncoderFactory, Request, Site
from twisted.web.util import Redirect

from tests.processes import REPO, TWISTD, running, simulated_guest, start_simulator, stop, wait_for
from twisted_vmtools.web import (
    GuestAgent,
    GuestRoundTripFailed,
    GuestRoundTripTimeout,
    UnsupportedScheme,
    connect_guest_operations,
)

pytestmark = pytest.mark.slow
LOGIN = ("anyone", "anything")


class Echo(Resource):
    isLeaf = True

    def render_POST(self, request: Request) -> bytes:  # noqa: N802
        body = request.content.read()  # type: ignore[union-attr]
        return b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())


class Chunked(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> int:  # noqa: N802
        for n in range(5):
            request.write(b"piece %d;" % n)  # no Content-Length: chunked
        request.finish()
        return NOT_DONE_YET


class RawChunked(Protocol):
    """A server that answers chunked whatever the request says (twisted.web does not chunk a closing reply)."""

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if b"\r\n\r\n" in data:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                                 + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in PIECES) + b"0\r\n\r\n")
            self.transport.loseConnection()


PIECES = [b"piece %d;" % n for n in range(5)] + [b"x" * 100_000]


class Hang(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []

    def render_GET(self, request: Request) -> int:  # noqa: N802
        self.requests.append(request)
        return NOT_DONE_YET


class Cookie(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        seen = request.getCookie(b"visit")
        request.addCookie(b"visit", b"yes", path=b"/")
        return b"seen " + (seen or b"nothing")


class Text(Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        request.setHeader(b"content-type", b"text/plain")
        return self.body


class Root(Resource):
    """The site's root: an unknown path is a 404 page (Resource's own default is deprecated)."""

    def getChild(self, path: bytes, request: Any) -> Any:  # noqa: N802 (Resource's name)
        return notFound()


def site(hang: Hang) -> Site:
    from twisted.web.resource import EncodingResourceWrapper

    root = Root()
    root.putChild(b"hello", Text(b"hello from the guest"))
    root.putChild(b"echo", Echo())
    root.putChild(b"chunked", Chunked())
    root.putChild(b"redirect", Redirect(b"/hello"))
    root.putChild(b"gzip", EncodingResourceWrapper(Text(b"squeeze " * 1000), [GzipEncoderFactory()]))
    root.putChild(b"hang", hang)
    root.putChild(b"cookie", Cookie())
    return Site(root)


@pytest.fixture(scope="module")
def vmx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("web")
    with simulated_guest(base, "--auth", "none", log=base / "vmx.log") as path:
        yield path


@pytest.fixture
def server() -> Iterator[tuple[str, Hang]]:
    hang = Hang()
    port: Any = reactor.listenTCP(0, site(hang), interface="127.0.0.1")  # type: ignore[attr-defined,arg-type]
    try:
        yield f"http://127.0.0.1:{port.getHost().port}", hang
    finally:
        for request in hang.requests:
            if not request.finished and request.channel is not None:
                request.channel.transport.abortConnection()  # type: ignore[union-attr]
        port.stopListening()


async def agent(vmx: Path, **options: Any) -> GuestAgent:
    ops = await connect_guest_operations(reactor, str(vmx), login=LOGIN)
    return GuestAgent(reactor, ops, **options)


@pytest_twisted.ensureDeferred
async def test_get_post_chunked_404(vmx: Path, server: tuple[str, Hang]) -> None:
    url, _ = server
    client = HTTPClient(await agent(vmx))
    response = await client.get(url + "/hello")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"text/plain"]
    assert await treq.content(response) == b"hello from the guest"

    body = bytes(range(256)) * (10 * 4096)  # 10 MiB
    response = await client.post(url + "/echo", data=body)
    assert await response.content() == b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())

    raw: Any = reactor.listenTCP(0, Factory.forProtocol(RawChunked), interface="127.0.0.1")  # type: ignore[attr-defined,arg-type]
    try:
        response = await client.get(f"http://127.0.0.1:{raw.getHost().port}/")
        assert response.length == UNKNOWN_LENGTH
        assert await readBody(response) == b"".join(PIECES)
    finally:
        await raw.stopListening()
    response = await client.get(url + "/chunked")
    assert await readBody(response) == b"".join(b"piece %d;" % n for n in range(5))

    response = await client.get(url + "/missing")
    assert response.code == 404
    await response.content()


@pytest_twisted.ensureDeferred
async def test_composes_with_redirects_cookies_and_gzip(vmx: Path, server: tuple[str, Hang]) -> None:
    url, _ = server
    guest_agent = await agent(vmx)
    response = await RedirectAgent(guest_agent).request(b"GET", (url + "/redirect").encode())
    assert response.code == 200
    assert await readBody(response) == b"hello from the guest"

    cookies = CookieAgent(guest_agent, CookieJar())
    first = await readBody(await cookies.request(b"GET", (url + "/cookie").encode()))
    second = await readBody(await cookies.request(b"GET", (url + "/cookie").encode()))
    assert (first, second) == (b"seen nothing", b"seen yes")

    decoding = ContentDecoderAgent(guest_agent, [(b"gzip", GzipDecoder)])
    response = await decoding.request(b"GET", (url + "/gzip").encode())
    assert await readBody(response) == b"squeeze " * 1000


@pytest_twisted.ensureDeferred
async def test_refused_inside_the_guest(vmx: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = HTTPClient(await agent(vmx))
    with pytest.raises(GuestRoundTripFailed) as raised:
        await client.get(f"http://127.0.0.1:{port}/")
    assert "refused" in str(raised.value)
    assert raised.value.exit_code == 1


@pytest_twisted.ensureDeferred
async def test_https_is_a_typed_error(vmx: Path) -> None:
    client = HTTPClient(await agent(vmx))
    with pytest.raises(UnsupportedScheme):
        await client.get("https://127.0.0.1:1/")


async def _no_round_trips_left(ops: Any) -> bool:
    listed = await ops.list_processes(ops.default_login)
    return not any(p.cmd == "http.RoundTrip" and not p.end_time for p in listed)


@pytest_twisted.ensureDeferred
async def test_timeout_and_cancel_stop_the_guest_process(vmx: Path, server: tuple[str, Hang]) -> None:
    url, hang = server
    guest_agent = await agent(vmx, timeout=1.5)
    with pytest.raises(GuestRoundTripTimeout):
        await HTTPClient(guest_agent).get(url + "/hang")
    assert len(hang.requests) == 1  # the request reached the server inside the guest

    requesting: Deferred[Any] = guest_agent.request(b"GET", (url + "/hang").encode())
    await _when(lambda: len(hang.requests) == 2)
    requesting.cancel()
    with pytest.raises(ResponseNeverReceived) as cancelled:  # as any Agent's cancelled request
        await requesting
    assert cancelled.value.reasons[0].check(CancelledError)
    # Both guest processes are gone: the server sees its connections close.
    await _when(lambda: all(r.channel is None or r.channel.transport is None or r._disconnected for r in hang.requests))
    assert await _no_round_trips_left(guest_agent.guest_operations)


async def _when(condition: Any, timeout: float = 20.0) -> None:
    from twisted.internet.task import deferLater

    waited = 0.0
    while not condition():
        assert waited < timeout, "condition not reached"
        await deferLater(reactor, 0.05)  # type: ignore[arg-type]
        waited += 0.05


@pytest_twisted.ensureDeferred
async def test_cli_prints_like_curl_i(vmx: Path, server: tuple[str, Hang]) -> None:
    from twisted.internet.utils import getProcessOutputAndValue

    from tests.processes import SIM

    def sim(*args: str) -> Deferred[tuple[bytes, bytes, int]]:
        return getProcessOutputAndValue(SIM[0], [*SIM[1:], "guest", "http", "--socket", str(vmx), "-l", "a:b", *args],
                                        env=dict(os.environ), path=str(REPO))  # type: ignore[arg-type]

    url, _ = server
    out, err, code = await sim("GET", url + "/hello")
    assert code == 0, err
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Type: text/plain" in head
    assert body == b"hello from the guest"
    out, err, code = await sim("POST", url + "/echo", "-d", "abc", "-H", "X-Test: 1")
    assert code == 0, err
    assert out.endswith(b"3 " + hashlib.sha256(b"abc").hexdigest().encode())
    out, err, code = await sim("GET", "https://127.0.0.1:1/")
    assert code == 1 and b"only http://" in err


@pytest.fixture(scope="module")
def trapped_vmx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The guest under the simulator's trap engine, talking to it through the real backdoor instructions."""
    pytest.importorskip("twisted_vmtools._backdoor")
    base = tmp_path_factory.mktemp("web-trapped")
    path = base / "vmx.sock"
    simulator = start_simulator(path, *TWISTD, "vmtools", "--transport", "backdoor", "--guestinfo-interval", "0",
                                "--auth", "none", log=base / "serve.log")
    try:
        wait_for(lambda: running(path), "the trapped tools to run", timeout=90)
        yield path
    finally:
        stop(simulator)


@pytest_twisted.ensureDeferred
async def test_over_the_trapped_backdoor(trapped_vmx: Path, server: tuple[str, Hang]) -> None:
    url, _ = server
    client = HTTPClient(await agent(trapped_vmx))
    response = await client.get(url + "/hello")
    assert (response.code, await response.content()) == (200, b"hello from the guest")
    body = os.urandom(256 * 1024)
    response = await client.post(url + "/echo", data=body)
    assert await response.content() == b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
