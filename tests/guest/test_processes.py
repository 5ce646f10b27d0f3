"""The process manager: Python functions as processes (in memory), OS programs (real, slow)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from tests.support import result_of
from twisted_vmtools.codecs.vix import VixCode
from twisted_vmtools.guest.accounts import GuestUser
from twisted_vmtools.guest.processes import (
    KILLED_EXIT_CODE,
    REAP_AFTER,
    InputStream,
    OutputStream,
    ProcessManager,
    PythonProcess,
    StartRequest,
)
from twisted_vmtools.guest.vix_errors import VixOperationError

ME = GuestUser.current()


def test_python_function_as_a_process() -> None:
    clock = Clock()
    clock.advance(1000)
    manager = ProcessManager(clock, now=clock.seconds)

    async def shout(process: PythonProcess) -> int:
        data = await process.stdin.read()
        process.stdout.write(data.upper() + process.arguments.encode())
        process.stderr.write(b"done")
        return 7

    manager.register("shout", shout)
    record = manager.start(StartRequest("shout", "!"), ME)
    assert record.running and record.pid > int(Path("/proc/sys/kernel/pid_max").read_text())  # never a real pid
    assert record.io is not None
    record.io.stdin.write(b"hello ")
    clock.advance(5)
    record.io.stdin.write(b"world")
    record.io.stdin.close()
    ended = result_of(record.when_ended())
    assert (ended.exit_code, ended.end_time, ended.start_time) == (7, 1005, 1000)
    assert record.io.stdout.read() == b"HELLO WORLD!" and record.io.stderr.read() == b"done"
    info = result_of(manager.list((record.pid,)))
    assert [(i.pid, i.cmd, i.name, i.exit_code, i.end_time) for i in info] == [
        (record.pid, "shout", "shout !", 7, 1005)]
    clock.advance(REAP_AFTER)
    assert manager.get(record.pid) is None


def test_killing_a_python_process_cancels_it() -> None:
    clock = Clock()
    manager = ProcessManager(clock, now=clock.seconds)
    cancelled: list[bool] = []

    async def forever(process: PythonProcess) -> int:
        try:
            await Deferred()
        except BaseException:
            cancelled.append(True)
            raise
        return 0

    manager.register("forever", forever)
    record = manager.start(StartRequest("forever"), ME)
    manager.kill(record.pid, ME)
    assert cancelled == [True] and record.exit_code == KILLED_EXIT_CODE
    with pytest.raises(VixOperationError) as caught:
        manager.kill(record.pid, ME)
    assert caught.value.code == VixCode.NO_SUCH_PROCESS


def test_a_failing_function_reports_on_stderr() -> None:
    clock = Clock()
    manager = ProcessManager(clock, now=clock.seconds)

    def broken(process: PythonProcess) -> int:
        raise RuntimeError("boom")

    manager.register("broken", broken)
    record = manager.start(StartRequest("broken"), ME)
    assert record.exit_code == 1 and record.io is not None and b"boom" in record.io.stderr.read()


def test_streams() -> None:
    out = OutputStream(limit=4)
    out.write(b"abcdef")
    assert (out.read(2), out.read(), out.dropped) == (b"ab", b"cd", 2)
    stream = InputStream()
    reading = Deferred.fromCoroutine(stream.read(3))
    assert not reading.called
    stream.write(b"xy")
    assert result_of(reading) == b"xy"
    stream.close()
    assert result_of(Deferred.fromCoroutine(stream.read())) == b""


def test_checks_before_spawning(tmp_path: Path) -> None:
    manager = ProcessManager(Clock())
    for request, code in [
        (StartRequest("/no/such/program"), VixCode.FILE_NOT_FOUND),
        (StartRequest("relative"), VixCode.FILE_NOT_FOUND),
        (StartRequest("/bin/true", working_directory=str(tmp_path / "nope")), VixCode.NOT_A_DIRECTORY),
    ]:
        with pytest.raises(VixOperationError) as caught:
            manager.start(request, ME)
        assert caught.value.code == code


def test_kill_refusals() -> None:
    manager = ProcessManager(Clock())
    for pid, code in [(os.getpid(), VixCode.GUEST_USER_PERMISSIONS), (2**40, VixCode.NO_SUCH_PROCESS)]:
        with pytest.raises(VixOperationError) as caught:
            manager.kill(pid, ME)
        assert caught.value.code == code


def test_lists_other_guest_processes() -> None:
    manager = ProcessManager(Clock())
    [me] = result_of(manager.list((os.getpid(),)))
    # The kernel's name for this process: "python3…" under `python -m pytest`, "pytest" under the script.
    with open("/proc/self/comm") as comm:
        name = comm.read().strip()
    assert me.pid == os.getpid() and me.cmd == name and me.owner == ME.name
    assert len(result_of(manager.list())) > 1


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_program_exit_code_and_end_time(tmp_path: Path) -> None:
    manager = ProcessManager(global_reactor)
    marker = tmp_path / "out"
    record = manager.start(StartRequest("/bin/sh", f"-c 'pwd > {marker}; echo $FOO >> {marker}; exit 3'",
                                        str(tmp_path), {"FOO": "bar"}), ME)
    assert record.pid > 0 and manager.get(record.pid) is record
    await record.when_ended()
    assert record.exit_code == 3 and record.end_time is not None
    assert marker.read_text().split() == [str(tmp_path), "bar"]
    [info] = await manager.list((record.pid,))
    assert (info.exit_code, info.cmd) == (3, "sh")


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_kill_a_long_running_program() -> None:
    manager = ProcessManager(global_reactor)
    record = manager.start(StartRequest("/bin/sleep", "30"), ME)
    manager.kill(record.pid, ME)
    await record.when_ended()
    assert record.exit_code == KILLED_EXIT_CODE


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_the_environment_is_clean(tmp_path: Path) -> None:
    os.environ["VIX_TEST_LEAK"] = "leaked"
    try:
        manager = ProcessManager(global_reactor)
        out = tmp_path / "env"
        record = manager.start(StartRequest("/usr/bin/env", f"> {out}"), ME)
        await record.when_ended()
    finally:
        del os.environ["VIX_TEST_LEAK"]
    names = {line.split("=", 1)[0] for line in out.read_text().splitlines()}
    assert {"HOME", "USER", "PATH"} <= names and "VIX_TEST_LEAK" not in names
    assert sys.executable  # the service's own environment stays as it was


def test_a_working_directory_the_user_may_not_enter_is_refused(tmp_path: Path) -> None:
    # Twisted enters the directory before dropping to the user: the manager checks it as the user.
    locked = tmp_path / "locked"
    (locked / "inner").mkdir(parents=True)
    locked.chmod(0o700)
    stranger = GuestUser("stranger", 54321, 54321, (54321,), "/", "/bin/sh")
    manager = ProcessManager(Clock())
    with pytest.raises(VixOperationError) as caught:
        manager.start(StartRequest("/bin/true", working_directory=str(locked / "inner")), stranger)
    assert caught.value.code == VixCode.FILE_ACCESS_ERROR


def test_another_user_needs_a_root_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    stranger = GuestUser("stranger", 54321, 54321, (54321,), "/", "/bin/sh")
    with pytest.raises(VixOperationError) as caught:
        ProcessManager(Clock()).start(StartRequest("/bin/true"), stranger)
    assert caught.value.code == VixCode.GUEST_USER_PERMISSIONS
