"""Running the Vix file operations as the authenticated user, without blocking the reactor.

As the service's own user, an operation runs in the reactor's thread pool
(the functions only touch the file system).  As anyone else it runs in a
helper process (`twisted_vmtools.guest.fileops_helper`) that drops to that
user before reading the request: the service's identity, shared by all its
threads, never changes.
"""

from __future__ import annotations

import os
import sys

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

import twisted_vmtools

from ..codecs import vix
from . import fileops
from .accounts import GuestUser
from .vix_errors import VixOperationError

HELPER = "twisted_vmtools.guest.fileops_helper"
MAX_HELPER_OUTPUT = vix.MAX_MESSAGE


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
    """The default: a thread for the service's own user, a helper process for any other."""

    def __init__(self, reactor: object) -> None:
        self.reactor = reactor

    def run(self, op: int, body: vix.Body, user: GuestUser) -> Deferred[bytes]:
        if user.is_service_user:
            pool = self.reactor.getThreadPool()  # type: ignore[attr-defined]
            return deferToThreadPool(self.reactor, pool, fileops.perform, op, body)  # type: ignore[arg-type]
        if os.geteuid() != 0:
            failed: Deferred[bytes] = Deferred()
            failed.errback(VixOperationError(vix.VixCode.GUEST_USER_PERMISSIONS,
                                             f"the tools do not run as root: cannot act as {user.name}"))
            return failed
        return self._helper(op, body, user)

    def _helper(self, op: int, body: vix.Body, user: GuestUser) -> Deferred[bytes]:
        protocol = _HelperProtocol(b"%d " % op + body.encode())
        argv = [sys.executable, "-m", HELPER, str(user.uid), str(user.gid), user.home] + [str(g) for g in user.groups]
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(twisted_vmtools.__file__)))
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join([package_root] + sys.path[1:]),
               "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
        self.reactor.spawnProcess(protocol, sys.executable, argv, env=env, path="/")  # type: ignore[attr-defined]
        return protocol.done


class _HelperProtocol(ProcessProtocol):
    def __init__(self, request: bytes) -> None:
        self.request = request
        self.out = bytearray()
        self.err = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(self.request)  # type: ignore[union-attr]
        self.transport.closeStdin()  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        if len(self.out) + len(data) <= MAX_HELPER_OUTPUT:
            self.out += data

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self.err = (self.err + data)[-4096:]

    def processEnded(self, reason: Failure) -> None:  # noqa: N802
        try:
            reply = vix.decode_reply(bytes(self.out), binary=True)
        except vix.VixCodecError:
            text = self.err.decode("utf-8", "replace").strip()
            self.done.errback(VixOperationError(vix.VixCode.FAIL, f"file operation helper failed: {text}"))
            return
        if reply.ok:
            self.done.callback(reply.result)
        else:
            message = self.err.decode("utf-8", "replace").strip()
            self.done.errback(VixOperationError(reply.error, message, reply.additional_error))
