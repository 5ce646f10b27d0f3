"""A Unix socket that is private from its first instant: owner-only (0600), or 0660 for one group.

``bind`` creates the socket file with the process umask's permissions, so
binding at the final path and then ``chmod``ing (what Twisted's own
listener does) leaves a window in which anyone may connect.  Here the socket
is bound in a fresh 0700 directory beside the final path, given its mode and
group there, and only then linked into place; ``link`` refuses to replace
anything, so a file that appeared meanwhile is never clobbered.
"""

from __future__ import annotations

import os
import socket
import tempfile

from twisted.internet import tcp, unix
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

OWNER_ONLY = 0o600
OWNER_AND_GROUP = 0o660
BACKLOG = 50


def bind_private(path: str, group: int | None = None, backlog: int = BACKLOG) -> socket.socket:
    """A listening AF_UNIX socket at ``path``, mode 0600 (0660 and owned by ``group`` if given).

    FileExistsError if something is at ``path`` (clear stale sockets first).
    """
    mode = OWNER_AND_GROUP if group is not None else OWNER_ONLY
    staging = tempfile.mkdtemp(prefix=".vmtools-sim-", dir=os.path.dirname(os.path.abspath(path)))
    staged = os.path.join(staging, "s")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(staged)
        os.chmod(staged, mode)  # in a 0700 directory: nobody else can reach it yet
        if group is not None:
            os.chown(staged, -1, group)
        listener.listen(backlog)
        os.link(staged, path)  # atomic, and never replaces an existing file
    except BaseException:
        listener.close()
        raise
    finally:
        if os.path.lexists(staged):
            os.unlink(staged)
        os.rmdir(staging)
    return listener


class PrivatePort(unix.Port):
    """Twisted's Unix port over a socket `bind_private` made.

    Twisted's port would chmod its socket to 0666 and unlink its path
    whatever is there by then; this one keeps the private mode and removes
    the path only if it is still this socket (another simulator may have
    claimed the path since).
    """

    def __init__(self, path: str, factory: IProtocolFactory, listener: socket.socket, mode: int,
                 reactor: object) -> None:
        super().__init__(path.encode(), factory, mode=mode, reactor=reactor)
        status = os.lstat(path)
        self._inode = (status.st_dev, status.st_ino)
        listener.setblocking(False)
        self._preexistingSocket = listener  # startListening takes it instead of binding anew

    def connectionLost(self, reason: Failure) -> None:
        unlink_if_ours(os.fsdecode(self._bindPath), self._inode)
        tcp.Port.connectionLost(self, reason)


def unlink_if_ours(path: str, inode: tuple[int, int]) -> None:
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return
    if (status.st_dev, status.st_ino) == inode:
        os.unlink(path)


@implementer(IStreamServerEndpoint)
class PrivateUNIXServerEndpoint:
    """Listens at ``path`` through `bind_private`."""

    def __init__(self, reactor: object, path: str, group: int | None = None, backlog: int = BACKLOG) -> None:
        self._reactor = reactor
        self.path = path
        self.group = group
        self.backlog = backlog

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        try:
            listener = bind_private(self.path, self.group, self.backlog)
        except OSError as error:
            return fail(CannotListenError(None, self.path, error))
        mode = OWNER_AND_GROUP if self.group is not None else OWNER_ONLY
        port = PrivatePort(self.path, factory, listener, mode, self._reactor)
        port.startListening()
        return succeed(port)
