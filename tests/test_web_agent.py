"""`GuestAgent` over an in-memory `IGuestOperations`, on a Clock: the round trip's steps, errors and timeouts."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.web.client import FileBodyProducer, RedirectAgent, readBody
from twisted.web.http_headers import Headers
from zope.interface import implementer

from tests.support import failure_of, result_of
from twisted_vmtools.codecs.vix import FileInfo, ProcessInfo, VixCode
from twisted_vmtools.vmx.guest_operations import FileTransferInformation, GuestOperationError, IGuestOperations
from twisted_vmtools.web import GuestAgent, GuestRoundTripFailed, GuestRoundTripTimeout, UnsupportedScheme

PID = 4_200_001
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Guest: yes\r\n\r\nhello"


@implementer(IGuestOperations)
class FakeGuest:
    """Answers as our guest would for one ``http.RoundTrip`` whose server replies ``reply``."""

    def __init__(self, reply: bytes = OK, *, exit_code: int = 0, stderr: bytes = b"", not_ready: int = 0,
                 ends: bool = True) -> None:
        self.reply = reply
        self.exit_code = exit_code
        self.stderr = stderr
        self.not_ready = not_ready  # InitiateFileTransferFromGuest answers CannotAccessFile this many times
        self.ends = ends
        self.started: list[Any] = []
        self.request = b""
        self.terminated: list[int] = []
        self.pending: Deferred[int] | None = None

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)

    def start_program(self, auth: Any, spec: Any) -> Deferred[int]:
        self.started.append(spec)
        return succeed(PID)

    def upload(self, auth: Any, path: str, read: Any, file_attributes: Any = None, overwrite: bool = False
               ) -> Deferred[int]:
        assert path == f"/proc/{PID}/stdin" and overwrite
        while chunk := read(1000):
            self.request += chunk
        return succeed(len(self.request))

    def initiate_file_transfer_from_guest(self, auth: Any, path: str) -> Deferred[FileTransferInformation]:
        if self.not_ready:
            self.not_ready -= 1
            return fail(GuestOperationError(VixCode.FILE_ACCESS_ERROR, "not yet"))
        return succeed(FileTransferInformation(FileInfo(path, size=len(self.reply))))

    def download(self, auth: Any, path: str, write: Any) -> Deferred[int]:
        if path.endswith("/stderr"):
            write(self.stderr)
            return succeed(len(self.stderr))
        for start in range(0, len(self.reply), 7):  # the reply arrives in small pieces
            write(self.reply[start:start + 7])
        if not self.ends:
            self.pending = Deferred()
            return self.pending
        return succeed(len(self.reply))

    def list_processes(self, auth: Any, pids: tuple[int, ...] = ()) -> Deferred[list[ProcessInfo]]:
        end = 1 if self.ends else 0
        return succeed([ProcessInfo(PID, "http.RoundTrip x", "me", 0, "http.RoundTrip", self.exit_code, end)])

    def terminate_process(self, auth: Any, pid: int) -> Deferred[None]:
        self.terminated.append(pid)
        return succeed(None)


def request(guest: FakeGuest, url: bytes = b"http://127.0.0.1:8080/x", body: bytes | None = None,
            **options: Any) -> tuple[Clock, Deferred[Any]]:
    clock = Clock()
    agent = GuestAgent(clock, guest, ("u", "p"), **options)
    producer = FileBodyProducer(_bytes_io(body), cooperator=_Immediate()) if body is not None else None
    d = agent.request(b"POST" if body is not None else b"GET", url, Headers({b"x-test": [b"1"]}), producer)
    clock.advance(0)
    return clock, d


def _bytes_io(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


class _Immediate:
    """A cooperator that runs a task to its end at once (FileBodyProducer's default needs a reactor)."""

    def cooperate(self, iterator: Any) -> Any:
        for _ in iterator:
            pass

        class Task:
            def whenDone(self) -> Deferred[None]:  # noqa: N802
                return succeed(None)

            def pause(self) -> None: ...
            def resume(self) -> None: ...
            def stop(self) -> None: ...

        return Task()


def test_a_get_is_one_round_trip_with_connection_close() -> None:
    guest = FakeGuest()
    clock, d = request(guest)
    response = result_of(d)
    assert (response.code, response.headers.getRawHeaders(b"x-guest")) == (200, [b"yes"])
    assert result_of(readBody(response)) == b"hello"
    (spec,) = guest.started
    assert (spec.program_path, spec.arguments) == ("http.RoundTrip", "127.0.0.1:8080")
    head = guest.request.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"get /x http/1.1\r\n") and b"connection: close" in head and b"x-test: 1" in head
    assert not clock.getDelayedCalls()  # the timeout is cancelled


def test_a_body_is_sent_whole_before_the_round_trip_starts() -> None:
    guest = FakeGuest()
    _, d = request(guest, body=b"z" * 100_000)
    assert result_of(readBody(result_of(d))) == b"hello"
    assert guest.request.endswith(b"\r\n\r\n" + b"z" * 100_000)
    assert b"content-length: 100000" in guest.request.lower()


def test_not_ready_is_asked_again() -> None:
    guest = FakeGuest(not_ready=3)
    clock, d = request(guest)
    for _ in range(10):
        clock.advance(1)
    assert result_of(readBody(result_of(d))) == b"hello"


def test_a_failed_round_trip_carries_the_guests_message() -> None:
    guest = FakeGuest(b"", exit_code=1, stderr=b"http.RoundTrip: cannot connect to 127.0.0.1:8080: refused\n")
    _, d = request(guest)
    error = failure_of(d).value
    assert isinstance(error, GuestRoundTripFailed) and error.exit_code == 1
    assert str(error) == "http.RoundTrip: cannot connect to 127.0.0.1:8080: refused"


def test_https_is_refused_before_anything_starts() -> None:
    guest = FakeGuest()
    _, d = request(guest, b"https://127.0.0.1:8443/")
    assert failure_of(d).check(UnsupportedScheme) and guest.started == []


def test_a_timeout_terminates_the_guest_process() -> None:
    guest = FakeGuest(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", ends=False)
    clock, d = request(guest, timeout=5)
    response = result_of(d)  # the head arrived; the body never completes
    body = readBody(response)
    clock.advance(5)
    assert guest.terminated == [PID]
    assert failure_of(body).value.reasons[0].check(GuestRoundTripTimeout)  # type: ignore[union-attr]


def test_a_timeout_before_the_head_is_the_agents_error() -> None:
    guest = FakeGuest(b"", ends=False)
    clock, d = request(guest, timeout=5)
    clock.advance(5)
    assert failure_of(d).check(GuestRoundTripTimeout) and guest.terminated == [PID]


def test_cancel_terminates_the_guest_process() -> None:
    guest = FakeGuest(b"", ends=False)
    clock, d = request(guest)
    d.cancel()
    clock.advance(0)
    failure_of(d)
    assert guest.terminated == [PID]


def test_redirects_are_followed_through_the_guest() -> None:
    moved = b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:8080/there\r\nContent-Length: 0\r\n\r\n"

    class Redirecting(FakeGuest):
        def upload(self, auth: Any, path: str, read: Any, file_attributes: Any = None,
                   overwrite: bool = False) -> Deferred[int]:
            self.request = b""
            result = super().upload(auth, path, read, file_attributes, overwrite)
            self.reply = OK if self.request.startswith(b"GET /there ") else moved
            return result

    guest = Redirecting()
    clock = Clock()
    d = RedirectAgent(GuestAgent(clock, guest, ("u", "p"))).request(b"GET", b"http://127.0.0.1:8080/here")
    for _ in range(3):
        clock.advance(0)
    assert result_of(readBody(result_of(d))) == b"hello"
    assert len(guest.started) == 2


@pytest.mark.parametrize("url", [b"ftp://127.0.0.1/", b"HTTPS://example.com/"])
def test_other_schemes_are_typed_errors(url: bytes) -> None:
    _, d = request(FakeGuest(), url)
    assert failure_of(d).check(UnsupportedScheme)
