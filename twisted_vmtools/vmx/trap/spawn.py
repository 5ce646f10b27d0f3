"""Twisted glue: run a trapped program without blocking the reactor.

The engine needs a thread of its own for the whole run (ptrace requests must
come from the attaching thread, and the tracer blocks in waitpid), so it gets
a dedicated thread rather than one of the reactor's pool threads, which it
would occupy for the program's lifetime.

The host's `IBackdoorHost` methods are called in that tracer thread.  A host
whose state belongs to the reactor must marshal the calls itself, e.g. with
`twisted.internet.threads.blockingCallFromThread(reactor, ...)`; the traced
thread stays stopped meanwhile, as it would inside the real instruction.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

from .engine import TrapEngine, TrapStatistics
from .interfaces import IBackdoorHost


class TrappedProgram:
    """A program running under the trap engine.

    `ended` fires (in the reactor thread) with the exit status (128+signal if
    it was killed), or fails with the engine's exception.
    """

    log = Logger(namespace="twisted_vmtools.vmx.trap")

    def __init__(self, reactor: Any, engine: TrapEngine, argv: Sequence[str | bytes]) -> None:
        self._reactor: IReactorFromThreads = reactor
        self.engine = engine
        self.argv = list(argv)
        self.ended: Deferred[int] = Deferred()
        self._shutdown_trigger = reactor.addSystemEventTrigger("before", "shutdown", self._on_shutdown)
        self._thread = threading.Thread(target=self._run, name="trap-engine", daemon=True)
        self._thread.start()

    @property
    def statistics(self) -> TrapStatistics:
        return self.engine.statistics

    def terminate(self) -> None:
        """SIGTERM the whole tree, SIGKILL after the engine's grace period."""
        self.engine.terminate()

    def _run(self) -> None:
        try:
            status = self.engine.run(self.argv)
        except BaseException:
            failure = Failure()
            self._reactor.callFromThread(self._finish, failure)
        else:
            self._reactor.callFromThread(self._finish, status)

    def _finish(self, result: int | Failure) -> None:
        reactor: Any = self._reactor
        if self._shutdown_trigger is not None:
            reactor.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None
        if isinstance(result, Failure):
            self.ended.errback(result)
        else:
            self.ended.callback(result)

    def _on_shutdown(self) -> Deferred[None]:
        # Don't let the reactor stop with the program still running.
        self._shutdown_trigger = None
        self.terminate()
        waiting: Deferred[None] = Deferred()

        def ended(result: object) -> object:
            waiting.callback(None)
            return result

        self.ended.addBoth(ended)
        return waiting


def spawn_trapped(reactor: Any, host: IBackdoorHost, argv: Sequence[str | bytes], **options: Any) -> TrappedProgram:
    """Start `argv` under a `TrapEngine(host, **options)` in a dedicated thread.

    `host` provides `IBackdoorHost`; its methods run in the tracer thread.
    """
    return TrappedProgram(reactor, TrapEngine(host, **options), argv)
