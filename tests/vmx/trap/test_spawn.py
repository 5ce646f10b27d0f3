"""The Twisted wrapper: a dedicated tracer thread, results in the reactor thread."""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Callable
from typing import Any

import pytest

from twisted_vmtools.vmx.trap.spawn import spawn_trapped

pytestmark = pytest.mark.slow  # processes: see pyproject.toml's markers


class ThreadReactor:
    """Just what `TrappedProgram` uses of a reactor; callFromThread queues."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.Queue()
        self.triggers: dict[int, Callable[[], Any]] = {}
        self.thread = threading.current_thread()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:  # noqa: N802
        self.calls.put((f, args))

    def addSystemEventTrigger(self, phase: str, event: str, f: Callable[[], Any]) -> int:  # noqa: N802
        assert (phase, event) == ("before", "shutdown")
        self.triggers[id(f)] = f
        return id(f)

    def removeSystemEventTrigger(self, trigger: int) -> None:  # noqa: N802
        del self.triggers[trigger]

    def run_one(self, timeout: float = 20) -> None:
        f, args = self.calls.get(timeout=timeout)
        f(*args)


def test_ended_fires_in_the_reactor_thread(programs, host, output):
    reactor = ThreadReactor()
    seen: list[tuple[int, threading.Thread]] = []
    program = spawn_trapped(reactor, host, [programs.trapped, "getversion"], stdout=output[0])
    program.ended.addCallback(lambda status: seen.append((status, threading.current_thread())))
    reactor.run_one()
    assert seen == [(0, reactor.thread)]
    assert program.statistics.low_bandwidth == 2
    assert not reactor.triggers  # the shutdown trigger is gone with the program


def test_terminate_and_shutdown(programs, host, output):
    reactor = ThreadReactor()
    program = spawn_trapped(reactor, host, [programs.trapped, "sleep"], stdout=output[0])
    (shutdown,) = reactor.triggers.values()
    waiting = shutdown()  # the reactor stopping terminates the program
    done: list[object] = []
    waiting.addCallback(done.append)
    reactor.run_one()
    assert done == [None]
    assert program.ended.result == 128 + signal.SIGTERM


def test_engine_errors_fail_ended(host):
    reactor = ThreadReactor()
    program = spawn_trapped(reactor, host, [])  # empty argv: ValueError in run
    failures: list[Any] = []
    program.ended.addErrback(failures.append)
    reactor.run_one()
    with pytest.raises(ValueError):
        failures[0].raiseException()
