"""/proc over HGFS: a Python function process fed through stdin and read through stdout; procfs files."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.task import Clock
from zope.interface import implementer

from tests.support import failure_of, result_of
from twisted_vmtools.codecs import hgfs
from twisted_vmtools.codecs.hgfs import OpenMode, Status
from twisted_vmtools.guest.hgfs_proc import IProcessTable
from twisted_vmtools.guest.hgfs_server import HGFSServer
from twisted_vmtools.service import default_file_handlers
from twisted_vmtools.vmx.hgfs_client import HGFSClient, HGFSClientError


class Output:
    def __init__(self) -> None:
        self.buffer = bytearray()

    @property
    def size(self) -> int:
        return len(self.buffer)

    def read(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


class Stdin:
    def __init__(self, on_eof: Callable[[bytes], object]) -> None:
        self.data = bytearray()
        self.closed = False
        self.on_eof = on_eof

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.data += data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.on_eof(bytes(self.data))


class FunctionProcess:
    """A Python function run as a process: it gets all of stdin, writes stdout, then ends."""

    def __init__(self, clock: Clock, function: Callable[[bytes], bytes], delay: float = 0.5) -> None:
        self.running = True
        self.stdout, self.stderr = Output(), Output()
        self.stdin = Stdin(lambda data: clock.callLater(delay, self._finish, function(data)))
        self.io = self

    def _finish(self, output: bytes) -> None:
        self.stdout.buffer += output
        self.running = False

    def when_ended(self) -> Deferred[object]:
        raise NotImplementedError  # the handler polls the streams; it does not need this


@implementer(IProcessTable)
class Table(dict):  # type: ignore[type-arg]
    pass


def setup(tmp_path: Path) -> tuple[HGFSClient, Clock, FunctionProcess]:
    clock = Clock()
    process = FunctionProcess(clock, lambda data: data.upper())
    server = HGFSServer(clock, handlers=default_file_handlers(clock, Table({32769: process})))
    client = HGFSClient(lambda p: maybeDeferred(server.packet, p))  # type: ignore[call-overload]
    result_of(ensureDeferred(client.start()))
    return client, clock, process


def settle(clock: Clock, coroutine: Any) -> Deferred[Any]:
    running = ensureDeferred(coroutine)
    for _ in range(2000):
        if running.called:
            break
        clock.advance(0.01)
    return running


def test_stdin_to_stdout_through_a_function_process(tmp_path: Path) -> None:
    client, clock, process = setup(tmp_path)
    data = os.urandom(100_000).hex().encode()
    feed = iter([data[i : i + 70_000] for i in range(0, len(data), 70_000)])
    result_of(settle(clock, client.upload("/proc/32769/stdin", lambda n: next(feed, b""), overwrite=True)))
    assert process.stdin.closed
    assert result_of(settle(clock, client.getattr("/proc/32769/stdout"))).size == hgfs.UNKNOWN_SIZE
    parts: list[bytes] = []
    result_of(settle(clock, client.download("/proc/32769/stdout", parts.append)))  # waits for the output
    assert b"".join(parts) == data.upper()
    assert not process.running
    assert result_of(settle(clock, client.getattr("/proc/32769/stderr"))).size == 0


def test_stream_rules(tmp_path: Path) -> None:
    client, clock, _ = setup(tmp_path)
    for path, mode in (("/proc/32769/stdin", OpenMode.READ_ONLY), ("/proc/32769/stdout", OpenMode.WRITE_ONLY)):
        error = failure_of(settle(clock, client.open(path, mode))).value
        assert isinstance(error, HGFSClientError) and error.status == Status.ACCESS_DENIED
    error = failure_of(settle(clock, client.getattr("/proc/1/stdin-nope"))).value
    assert isinstance(error, HGFSClientError) and error.status == Status.NO_SUCH_FILE_OR_DIR


def test_running_without_output_is_not_an_end(tmp_path: Path) -> None:
    client, clock, _ = setup(tmp_path)
    handle = result_of(settle(clock, client.open("/proc/32769/stdout", OpenMode.READ_ONLY)))
    error = failure_of(settle(clock, client.read(handle, 0, 100))).value
    assert isinstance(error, HGFSClientError) and error.status == Status.SHARING_VIOLATION


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs procfs")
def test_procfs_file_reports_unknown_size_and_reads_whole(tmp_path: Path) -> None:
    client, clock, _ = setup(tmp_path)
    assert result_of(settle(clock, client.getattr("/proc/self/status"))).size == hgfs.UNKNOWN_SIZE
    parts: list[bytes] = []
    result_of(settle(clock, client.download("/proc/self/status", parts.append)))
    assert b"".join(parts).startswith(b"Name:")


def test_stdin_to_stdout_through_the_process_managers_python_function(tmp_path: Path) -> None:
    """The same, with the Vix process manager's own Python function processes."""
    from twisted_vmtools.guest.accounts import GuestUser
    from twisted_vmtools.guest.processes import ProcessManager, PythonProcess, StartRequest

    clock = Clock()
    manager = ProcessManager(clock, now=clock.seconds)

    async def shout(process: PythonProcess) -> int:
        data = await process.stdin.read()
        process.stdout.write(data.upper())
        return 0

    manager.register("shout", shout)
    record = manager.start(StartRequest("shout"), GuestUser.current())
    server = HGFSServer(clock, handlers=default_file_handlers(clock, manager))
    client = HGFSClient(lambda p: maybeDeferred(server.packet, p))  # type: ignore[call-overload]
    result_of(ensureDeferred(client.start()))
    data = os.urandom(200_000).hex().encode()
    feed = iter([data[i : i + 100_000] for i in range(0, len(data), 100_000)])
    stdin = f"/proc/{record.pid}/stdin"
    result_of(settle(clock, client.upload(stdin, lambda n: next(feed, b""), overwrite=True)))
    parts: list[bytes] = []
    result_of(settle(clock, client.download(f"/proc/{record.pid}/stdout", parts.append)))
    assert b"".join(parts) == data.upper()
    assert record.exit_code == 0
