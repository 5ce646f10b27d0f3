"""HGFS for guest operations: the VMX's HGFS_SEND_PACKET, performed as the account that logged in.

A transfer's bytes reach the guest as Vix ``HGFS_SEND_PACKET`` commands, each
carrying the login; vmtoolsd impersonates that login for every packet
(vixTools.c ``VixToolsProcessHgfsPacket``).  Here the tools' own account is
served by the tools' HGFS server in this process; every other account by an
HGFS server of its own in a helper process running as that account
(`hgfs_helper`), so that each open, create, rename and unpacking has that
account's permissions and what it creates is its own.  The hot path stays a
packet in, a packet out: one frame each way over a Unix socket.

A session belongs to the account that created it: a packet of another login
naming it is answered STALE_SESSION.  The ``/proc/<pid>/std*`` streams of the
processes guest operations started live in this process, so in a helper's
session they are served here (in a session of the same id, with handles the
helper never uses), and only to the process's owner or root.
"""

from __future__ import annotations

import os
import socket
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..codecs import hgfs, vix
from ..codecs.hgfs import Header, Op, Status
from ..codecs.vix import VixCode
from ..framing import EAGER_READ_MIN, send_pieces, widen
from .accounts import GuestUser
from .fileops_runner import helper_command
from .hgfs_archive import SCHEME as ARCHIVE_SCHEME
from .hgfs_archive import ArchiveHandler
from .hgfs_handlers import FileHandlerRegistry
from .hgfs_helper import CHANNEL_FD, FRAME
from .hgfs_proc import STREAM_PATH, IProcessTable, ProcFilesHandler
from .hgfs_server import DEFAULT_IDLE_TIMEOUT, HGFSServer
from .vix_errors import VixOperationError

# One HGFS reply: bytes, a ReadV3's pieces (header, file data) to be joined once, or later.
Reply = bytes | list[hgfs.Data] | Deferred[bytes]

HELPER = "twisted_vmtools.guest.hgfs_helper"
HELPER_IDLE = 30.0  # seconds a helper without sessions waits for the next packet before it leaves
MAX_HELPERS = 16  # accounts with a helper at once (the longest idle one leaves first)
MAX_FRAME = hgfs.LARGE_PACKET_MAX + hgfs.HEADER_SIZE_MAX  # a packet and then some: more is a broken peer
NAMED_OPS = frozenset({Op.OPEN_V3, Op.GETATTR_V2, Op.GETATTR_V3, Op.SETATTR_V2, Op.SETATTR_V3})
HANDLE_OPS = frozenset({Op.READ_V3, Op.WRITE_V3, Op.CLOSE_V3, Op.CLOSE, *NAMED_OPS})


def helper_handlers(reactor: Any) -> FileHandlerRegistry:
    """A helper's virtual paths: directories as archives and procfs files (process streams stay in the tools)."""
    registry = FileHandlerRegistry()
    registry.register("procfs", ProcFilesHandler())
    registry.register(ARCHIVE_SCHEME, ArchiveHandler(reactor))
    return registry


# --- the wire between the tools and a helper ----------------------------------------------------------------------


class _Frames(Protocol):
    """``>II`` (length, tag) + bytes, both ways; a frame over `MAX_FRAME` ends the connection.

    Frames are half-megabyte packets, one in flight each way: the socket is
    widened as the stream transport's is, a frame begun is read on at once
    rather than a reactor turn per piece, and one is sent straight from its
    pieces when nothing waits before it (the same measures as `framing`).
    """

    _socket: socket.socket | None = None

    def makeConnection(self, transport: Any) -> None:  # noqa: N802
        widen(transport)
        if isinstance(transport, tcp.Connection):
            self._socket = transport.socket
        self._pieces: deque[bytes] = deque()
        self._have = 0
        self._need: int | None = None
        self._tag = 0
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self._pieces.append(data)
        self._have += len(data)
        while True:
            if self._need is None:
                if self._have < FRAME.size:
                    return
                length, self._tag = FRAME.unpack(self._take(FRAME.size))
                if length > MAX_FRAME:
                    self.transport.loseConnection()  # type: ignore[union-attr]
                    return
                self._need = length
            if self._have < self._need and not self._read_on(self._need - self._have):
                return
            payload, self._need = self._take(self._need), None
            self.frameReceived(self._tag, payload)
            if getattr(self.transport, "disconnecting", True):
                return

    def _read_on(self, missing: int) -> bool:
        """Take the rest of a large frame now if it is there; whether it all came."""
        while missing and self._socket is not None and missing >= EAGER_READ_MIN // 2:
            try:
                more = self._socket.recv(missing)
            except OSError:
                return False
            if not more:
                return False
            self._pieces.append(more)
            self._have += len(more)
            missing -= len(more)
        return missing == 0

    def _take(self, count: int) -> bytes:
        """The next ``count`` bytes (there are that many): a whole piece as it is, else one join."""
        if count == 0:
            return b""
        self._have -= count
        first = self._pieces[0]
        if len(first) == count:
            return self._pieces.popleft()
        if len(first) > count:
            self._pieces[0] = first[count:]
            return first[:count]
        joined = b"".join(self._pieces)
        self._pieces.clear()
        if len(joined) > count:
            self._pieces.append(joined[count:])
        return joined[:count]

    def sendFrame(self, tag: int, payload: hgfs.Data | list[hgfs.Data]) -> None:  # noqa: N802
        """One frame from ``payload`` (bytes, or the pieces a reply is made of: joined only if it must wait)."""
        body = payload if isinstance(payload, list) else [payload]
        send_pieces(self.transport, self._socket, [FRAME.pack(sum(len(piece) for piece in body), tag), *body])

    def frameReceived(self, tag: int, payload: bytes) -> None:  # noqa: N802
        raise NotImplementedError


class HelperSide(_Frames):
    """In the helper: each frame is a packet for ``server``; its reply goes back under the same tag."""

    log = Logger()

    def __init__(self, server: HGFSServer, on_close: Callable[[], object]) -> None:
        self.server = server
        self.on_close = on_close

    @classmethod
    def factory(cls, server: HGFSServer, on_close: Callable[[], object]) -> Factory:
        return Factory.forProtocol(lambda: cls(server, on_close))  # type: ignore[arg-type, return-value]

    def frameReceived(self, tag: int, payload: bytes) -> None:  # noqa: N802
        # ``command`` answers a reply made at once in pieces (a ReadV3's data uncopied), as for ``f``.
        answer = self.server.command if payload else self.server.packet
        replying: Deferred[Any] = maybeDeferred(answer, payload)  # type: ignore[call-overload]
        replying.addCallback(lambda reply: self.sendFrame(tag, reply))
        replying.addErrback(lambda failure: self.log.failure("HGFS packet", failure))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]  # noqa: N802
        self.server.stop()  # uploads in progress are cut off: their temporaries removed
        self.on_close()


class HelperGone(Exception):
    """The helper ended (or could not start) before it answered."""


class _ToolsSide(_Frames):
    """In the tools: packets out to one helper, replies matched back by tag."""

    def __init__(self, helper: UserHelper) -> None:
        self.helper = helper
        self._tags = count(1)
        self._pending: dict[int, Deferred[bytes]] = {}

    def request(self, packet: hgfs.Data) -> Deferred[bytes]:
        tag = next(self._tags) & 0xFFFFFFFF
        answer: Deferred[bytes] = Deferred()
        self._pending[tag] = answer
        self.sendFrame(tag, packet)
        return answer

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    def frameReceived(self, tag: int, payload: bytes) -> None:  # noqa: N802
        answer = self._pending.pop(tag, None)
        if answer is None:
            self.transport.loseConnection()  # type: ignore[union-attr]  # answers what was not asked: not trusted
            return
        answer.callback(payload)
        self.helper.answered()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]  # noqa: N802
        pending, self._pending = self._pending, {}
        for answer in pending.values():
            answer.errback(HelperGone(f"the HGFS helper of {self.helper.user.name} ended"))
        self.helper.disconnected()


class _HelperProcess(ProcessProtocol):
    """The helper's process: its stderr kept for the log, its end reported."""

    def __init__(self, helper: UserHelper) -> None:
        self.helper = helper
        self.errors = bytearray()

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self.errors = (self.errors + data)[-4096:]

    def processEnded(self, reason: Failure) -> None:  # noqa: N802
        text = self.errors.decode("utf-8", "replace").strip()
        if text:
            UserHelper.log.info("HGFS helper of {user}: {text}", user=self.helper.user.name, text=text)
        self.helper.disconnected()


class UserHelper:
    """One account's HGFS helper: its process, its connection, its sessions and its idle timer."""

    log = Logger()

    def __init__(self, reactor: Any, user: GuestUser, on_gone: Callable[[UserHelper], None]) -> None:
        if os.geteuid() != 0:
            raise VixOperationError(VixCode.GUEST_USER_PERMISSIONS,
                                    f"the tools do not run as root: cannot act as {user.name}")
        self.reactor = reactor
        self.user = user
        self.on_gone = on_gone
        self.sessions: set[int] = set()
        self.last_used = reactor.seconds()
        self.alive = True
        self._idle: IDelayedCall | None = None
        self.process = _HelperProcess(self)
        self.wire = _ToolsSide(self)
        self._spawn()

    def _spawn(self) -> None:
        argv, env = helper_command(HELPER, self.user)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.reactor.spawnProcess(self.process, sys.executable, argv, env=env, path="/",
                                      childFDs={0: "w", 1: "r", 2: "r", CHANNEL_FD: theirs.fileno()})
            self.reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, Factory.forProtocol(lambda: self.wire))
        finally:
            ours.close()
            theirs.close()

    def request(self, packet: hgfs.Data) -> Deferred[bytes]:
        if not self.alive:
            return fail(HelperGone(f"the HGFS helper of {self.user.name} ended"))
        self._cancel_idle()
        self.last_used = self.reactor.seconds()
        return self.wire.request(packet)

    def answered(self) -> None:
        if not self.wire.busy:
            self._cancel_idle()
            self._idle = self.reactor.callLater(HELPER_IDLE, self._idle_check)

    def _idle_check(self) -> None:
        self._idle = None
        quiet = self.reactor.seconds() - self.last_used
        if self.sessions and quiet < DEFAULT_IDLE_TIMEOUT:
            # A session may rest as long as the server lets it: the helper waits with it.
            self._idle = self.reactor.callLater(DEFAULT_IDLE_TIMEOUT - quiet, self._idle_check)
            return
        self.leave()

    def _cancel_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def leave(self) -> None:
        """Close the connection: the helper cuts off what is open and exits."""
        self._cancel_idle()
        if self.alive:
            self.alive = False
            if self.wire.transport is not None:
                self.wire.transport.loseConnection()
            self.on_gone(self)

    def disconnected(self) -> None:
        if self.alive:
            self.alive = False
            self._cancel_idle()
            if self.wire.transport is not None:
                self.wire.transport.loseConnection()
            self.on_gone(self)


# --- routing ------------------------------------------------------------------------------------------------------


@dataclass
class _Route:
    """A session a helper created: whose it is, and the handles opened here for its process streams."""

    helper: UserHelper
    local_handles: set[int] = field(default_factory=set)


class UserHGFS:
    """Serves ``HGFS_SEND_PACKET`` (`UserHGFSFeature` registers it): each packet as the login's account.

    ``server`` is the tools' own HGFS server (the tools' account, and process
    streams); ``processes`` the table whose streams it serves, for the owner
    check.  ``helper_factory`` is a seam for tests.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        server: HGFSServer,
        *,
        processes: IProcessTable | None = None,
        helper_factory: Callable[[Any, GuestUser, Callable[[UserHelper], None]], UserHelper] = UserHelper,
    ) -> None:
        self.reactor = reactor
        self.server = server
        self.processes = processes
        self.helper_factory = helper_factory
        self.helpers: dict[int, UserHelper] = {}
        self.routes: dict[int, _Route] = {}

    # -- the Vix op --------------------------------------------------------------------------------------------

    def send_packet(self, request: vix.Request, user: GuestUser) -> Reply:
        """Vix ``HGFS_SEND_PACKET``: the reply to its HGFS packet (in pieces, for the TCLO answer's one join)."""
        packet = vix.HgfsPacket.decode(request.body).packet
        return self._reply(packet, user)

    def packet(self, data: hgfs.Data, user: GuestUser) -> bytes | Deferred[bytes]:
        """The reply to one HGFS request packet, performed as ``user``."""
        reply = self._reply(data, user)
        return b"".join(reply) if isinstance(reply, list) else reply

    def _reply(self, data: hgfs.Data, user: GuestUser) -> Reply:
        try:
            header, body = hgfs.decode_request_header(data)
        except hgfs.HGFSError:
            return self.server.packet(bytes(data))  # answered from the packet alone: nothing is touched
        route = self.routes.get(header.session_id) if header.session_id is not None else None
        if route is not None and route.helper.user.uid != user.uid:
            return _status(header, Status.STALE_SESSION)  # another account's session
        if user.is_service_user:
            return self.server.reply(data)  # its codec decodes views
        if route is None and not header.legacy and header.op != Op.CREATE_SESSION_V4:
            return _status(header, Status.STALE_SESSION)  # none of this account's sessions
        try:
            here = route is not None and self._served_here(header, body, route, user)
        except _Denied as denied:
            self.log.info("{user} may not use {path}", user=user.name, path=str(denied))
            return _status(header, Status.ACCESS_DENIED)
        if here:
            assert route is not None
            return self._here(data, header, route)
        return self._in_helper(data, header, route, user)

    # -- the account's helper ----------------------------------------------------------------------------------

    def _helper(self, user: GuestUser) -> UserHelper:
        helper = self.helpers.get(user.uid)
        if helper is not None and helper.alive and helper.user == user:
            return helper
        if helper is not None:
            helper.leave()  # the account changed (groups, home): a fresh helper for it
        while len(self.helpers) >= MAX_HELPERS:
            min(self.helpers.values(), key=lambda h: h.last_used).leave()
        helper = self.helpers[user.uid] = self.helper_factory(self.reactor, user, self._gone)
        return helper

    def _gone(self, helper: UserHelper) -> None:
        if self.helpers.get(helper.user.uid) is helper:
            del self.helpers[helper.user.uid]
        for session_id in helper.sessions:
            route = self.routes.pop(session_id, None)
            if route is not None:
                self.server.close_session(session_id)

    def _in_helper(self, data: hgfs.Data, header: Header, route: _Route | None, user: GuestUser) -> Deferred[bytes]:
        helper = route.helper if route is not None else self._helper(user)
        replying = helper.request(data)
        if header.op == Op.CREATE_SESSION_V4:
            replying.addCallback(self._session_created, helper)
        elif header.op == Op.DESTROY_SESSION_V4 and header.session_id is not None:
            self._forget(header.session_id)
        return replying.addErrback(self._helper_failed, header)

    def _session_created(self, reply: bytes, helper: UserHelper) -> bytes:
        try:
            head, body = hgfs.decode_reply_header(reply, Op.CREATE_SESSION_V4)
            if head.status == Status.SUCCESS:
                created: Any = hgfs.decode_reply_body(Op.CREATE_SESSION_V4, body)
                self.routes[created.session_id] = _Route(helper)
                helper.sessions.add(created.session_id)
        except hgfs.HGFSError as error:
            self.log.warn("HGFS helper of {user} answered CreateSession oddly: {error}",
                          user=helper.user.name, error=str(error))
        return reply

    def _forget(self, session_id: int) -> None:
        route = self.routes.pop(session_id, None)
        if route is not None:
            route.helper.sessions.discard(session_id)
            self.server.close_session(session_id)

    def _helper_failed(self, failure: Failure, header: Header) -> bytes:
        failure.trap(HelperGone)
        self.log.info("{error}", error=failure.getErrorMessage())
        return _status(header, Status.STALE_SESSION if not header.legacy else Status.GENERIC_ERROR)

    # -- process streams, served here ----------------------------------------------------------------------------

    def _served_here(self, header: Header, body: hgfs.Data, route: _Route, user: GuestUser) -> bool:
        """Whether a packet of a helper's session concerns one of this process's streams."""
        if header.op not in HANDLE_OPS or (header.op not in NAMED_OPS and not route.local_handles):
            return False
        try:
            message: Any = hgfs.decode_request_body(header.op, body)
        except hgfs.HGFSError:
            return False  # the helper answers it with the right error
        if header.op not in NAMED_OPS:
            return message.handle in route.local_handles
        name, hints = message.name, getattr(message, "hints", 0)
        if isinstance(name, hgfs.FileNameV3):
            if name.flags & hgfs.FILE_NAME_USE_FILE_DESC or hints & hgfs.ATTR_HINT_USE_FILE_DESC:
                return name.fid in route.local_handles
            name = name.name
        elif hints & hgfs.ATTR_HINT_USE_FILE_DESC:  # GetattrV2/SetattrV2 by handle
            return message.handle in route.local_handles
        return self._stream_of(hgfs.path_of(name), user)

    def _stream_of(self, path: str, user: GuestUser) -> bool:
        """A stream of a process started with I/O that ``user`` may use (its owner, or root)."""
        match = STREAM_PATH.match(path)
        if match is None or self.processes is None:
            return False
        record = self.processes.get(int(match.group(1)))
        if record is None or getattr(record, "io", None) is None:
            return False  # a real /proc path: the helper reads it as the account
        if user.uid != 0 and getattr(record, "owner", None) != user.name:
            raise _Denied(path)
        return True

    def _here(self, data: hgfs.Data, header: Header, route: _Route) -> bytes | Deferred[bytes]:
        assert header.session_id is not None
        self.server.adopt_session(header.session_id)
        replying: Deferred[bytes] = maybeDeferred(self.server.packet, data)  # type: ignore[call-overload]
        if header.op == Op.OPEN_V3:
            replying.addCallback(self._opened_here, route)
        elif header.op in (Op.CLOSE_V3, Op.CLOSE):
            message: Any = hgfs.decode_request_body(header.op, hgfs.decode_request_header(data)[1])
            route.local_handles.discard(message.handle)
        return replying

    def _opened_here(self, reply: bytes, route: _Route) -> bytes:
        head, body = hgfs.decode_reply_header(reply, Op.OPEN_V3)
        if head.status == Status.SUCCESS:
            route.local_handles.add(hgfs.decode_reply_body(Op.OPEN_V3, body).handle)  # type: ignore[attr-defined]
        return reply

    def stop(self) -> None:
        """The tools stop: every helper is asked to leave (each cuts off what it has open)."""
        for helper in list(self.helpers.values()):
            helper.leave()
        self.helpers.clear()
        self.routes.clear()


class _Denied(Exception):
    """Another account's process stream."""


def _status(header: Header, status: Status) -> bytes:
    return hgfs.encode_reply(header, status)
