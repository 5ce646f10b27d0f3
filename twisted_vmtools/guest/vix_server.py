"""The Vix command server: vSphere's guest operations, as TCLO ``Vix_1_Relayed_Command``.

Each command is decoded (`twisted_vmtools.codecs.vix`), its login checked by
the `IAuthenticator`, and the operation run as that user: processes through
the `ProcessManager`, file operations through an `IFileOperationRunner`.  The
answer is always a Vix reply (``OK <error> <errno> <result>``): bad input,
a refused login or a failing operation become Vix errors, never an exception
out of the handler, and the service goes on.
"""

from __future__ import annotations

import base64
import platform
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from .. import __version__
from ..codecs import vix
from ..codecs.vix import Op, VixCode
from ..protocols.tclo import Pieces
from .accounts import GuestUser
from .auth import IAuthenticator, RecentLogins
from .fileops_runner import IFileOperationRunner
from .hgfs_proc import STREAM_PATH
from .processes import ProcessManager, StartRequest
from .vix_errors import VixOperationError

LISTING_KEEP = 600.0  # seconds a paged process listing waits for its next page

FILE_OPS = frozenset({
    Op.LIST_FILES, Op.INITIATE_FILE_TRANSFER_FROM_GUEST, Op.INITIATE_FILE_TRANSFER_TO_GUEST, Op.CREATE_DIRECTORY_EX,
    Op.DELETE_GUEST_FILE_EX, Op.DELETE_GUEST_DIRECTORY_EX, Op.MOVE_GUEST_FILE_EX, Op.MOVE_GUEST_DIRECTORY,
    Op.CREATE_TEMPORARY_FILE_EX, Op.CREATE_TEMPORARY_DIRECTORY, Op.SET_GUEST_FILE_ATTRIBUTES,
})

# Which vSphere API each op belongs to: tools.conf `[guestoperations] <Name>.disabled` turns one off.
API_NAMES: dict[int, str] = {
    Op.START_PROGRAM: "StartProgramInGuest", Op.LIST_PROCESSES_EX: "ListProcessesInGuest",
    Op.TERMINATE_PROCESS: "TerminateProcessInGuest", Op.KILL_PROCESS: "TerminateProcessInGuest",
    Op.READ_ENV_VARIABLES: "ReadEnvironmentVariableInGuest", Op.LIST_FILES: "ListFilesInGuest",
    Op.CREATE_DIRECTORY_EX: "MakeDirectoryInGuest", Op.DELETE_GUEST_FILE_EX: "DeleteFileInGuest",
    Op.DELETE_GUEST_DIRECTORY_EX: "DeleteDirectoryInGuest", Op.MOVE_GUEST_FILE_EX: "MoveFileInGuest",
    Op.MOVE_GUEST_DIRECTORY: "MoveDirectoryInGuest", Op.CREATE_TEMPORARY_FILE_EX: "CreateTemporaryFileInGuest",
    Op.CREATE_TEMPORARY_DIRECTORY: "CreateTemporaryDirectoryInGuest",
    Op.SET_GUEST_FILE_ATTRIBUTES: "ChangeFileAttributesInGuest",
    Op.INITIATE_FILE_TRANSFER_FROM_GUEST: "InitiateFileTransferFromGuest",
    Op.INITIATE_FILE_TRANSFER_TO_GUEST: "InitiateFileTransferToGuest",
    Op.VALIDATE_CREDENTIALS: "ValidateCredentialsInGuest",
}

ENABLED_PROPERTIES: dict[int, int] = {
    vix.Property.GUEST_START_PROGRAM_ENABLED: Op.START_PROGRAM,
    vix.Property.GUEST_LIST_PROCESSES_ENABLED: Op.LIST_PROCESSES_EX,
    vix.Property.GUEST_TERMINATE_PROCESS_ENABLED: Op.TERMINATE_PROCESS,
    vix.Property.GUEST_READ_ENVIRONMENT_VARIABLE_ENABLED: Op.READ_ENV_VARIABLES,
    vix.Property.GUEST_MAKE_DIRECTORY_ENABLED: Op.CREATE_DIRECTORY_EX,
    vix.Property.GUEST_DELETE_FILE_ENABLED: Op.DELETE_GUEST_FILE_EX,
    vix.Property.GUEST_DELETE_DIRECTORY_ENABLED: Op.DELETE_GUEST_DIRECTORY_EX,
    vix.Property.GUEST_MOVE_DIRECTORY_ENABLED: Op.MOVE_GUEST_DIRECTORY,
    vix.Property.GUEST_MOVE_FILE_ENABLED: Op.MOVE_GUEST_FILE_EX,
    vix.Property.GUEST_CREATE_TEMP_FILE_ENABLED: Op.CREATE_TEMPORARY_FILE_EX,
    vix.Property.GUEST_CREATE_TEMP_DIRECTORY_ENABLED: Op.CREATE_TEMPORARY_DIRECTORY,
    vix.Property.GUEST_LIST_FILES_ENABLED: Op.LIST_FILES,
    vix.Property.GUEST_CHANGE_FILE_ATTRIBUTES_ENABLED: Op.SET_GUEST_FILE_ATTRIBUTES,
    vix.Property.GUEST_INITIATE_FILE_TRANSFER_FROM_GUEST_ENABLED: Op.INITIATE_FILE_TRANSFER_FROM_GUEST,
    vix.Property.GUEST_INITIATE_FILE_TRANSFER_TO_GUEST_ENABLED: Op.INITIATE_FILE_TRANSFER_TO_GUEST,
}

# Ops whose login may come from `RecentLogins`: a transfer's packets, each carrying the same login.
RECHECKED_LATER = frozenset({Op.HGFS_SEND_PACKET})

# An op another feature serves through this server (HGFS_SEND_PACKET: the file-transfer bytes).
# An extra op's result may be in pieces: an HGFS reply's header and its file data.
ExtraOp = Callable[[vix.Request, GuestUser], "bytes | Pieces | Deferred[bytes] | Deferred[Pieces]"]


# vixTools.c VixToolsRewriteError: for these ops a refused login answers GUEST_USER_PERMISSIONS.
LOGIN_AS_PERMISSIONS = frozenset({Op.HGFS_SEND_PACKET})


def _rewritten(request: vix.Request | None, code: int) -> int:
    if request is not None and request.op in LOGIN_AS_PERMISSIONS and code == VixCode.INVALID_LOGIN_CREDENTIALS:
        return VixCode.GUEST_USER_PERMISSIONS
    return code


@dataclass
class _PagedListing:
    text: bytes
    timer: IDelayedCall


class VixCommandServer:
    """Answers ``Vix_1_Relayed_Command`` and ``Vix_1_Get_ToolsProperties``.

    ``disabled`` names the vSphere APIs switched off (`API_NAMES` values, or
    ``"all"``): they answer ``VIX_E_OPERATION_DISABLED``.
    """

    log = Logger()

    def __init__(
        self,
        reactor: object,
        *,
        authenticator: IAuthenticator,
        processes: ProcessManager,
        files: IFileOperationRunner,
        disabled: frozenset[str] = frozenset(),
        max_result: int = vix.MAX_RESULT,
    ) -> None:
        self.reactor = reactor
        self.authenticator = authenticator
        self.processes = processes
        self.files = files
        self.disabled = disabled
        self.max_result = max_result
        self.extra_ops: dict[int, ExtraOp] = {}
        self.recent_logins = RecentLogins(now=reactor.seconds)  # type: ignore[attr-defined]
        self._listings: dict[int, _PagedListing] = {}
        self._next_key = 1

    def register_op(self, op: int, handler: ExtraOp) -> None:
        """Serve ``op`` (after the login is checked) with ``handler``; its result goes back as is."""
        self.extra_ops[op] = handler

    # -- TCLO entry points -------------------------------------------------------------------------

    def relayed_command(self, args: bytes | memoryview) -> Deferred[Pieces]:
        """The TCLO handler: always a Vix reply (in pieces, for the dispatcher to join), whatever arrives."""
        return ensureDeferred(self._relayed(args))

    async def _relayed(self, args: bytes | memoryview) -> Pieces:
        request: vix.Request | None = None
        try:
            _, raw = vix.split_relayed(args)
            request = vix.decode_request(raw)
            result = await self._perform(request)
            if isinstance(result, list):  # an HGFS reply's header and file data: joined once, behind the OK
                return vix.Reply(VixCode.OK, 0, binary=request.binary_reply, marked=True).pieces(result)
            return vix.Reply(VixCode.OK, 0, result, binary=request.binary_reply, marked=True).pieces()
        except VixOperationError as error:
            code, errno = _rewritten(request, error.code), error.errno
            self.log.info("Vix op {op} failed: {error}", op=request and request.op, error=str(error))
        except vix.VixCodecError as error:
            code, errno = error.code, 0
            self.log.info("bad Vix request: {error}", error=str(error))
        except Exception:
            self.log.failure("Vix op {op} failed unexpectedly", op=request and request.op)
            code, errno = VixCode.FAIL, 0
        return vix.Reply(code, errno, b"", binary=bool(request and request.binary_reply), marked=True).pieces()

    def tools_properties(self, args: bytes) -> bytes:
        """``Vix_1_Get_ToolsProperties``: the base64 property list (no login needed)."""
        return vix.Reply(VixCode.OK, 0, self._properties(), binary=True).encode()

    # -- dispatch ---------------------------------------------------------------------------------

    async def _perform(self, request: vix.Request) -> bytes | Pieces:
        op = request.op
        extra = self.extra_ops.get(op)
        # An extra op the codec knows is checked before the login too (an HGFS request without a packet).
        body = vix.decode_body(op, request.body) if extra is None or op in vix.BODIES else vix.NoBody()
        self._check_enabled(op)
        if op == Op.GET_TOOLS_STATE:
            return self._properties()
        user = await self._login(request)
        if extra is not None:
            result = extra(request, user)
            return (await result) if isinstance(result, Deferred) else result
        streamed = self._process_stream(op, body, user)
        if streamed is not None:
            return streamed
        if op in FILE_OPS:
            return await self.files.run(op, body, user)
        if isinstance(body, vix.ListProcesses):
            return await self._list_processes(body)
        return self._process_op(op, body, user)

    def _check_enabled(self, op: int) -> None:
        api = API_NAMES.get(op)
        if "all" in self.disabled or (api is not None and api in self.disabled):
            raise VixOperationError(VixCode.OPERATION_DISABLED, f"{api or op} is disabled in tools.conf")

    async def _login(self, request: vix.Request) -> GuestUser:
        credentials = vix.decode_credentials(request.credential_type, request.credential)
        if request.op not in RECHECKED_LATER:
            return await self.authenticator.authenticate(credentials)
        user = self.recent_logins.get(credentials)
        if user is None:
            user = await self.authenticator.authenticate(credentials)
            self.recent_logins.remember(credentials, user)
        return user

    def _process_stream(self, op: int, body: vix.Body, user: GuestUser) -> bytes | None:
        """A transfer of ``/proc/<pid>/stdin|stdout|stderr`` of a process we started with I/O (HGFS moves it).

        Unlike the Go toolbox, output is ready at once: it streams while the
        process runs, so the VMX is never told to come back (CannotAccessFile).
        """
        if op not in (Op.INITIATE_FILE_TRANSFER_FROM_GUEST, Op.INITIATE_FILE_TRANSFER_TO_GUEST):
            return None
        match = STREAM_PATH.match(getattr(body, "path", ""))
        record = self.processes.get(int(match.group(1))) if match else None
        if match is None or record is None or record.io is None:
            return None  # a real /proc path: the file system answers
        if user.uid != 0 and user.name != record.owner:
            raise VixOperationError(VixCode.FILE_ACCESS_ERROR, f"{user.name} may not open {match.group(0)}")
        writing = op == Op.INITIATE_FILE_TRANSFER_TO_GUEST
        if writing != (match.group(2) == "stdin"):
            direction = "read" if writing else "write"
            raise VixOperationError(VixCode.FILE_ACCESS_ERROR, f"{match.group(0)} is {direction}-only")
        if writing:
            return b""
        stream = getattr(record.io, match.group(2))
        return vix.FileInfo(match.group(0), size=stream.size, permissions=0o400).encode().encode("utf-8")

    def _process_op(self, op: int, body: vix.Body, user: GuestUser) -> bytes:
        if isinstance(body, vix.StartProgram):
            return self._start_program(body, user)
        if isinstance(body, vix.KillProcess):
            self.processes.kill(body.pid, user)
            return b""
        if isinstance(body, vix.ReadEnvironment):
            return self._read_environment(body, user)
        if op == Op.VALIDATE_CREDENTIALS:
            return b""
        raise VixOperationError(VixCode.UNRECOGNIZED_COMMAND_IN_GUEST, f"opcode {op}")

    def _start_program(self, body: vix.StartProgram, user: GuestUser) -> bytes:
        environment = {}
        for entry in body.environment:
            key, equals, value = entry.partition("=")
            if not key or not equals:
                raise VixOperationError(VixCode.INVALID_ARG, f"environment entry {entry!r} is not NAME=VALUE")
            environment[key] = value
        request = StartRequest(body.program_path, body.arguments or "", body.working_directory, environment)
        return b"%d" % self.processes.start(request, user).pid

    def _read_environment(self, body: vix.ReadEnvironment, user: GuestUser) -> bytes:
        environment = user.environment()
        if not body.names:
            return vix.encode_environment(f"{k}={v}" for k, v in environment.items())
        return vix.encode_environment(f"{n}={environment[n]}" for n in body.names if n in environment)

    # -- process listings, paged when they outgrow one reply ------------------------------------------

    async def _list_processes(self, body: vix.ListProcesses) -> bytes:
        if body.key:
            return self._next_page(body.key, body.offset)
        text = "".join(p.encode() for p in await self.processes.list(body.pids)).encode("utf-8")
        if len(text) <= self.max_result:
            return text
        key = self._next_key
        self._next_key += 1
        timer = self.reactor.callLater(LISTING_KEEP, self._listings.pop, key, None)  # type: ignore[attr-defined]
        self._listings[key] = _PagedListing(text, timer)
        chunk = self._chunk_size(with_key=True)
        return vix.ProcessPage(text[:chunk], len(text) - chunk, key, len(text)).encode()

    def _next_page(self, key: int, offset: int) -> bytes:
        listing = self._listings.get(key)
        if listing is None or offset > len(listing.text):
            raise VixOperationError(VixCode.INVALID_ARG, f"no process listing {key} at offset {offset}")
        chunk = listing.text[offset : offset + self._chunk_size(with_key=False)]
        left = len(listing.text) - offset - len(chunk)
        if left == 0:
            listing.timer.cancel()
            del self._listings[key]
        return vix.ProcessPage(chunk, left).encode()

    def _chunk_size(self, *, with_key: bool) -> int:
        header = len("<key>4294967295</key><totalSize>4294967295</totalSize>") if with_key else 0
        return self.max_result - header - len("<leftToSend>4294967295</leftToSend>")

    # -- properties ---------------------------------------------------------------------------------

    def _properties(self) -> bytes:
        name = f"{platform.system()} {platform.release()}"
        properties: list[tuple[int, vix.PropertyType, Any]] = [
            (vix.Property.GUEST_OS_VERSION, vix.PropertyType.STRING, name),
            (vix.Property.GUEST_OS_VERSION_SHORT, vix.PropertyType.STRING, platform.system().lower()),
            (vix.Property.GUEST_TOOLS_PRODUCT_NAME, vix.PropertyType.STRING, "twisted_vmtools"),
            (vix.Property.GUEST_TOOLS_VERSION, vix.PropertyType.STRING, __version__),
            (vix.Property.GUEST_NAME, vix.PropertyType.STRING, socket.gethostname()),
            (vix.Property.GUEST_TOOLS_API_OPTIONS, vix.PropertyType.INTEGER, 0),
            (vix.Property.GUEST_OS_FAMILY, vix.PropertyType.INTEGER, 1),
        ]
        for prop, op in ENABLED_PROPERTIES.items():
            enabled = "all" not in self.disabled and API_NAMES.get(op) not in self.disabled
            properties.append((prop, vix.PropertyType.BOOL, enabled))
        return base64.b64encode(vix.encode_properties(properties))
