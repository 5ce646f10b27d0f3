"""Running the Vix file operations as the authenticated user, without blocking the reactor.

As the service's own user, an operation runs in the reactor's thread pool
(the functions only touch the file system).  As anyone else it runs in that
user's helper process (`twisted_vmtools.guest.fileops_helper`), which drops
to the user before reading any request and serves them until it has been
idle a while: the service's identity, shared by all its threads, never
changes, and a user's operations cost a frame each, not a process each.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

import twisted_vmtools

from ..codecs import vix
from . import fileops
from .accounts import GuestUser
from .fileops_helper import FRAME
from .vix_errors import VixOperationError

HELPER = "twisted_vmtools.guest.fileops_helper"
MAX_HELPER_OUTPUT = vix.MAX_MESSAGE
HELPER_IDLE = 30.0  # seconds a user's helper waits for the next operation before it leaves
MAX_HELPERS = 16  # users with a helper at once


class IFileOperationRunner(Interface):
    def run(op: int, body: vix.Body, user: GuestUser) -> Deferred[bytes]:
        """Perform file operation ``op`` as ``user``: the result bytes, or a `VixOperationError` failure."""


@implementer(IFileOperationRunner)
class InlineRunner:
    """Runs operations synchronously in the caller, as the service's user (tests, and ``--auth none`` embedding)."""

    def run(self, op: int, body: vix.Body, user: GuestUser) -> Deferred[bytes]:
        from twisted.internet.defer import maybeDeferred

        return maybeDeferred(fileops.perform, op, body)


@implementer(IFileOperationRunner)
class FileOperationRunner:
    """The default: a thread for the service's own user, a helper process per other user.

    A user's helper serves their operations in order and is asked to leave
    after `HELPER_IDLE` quiet seconds; at most `MAX_HELPERS` run at once (the
    longest idle one leaves first).
    """

    def __init__(self, reactor: object) -> None:
        self.reactor = reactor
        self._helpers: dict[int, _HelperProtocol] = {}

    def run(self, op: int, body: vix.Body, user: GuestUser) -> Deferred[bytes]:
        if user.is_service_user:
            pool = self.reactor.getThreadPool()  # type: ignore[attr-defined]
            return deferToThreadPool(self.reactor, pool, fileops.perform, op, body)  # type: ignore[arg-type]
        if os.geteuid() != 0:
            failed: Deferred[bytes] = Deferred()
            failed.errback(VixOperationError(vix.VixCode.GUEST_USER_PERMISSIONS,
                                             f"the tools do not run as root: cannot act as {user.name}"))
            return failed
        return self._helper(user).request(b"%d " % op + body.encode())

    def _helper(self, user: GuestUser) -> _HelperProtocol:
        helper = self._helpers.pop(user.uid, None)
        if helper is not None:
            if helper.user == user and helper.alive:
                self._helpers[user.uid] = helper
                return helper
            helper.leave()  # the account changed (groups, home): a fresh helper for it
        while len(self._helpers) >= MAX_HELPERS:
            self._helpers.pop(min(self._helpers, key=lambda uid: self._helpers[uid].last_used)).leave()
        helper = _HelperProtocol(self.reactor, user, on_gone=self._gone)
        argv, env = helper_command(HELPER, user)
        self.reactor.spawnProcess(helper, sys.executable, argv, env=env, path="/")  # type: ignore[attr-defined]
        self._helpers[user.uid] = helper
        return helper

    def _gone(self, helper: _HelperProtocol) -> None:
        if self._helpers.get(helper.user.uid) is helper:
            del self._helpers[helper.user.uid]

    def stop(self) -> None:
        """Ask every helper to leave (the service stops)."""
        for helper in list(self._helpers.values()):
            helper.leave()
        self._helpers.clear()


def helper_command(module: str, user: GuestUser) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of a helper ``module`` that becomes ``user`` (uid gid home groups…).

    ``-S`` and an explicit PYTHONPATH: the helper starts fast and imports this
    very package, not whatever a site directory would put first.
    """
    argv = [sys.executable, "-S", "-m", module, str(user.uid), str(user.gid), user.home]
    argv += [str(g) for g in user.groups]
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(twisted_vmtools.__file__)))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join([package_root] + sys.path[1:]),
           "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
    return argv, env


class _HelperProtocol(ProcessProtocol):
    """One user's helper: framed requests out, framed answers back, in order."""

    def __init__(self, reactor: object, user: GuestUser, *, on_gone: Callable[[_HelperProtocol], None]) -> None:
        self.reactor = reactor
        self.user = user
        self.on_gone = on_gone
        self.alive = True
        self.last_used = reactor.seconds()  # type: ignore[attr-defined]
        self._buffer = bytearray()
        self._pending: deque[Deferred[bytes]] = deque()
        self._errors = bytearray()
        self._idle: IDelayedCall | None = None

    def request(self, payload: bytes) -> Deferred[bytes]:
        answer: Deferred[bytes] = Deferred()
        self._pending.append(answer)
        self._cancel_idle()
        self.last_used = self.reactor.seconds()  # type: ignore[attr-defined]
        self.transport.write(FRAME.pack(len(payload)) + payload)  # type: ignore[union-attr]
        return answer

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self._buffer += data
        while len(self._buffer) >= FRAME.size:
            (length,) = FRAME.unpack_from(self._buffer)
            if length > MAX_HELPER_OUTPUT or not self._pending:
                self.leave()  # a helper that answers what was not asked is not trusted further
                return
            if len(self._buffer) < FRAME.size + length:
                return
            frame = bytes(self._buffer[FRAME.size : FRAME.size + length])
            del self._buffer[: FRAME.size + length]
            self._answered(self._pending.popleft(), frame)
        if not self._pending:
            self._idle = self.reactor.callLater(HELPER_IDLE, self.leave)  # type: ignore[attr-defined]

    def _answered(self, answer: Deferred[bytes], frame: bytes) -> None:
        try:
            reply = vix.decode_reply(frame, binary=True)
        except vix.VixCodecError as error:
            answer.errback(VixOperationError(vix.VixCode.FAIL, f"file operation helper: {error}"))
            return
        if reply.ok:
            answer.callback(reply.result)
        else:
            message = reply.result.decode("utf-8", "replace")
            answer.errback(VixOperationError(reply.error, message, reply.additional_error))

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self._errors = (self._errors + data)[-4096:]

    def _cancel_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def leave(self) -> None:
        """Close the helper's stdin: it finishes what it was asked, then exits; no new requests."""
        self._cancel_idle()
        if self.alive and self.transport is not None:
            self.alive = False
            self.transport.closeStdin()  # type: ignore[attr-defined]

    def processEnded(self, reason: Failure) -> None:  # noqa: N802
        self.alive = False
        self._cancel_idle()
        self.on_gone(self)
        text = self._errors.decode("utf-8", "replace").strip()
        while self._pending:
            self._pending.popleft().errback(
                VixOperationError(vix.VixCode.FAIL, f"file operation helper ended: {text or reason.getErrorMessage()}"))
