"""The guest's HGFS server: the `f` TCLO command, sessions, handles and file operations.

Each packet is answered after at most one packet's worth of file I/O (a read
or write of up to 520,192 bytes at its own 64-bit offset), so the reactor is
never held longer; nothing buffers a whole file.  Sessions are limited in
number, expire after ``idle_timeout`` seconds without a request (their open
uploads are cut off cleanly), and own their handles.  Bad packets get an HGFS
error status, never an exception.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..codecs import hgfs
from ..codecs.hgfs import (
    AttrV2,
    FileNameV3,
    FileType,
    Header,
    HGFSMalformedError,
    HGFSPacketError,
    HGFSUnsupportedOp,
    Op,
    OpenFlags,
    OpenMode,
    Status,
)
from ..codecs.tclo import HGFS_CAPABILITY as CAPABILITY
from ..codecs.tclo import HGFS_COMMAND as COMMAND
from ..protocols.rpci import RPCI
from ..protocols.tclo import TCLODispatcher, TCLOHandlerError
from .feature import IGuestFeature
from .hgfs_files import DiskFile, IFileHandle, SafeUpload, UploadJournal
from .hgfs_handlers import FileHandlerRegistry

NO_ARGUMENT = b"1 argument required"  # vmtoolsd's answer to an `f` without a packet
DEFAULT_MAX_SESSIONS = 64
DEFAULT_MAX_HANDLES = 1024
DEFAULT_IDLE_TIMEOUT = 300.0
ATTR_MASK = 0x2FBFF  # what vmtoolsd fills in on Linux (every field but flags and the non-static id)


class StatusError(Exception):
    """Answer the request with this HGFS status."""

    def __init__(self, status: Status, why: str = "") -> None:
        super().__init__(why or status.name)
        self.status = status


_ERRNO_STATUS = {
    errno.ENOENT: Status.NO_SUCH_FILE_OR_DIR,
    errno.EBADF: Status.INVALID_HANDLE,
    errno.EPERM: Status.OPERATION_NOT_PERMITTED,
    errno.EEXIST: Status.FILE_EXISTS,
    errno.ENOTDIR: Status.NOT_DIRECTORY,
    errno.ENOTEMPTY: Status.DIR_NOT_EMPTY,
    errno.EACCES: Status.ACCESS_DENIED,
    errno.EINVAL: Status.INVALID_PARAMETER,
    errno.ENOSPC: Status.NO_SPACE,
    errno.ENAMETOOLONG: Status.NAME_TOO_LONG,
    errno.EXDEV: Status.NOT_SAME_DEVICE,
    errno.EISDIR: Status.ACCESS_DENIED,
    errno.EROFS: Status.ACCESS_DENIED,
    errno.ELOOP: Status.INVALID_NAME,
}


def status_of(error: BaseException) -> Status:
    if isinstance(error, StatusError):
        return error.status
    if isinstance(error, OSError) and error.errno is not None:
        return _ERRNO_STATUS.get(error.errno, Status.GENERIC_ERROR)
    return Status.GENERIC_ERROR


@dataclass
class _Search:
    directory: str
    names: list[str]


@dataclass
class Session:
    """One client's session: its handles (files and searches) and its idle timer."""

    id: int | None  # None: the implicit session of legacy-header packets
    max_packet: int
    files: dict[int, IFileHandle] = field(default_factory=dict)
    searches: dict[int, _Search] = field(default_factory=dict)
    timer: IDelayedCall | None = None

    def abort(self) -> None:
        for handle in self.files.values():
            try:
                handle.abort()
            except Exception:
                Logger().failure("aborting {name}", name=getattr(handle, "name", "?"))
        self.files.clear()
        self.searches.clear()


@implementer(IGuestFeature)
class HGFSServer(Service):
    """The HGFS server of one guest, as a feature: `install` registers the ``f`` TCLO command.

    ``journal`` notes uploads in progress so that a restart removes what a
    crash left (`UploadJournal.default` in ``twistd vmtools``; none here).
    """

    log = Logger()
    name = "hgfs"
    capabilities = (CAPABILITY,)

    def __init__(
        self,
        clock: IReactorTime,
        *,
        handlers: FileHandlerRegistry | None = None,
        journal: UploadJournal | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_handles: int = DEFAULT_MAX_HANDLES,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_packet: int = hgfs.LARGE_PACKET_MAX,
        random_id: Callable[[], int] = lambda: secrets.randbits(63),
        first_handle: int = 1,
    ) -> None:
        self.clock = clock
        self.handlers = handlers or FileHandlerRegistry()
        self.journal = journal or UploadJournal(None)
        self.max_sessions = max_sessions
        self.max_handles = max_handles
        self.idle_timeout = idle_timeout
        self.max_packet = max_packet
        self._random_id = random_id
        self.sessions: dict[int | None, Session] = {}
        self._handles = count(first_handle)  # a per-user helper's server numbers its handles apart
        self._ops: dict[int, Callable[[Session, Any], object]] = {
            Op.CLOSE: self._close,
            Op.CLOSE_V3: self._close,
            Op.GETATTR_V2: self._getattr_v2,
            Op.SETATTR_V2: self._setattr,
            Op.OPEN_V3: self._open,
            Op.READ_V3: self._read,
            Op.WRITE_V3: self._write,
            Op.SEARCH_OPEN_V3: self._search_open,
            Op.SEARCH_READ_V3: self._search_read,
            Op.SEARCH_CLOSE_V3: self._search_close,
            Op.GETATTR_V3: self._getattr_v3,
            Op.SETATTR_V3: self._setattr,
            Op.CREATE_DIR_V3: self._create_dir,
            Op.DELETE_FILE_V3: self._delete_file,
            Op.DELETE_DIR_V3: self._delete_dir,
            Op.RENAME_V3: self._rename,
            Op.QUERY_VOLUME_INFO_V3: self._query_volume,
        }

    def install(self, dispatcher: TCLODispatcher, rpci: RPCI | None = None) -> None:
        for temp in self.journal.clean():
            self.log.info("removed {temp}, an upload cut off by the last stop", temp=temp)
        dispatcher.register(COMMAND, self.command, views=True)

    def stopService(self) -> None:
        super().stopService()
        self.stop()

    def stop(self) -> None:
        """Tools stopping: every transfer in progress is cut off."""
        for session in list(self.sessions.values()):
            self._drop(session)

    # --- the TCLO command -------------------------------------------------------------------------------------

    def command(self, args: hgfs.Data) -> bytes | list[hgfs.Data] | Deferred[bytes]:
        if not args:
            raise TCLOHandlerError(NO_ARGUMENT)
        # A reply made at once goes in pieces for the dispatcher to join behind its ``OK ``:
        # a ReadV3's 520 KB of data is then copied once on its way out, not twice.
        return self.reply(args)

    def packet(self, data: bytes) -> bytes | Deferred[bytes]:
        """The reply packet to one request packet (bytes, or a Deferred for virtual files)."""
        reply = self.reply(data)
        return b"".join(reply) if isinstance(reply, list) else reply

    def reply(self, data: hgfs.Data) -> bytes | list[hgfs.Data] | Deferred[bytes]:
        """`packet`'s reply, a ReadV3's in pieces (header, file data) for a sender that joins once."""
        try:
            header, body = hgfs.decode_request_header(data)
        except HGFSPacketError as error:
            self.log.info("HGFS packet refused: {error}", error=str(error))
            return hgfs.error_reply(data)
        except HGFSMalformedError as error:
            return hgfs.encode_reply(error.header, Status.PROTOCOL_ERROR)  # type: ignore[attr-defined]
        try:
            message = hgfs.decode_request_body(header.op, body)
            if header.op == Op.CREATE_SESSION_V4:
                return self._create_session(header, message)  # type: ignore[arg-type]
            session = self._session(header)
            if header.op == Op.DESTROY_SESSION_V4:
                self._drop(session)
                return hgfs.encode_reply(header, Status.SUCCESS, hgfs.Reserved())
            result = self._ops[header.op](session, message)
        except (HGFSMalformedError, HGFSUnsupportedOp, StatusError, OSError) as error:
            return self._error(header, error)
        except Exception:
            self.log.failure("HGFS op {op} failed", op=header.op)
            return hgfs.encode_reply(header, Status.GENERIC_ERROR)
        if isinstance(result, Deferred):
            return result.addCallbacks(
                lambda reply: hgfs.encode_reply(header, Status.SUCCESS, reply),  # type: ignore[arg-type]
                lambda failure: self._failed(header, failure),
            )
        return hgfs.reply_pieces(header, Status.SUCCESS, result)  # type: ignore[arg-type]

    def _error(self, header: Header, error: Exception) -> bytes:
        if isinstance(error, HGFSMalformedError):
            status = Status.PROTOCOL_ERROR
        elif isinstance(error, HGFSUnsupportedOp):
            status = Status.OPERATION_NOT_SUPPORTED
        else:
            status = status_of(error)
        self.log.debug("HGFS op {op}: {status}: {error}", op=header.op, status=status.name, error=str(error))
        return hgfs.encode_reply(header, status)

    def _failed(self, header: Header, failure: Failure) -> bytes:
        if not failure.check(StatusError, OSError):
            self.log.failure("HGFS op {op} failed", failure, op=header.op)
        return self._error(header, failure.value)  # type: ignore[arg-type]

    # --- sessions ---------------------------------------------------------------------------------------------

    def _create_session(self, header: Header, request: hgfs.CreateSessionRequest) -> bytes:
        if sum(1 for key in self.sessions if key is not None) >= self.max_sessions:
            raise StatusError(Status.TOO_MANY_SESSIONS)
        max_packet = min(request.max_packet_size or self.max_packet, self.max_packet)
        session_id = self._random_id()
        while session_id in self.sessions or session_id == hgfs.INVALID_SESSION_ID:
            session_id = self._random_id()
        session = Session(session_id, max_packet)
        self.sessions[session_id] = session
        self._touch(session)
        capabilities = tuple(hgfs.Capability(op) for op in sorted({*self._ops, *hgfs.MESSAGES}))
        reply = hgfs.CreateSessionReply(session_id, max_packet, hgfs.SESSION_MAXPACKETSIZE_VALID, capabilities)
        # The session does not exist yet when vmtoolsd answers: its reply header carries the invalid id.
        return hgfs.encode_reply(header, Status.SUCCESS, reply, session_id=hgfs.INVALID_SESSION_ID)

    def adopt_session(self, session_id: int) -> Session:
        """A session of this id, made here if missing: another server created it (a per-user helper's
        session whose process streams are served here, see `hgfs_users`).  It expires as any other."""
        session = self.sessions.get(session_id)
        if session is None:
            session = self.sessions[session_id] = Session(session_id, self.max_packet)
            self._touch(session)
        return session

    def close_session(self, session_id: int) -> None:
        """End a session if it exists (its other half was destroyed); what it had open is cut off."""
        session = self.sessions.get(session_id)
        if session is not None:
            self._drop(session)

    def _session(self, header: Header) -> Session:
        session = self.sessions.get(header.session_id)
        if session is None:
            if header.session_id is not None:
                raise StatusError(Status.STALE_SESSION, f"no session {header.session_id:#x}")
            session = self.sessions[None] = Session(None, self.max_packet)
        self._touch(session)
        return session

    def _touch(self, session: Session) -> None:
        if session.timer is not None and session.timer.active():
            session.timer.reset(self.idle_timeout)
        else:
            session.timer = self.clock.callLater(self.idle_timeout, self._expire, session)

    def _expire(self, session: Session) -> None:
        session.timer = None
        self.log.info("HGFS session {id} idle for {timeout} s: closed", id=session.id, timeout=self.idle_timeout)
        self._drop(session)

    def _drop(self, session: Session) -> None:
        if session.timer is not None and session.timer.active():
            session.timer.cancel()
        session.timer = None
        self.sessions.pop(session.id, None)
        session.abort()

    def _new_handle(self, session: Session) -> int:
        if len(session.files) + len(session.searches) >= self.max_handles:
            raise StatusError(Status.GENERIC_ERROR, "too many open handles in this session")
        return next(self._handles)

    # --- files ------------------------------------------------------------------------------------------------

    def _open(self, session: Session, request: hgfs.OpenRequest) -> object:
        path = _path(request.name)
        if request.desired_lock:
            raise StatusError(Status.OPERATION_NOT_SUPPORTED, "server locks")
        handle = self._new_handle(session)
        resolved = self.handlers.resolve(path, opening=True)
        if resolved is not None:
            opening: Deferred[Any] = maybeDeferred(
                resolved.handler.open,
                resolved.path, resolved.query, request.mode, request.flags, request.permissions,
            )
            return opening.addCallback(self._opened, session, handle)
        return self._opened(self._open_file(path, request), session, handle)

    def _opened(self, file: IFileHandle, session: Session, handle: int) -> hgfs.OpenReply:
        session.files[handle] = file
        return hgfs.OpenReply(handle)

    def _open_file(self, path: str, request: hgfs.OpenRequest) -> IFileHandle:
        access = _ACCESS.get(request.mode)
        if access is None or request.flags not in OpenFlags._value2member_map_:
            raise StatusError(Status.INVALID_PARAMETER, f"open mode {request.mode} flags {request.flags}")
        perms = request.permissions
        exists = os.path.lexists(path)
        flags = OpenFlags(request.flags)
        if flags in (OpenFlags.OPEN, OpenFlags.OPEN_EMPTY) and not exists:
            raise FileNotFoundError(errno.ENOENT, "no such file", path)
        if flags is OpenFlags.CREATE_SAFE and exists:
            raise FileExistsError(errno.EEXIST, "file exists", path)
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        replaces = flags in (OpenFlags.OPEN_EMPTY, OpenFlags.CREATE_EMPTY, OpenFlags.CREATE_SAFE) or not exists
        if access != os.O_RDONLY and replaces:
            keep = stat.S_IMODE(os.stat(path).st_mode) if exists else None
            exclusive = flags is OpenFlags.CREATE_SAFE
            return SafeUpload(path, perms, exclusive=exclusive, journal=self.journal, keep_mode=keep)
        return DiskFile(path, access, perms)

    def _file(self, session: Session, handle: int) -> IFileHandle:
        file = session.files.get(handle)
        if file is None:
            raise StatusError(Status.INVALID_HANDLE, f"no handle {handle}")
        return file

    def _read(self, session: Session, request: hgfs.ReadRequest) -> object:
        file = self._file(session, request.handle)
        size = min(request.size, hgfs.LARGE_IO_MAX, session.max_packet - hgfs.V4_HEADER_SIZE - 12)
        data = file.read(request.offset, max(size, 0))
        if isinstance(data, Deferred):
            return data.addCallback(hgfs.ReadReply)
        return hgfs.ReadReply(data)

    def _write(self, session: Session, request: hgfs.WriteRequest) -> object:
        file = self._file(session, request.handle)
        data = request.data if getattr(file, "accepts_views", False) else bytes(request.data)
        written = file.write(request.offset, data, bool(request.flags & hgfs.WRITE_APPEND))  # type: ignore[arg-type]
        if isinstance(written, Deferred):
            return written.addCallback(hgfs.WriteReply)
        return hgfs.WriteReply(written)

    def _close(self, session: Session, request: hgfs.CloseRequest | hgfs.LegacyCloseRequest) -> object:
        file = session.files.pop(request.handle, None)
        if file is None:
            raise StatusError(Status.INVALID_HANDLE, f"no handle {request.handle}")
        reply = hgfs.Empty() if isinstance(request, hgfs.LegacyCloseRequest) else hgfs.Reserved()
        return maybeDeferred(file.close).addCallback(lambda _: reply)

    # --- attributes -------------------------------------------------------------------------------------------

    def _attributes(self, session: Session, name: bytes, by_handle: int | None) -> tuple[AttrV2, bytes]:
        if by_handle is not None:
            file = self._file(session, by_handle)
            fd = getattr(file, "fd", -1)
            if fd < 0:
                raise StatusError(Status.INVALID_HANDLE, "no attributes by handle for a virtual file")
            return attr_of(os.fstat(fd)), b""
        path = hgfs.path_of(name)
        resolved = self.handlers.resolve(path, opening=False)
        if resolved is not None:
            return resolved.handler.stat(resolved.path, resolved.query), b""
        info = os.lstat(path)
        target = os.readlink(path).encode("utf-8", "surrogateescape") if stat.S_ISLNK(info.st_mode) else b""
        return attr_of(info, os.access(path, os.R_OK), os.access(path, os.W_OK), os.access(path, os.X_OK)), target

    def _getattr_v2(self, session: Session, request: hgfs.GetattrV2Request) -> hgfs.GetattrV2Reply:
        by_handle = request.handle if request.hints & hgfs.ATTR_HINT_USE_FILE_DESC else None
        attr, target = self._attributes(session, request.name, by_handle)
        return hgfs.GetattrV2Reply(attr, target)

    def _getattr_v3(self, session: Session, request: hgfs.NameRequest) -> hgfs.GetattrReply:
        attr, target = self._attributes(session, request.name.name, _handle_of(request.name, request.hints))
        return hgfs.GetattrReply(attr, FileNameV3(target, fid=0))

    def _setattr(self, session: Session, request: hgfs.SetattrV2Request | hgfs.SetattrRequest) -> object:
        if isinstance(request, hgfs.SetattrV2Request):
            name = request.name
            by_handle = request.handle if request.hints & hgfs.ATTR_HINT_USE_FILE_DESC else None
        else:
            name, by_handle = request.name.name, _handle_of(request.name, request.hints)
        target: int | str
        if by_handle is not None:
            file = self._file(session, by_handle)
            target = getattr(file, "fd", -1)
            if target < 0:
                return _setattr_reply(request)  # a virtual file: nothing to set
        else:
            target = hgfs.path_of(name)
            upload = _upload_to(session, target)
            if upload is not None:
                target = upload.fd  # the VMX sets the attributes of the file it is still writing
            elif self.handlers.resolve(target, opening=False) is not None:
                return _setattr_reply(request)
        apply_attributes(target, request.attr, request.hints)
        return _setattr_reply(request)

    # --- directories and names --------------------------------------------------------------------------------

    def _create_dir(self, session: Session, request: hgfs.CreateDirRequest) -> hgfs.Reserved:
        path = _path(request.name)
        os.mkdir(path, request.permissions)  # less the umask, as vmtoolsd's mkdir
        return hgfs.Reserved()

    def _delete_file(self, session: Session, request: hgfs.NameRequest) -> hgfs.Reserved:
        path = _path(request.name)
        if os.path.isdir(path) and not os.path.islink(path):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        os.unlink(path)
        return hgfs.Reserved()

    def _delete_dir(self, session: Session, request: hgfs.NameRequest) -> hgfs.Reserved:
        os.rmdir(_path(request.name))
        return hgfs.Reserved()

    def _rename(self, session: Session, request: hgfs.RenameRequest) -> hgfs.Reserved:
        old, new = _path(request.old), _path(request.new)
        if request.hints & hgfs.RENAME_HINT_NO_REPLACE_EXISTING and os.path.lexists(new):
            raise FileExistsError(errno.EEXIST, "file exists", new)
        os.rename(old, new)
        return hgfs.Reserved()

    def _query_volume(self, session: Session, request: hgfs.ReservedNameRequest) -> hgfs.QueryVolumeReply:
        info = os.statvfs(_path(request.name))
        return hgfs.QueryVolumeReply(info.f_bavail * info.f_frsize, info.f_blocks * info.f_frsize)

    def _search_open(self, session: Session, request: hgfs.ReservedNameRequest) -> hgfs.SearchOpenReply:
        path = _path(request.name)
        names = [".", ".."] + sorted(os.listdir(path))  # a snapshot: indexes stay stable while the VMX reads
        handle = self._new_handle(session)
        session.searches[handle] = _Search(path, names)
        return hgfs.SearchOpenReply(handle)

    def _search_read(self, session: Session, request: hgfs.SearchReadRequest) -> hgfs.SearchReadReply:
        search = session.searches.get(request.handle)
        if search is None:
            raise StatusError(Status.INVALID_HANDLE, f"no search {request.handle}")
        while request.offset < len(search.names):
            name = search.names[request.offset]
            try:
                info = os.lstat(os.path.join(search.directory, name))
            except FileNotFoundError:  # removed since the search opened: skip it, as readdir would
                del search.names[request.offset]
                continue
            return hgfs.SearchReadReply((hgfs.DirEntry(name.encode("utf-8", "surrogateescape"), attr_of(info)),))
        return hgfs.SearchReadReply((hgfs.DirEntry(b""),))

    def _search_close(self, session: Session, request: hgfs.CloseRequest) -> hgfs.Reserved:
        if session.searches.pop(request.handle, None) is None:
            raise StatusError(Status.INVALID_HANDLE, f"no search {request.handle}")
        return hgfs.Reserved()


_ACCESS: dict[int, int] = {
    OpenMode.READ_ONLY: os.O_RDONLY, OpenMode.WRITE_ONLY: os.O_WRONLY, OpenMode.READ_WRITE: os.O_RDWR,
}


def _path(name: FileNameV3) -> str:
    if name.flags & hgfs.FILE_NAME_USE_FILE_DESC:
        raise StatusError(Status.INVALID_PARAMETER, "a handle where a name is needed")
    return hgfs.path_of(name.name)


def _handle_of(name: FileNameV3, hints: int) -> int | None:
    if name.flags & hgfs.FILE_NAME_USE_FILE_DESC or hints & hgfs.ATTR_HINT_USE_FILE_DESC:
        return name.fid
    return None


def _upload_to(session: Session, path: str) -> SafeUpload | None:
    for file in session.files.values():
        if isinstance(file, SafeUpload) and file.target == path and file.fd >= 0:
            return file
    return None


def _setattr_reply(request: object) -> object:
    return hgfs.Empty() if isinstance(request, hgfs.SetattrV2Request) else hgfs.Reserved()


def attr_of(info: os.stat_result, readable: bool = True, writable: bool = True, runnable: bool = False) -> AttrV2:
    """HgfsAttrV2 from a stat result, filled in as vmtoolsd does on Linux."""
    if stat.S_ISDIR(info.st_mode):
        kind = FileType.DIRECTORY
    elif stat.S_ISLNK(info.st_mode):
        kind = FileType.SYMLINK
    else:
        kind = FileType.REGULAR
    mode = info.st_mode
    return AttrV2(
        mask=ATTR_MASK,
        type=kind,
        size=info.st_size,
        creation_time=hgfs.nt_time(info.st_mtime_ns),
        access_time=hgfs.nt_time(info.st_atime_ns),
        write_time=hgfs.nt_time(info.st_mtime_ns),
        change_time=hgfs.nt_time(info.st_ctime_ns),
        special_perms=(mode >> 9) & 7,
        owner_perms=(mode >> 6) & 7,
        group_perms=(mode >> 3) & 7,
        other_perms=mode & 7,
        allocation_size=info.st_blocks * 512,
        user_id=info.st_uid,
        group_id=info.st_gid,
        host_file_id=info.st_ino,
        volume_id=info.st_dev & 0xFFFFFFFF,
        effective_perms=(4 if readable else 0) | (2 if writable else 0) | (1 if runnable else 0),
    )


def apply_attributes(target: int | str, attr: AttrV2, hints: int) -> None:
    """SETATTR: the fields the mask marks valid (permissions, owner, size, times)."""
    mask = attr.mask
    perms_bits = hgfs.ATTR_VALID_OWNER_PERMS | hgfs.ATTR_VALID_GROUP_PERMS | hgfs.ATTR_VALID_OTHER_PERMS
    if mask & (perms_bits | hgfs.ATTR_VALID_SPECIAL_PERMS):
        current = stat.S_IMODE(os.stat(target).st_mode)
        mode = current
        for bit, value, shift in (
            (hgfs.ATTR_VALID_SPECIAL_PERMS, attr.special_perms, 9),
            (hgfs.ATTR_VALID_OWNER_PERMS, attr.owner_perms, 6),
            (hgfs.ATTR_VALID_GROUP_PERMS, attr.group_perms, 3),
            (hgfs.ATTR_VALID_OTHER_PERMS, attr.other_perms, 0),
        ):
            if mask & bit:
                mode = (mode & ~(7 << shift)) | (value & 7) << shift
        if mode != current:
            os.chmod(target, mode)
    if mask & (hgfs.ATTR_VALID_USERID | hgfs.ATTR_VALID_GROUPID):
        uid = attr.user_id if mask & hgfs.ATTR_VALID_USERID else -1
        gid = attr.group_id if mask & hgfs.ATTR_VALID_GROUPID else -1
        info = os.stat(target)
        if (uid, gid) != (info.st_uid if uid != -1 else -1, info.st_gid if gid != -1 else -1):
            os.chown(target, uid, gid)
    if mask & hgfs.ATTR_VALID_SIZE:
        os.truncate(target, attr.size)
    times = mask & (hgfs.ATTR_VALID_ACCESS_TIME | hgfs.ATTR_VALID_WRITE_TIME)
    if times:
        info = os.stat(target)
        atime = hgfs.unix_ns(attr.access_time) if mask & hgfs.ATTR_VALID_ACCESS_TIME else info.st_atime_ns
        mtime = hgfs.unix_ns(attr.write_time) if mask & hgfs.ATTR_VALID_WRITE_TIME else info.st_mtime_ns
        os.utime(target, ns=(atime, mtime))
