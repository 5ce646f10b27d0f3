"""`IGuestOperations`: vSphere's GuestFileManager and GuestProcessManager, on the simulated VMX.

Each method is named after its vSphere counterpart (``StartProgramInGuest`` →
`start_program`), takes the guest login first (``auth``, vSphere's
NamePasswordAuthentication) and returns a Deferred of a typed result, or
fails with `GuestOperationError` (the Vix code and vSphere's fault name).
`GuestOperations` implements it over a `VixClient`.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from ..codecs import hgfs, vix
from ..codecs.hgfs import Status
from ..codecs.vix import Credentials, FileInfo, Op, ProcessInfo
from .hgfs_client import HGFSClientError, Sender, with_session
from .vix_client import TOOLS_NOT_RUNNING, GuestOperationError, Send, VixClient

__all__ = [
    "IGuestOperations", "GuestOperations", "GuestOperationError", "ProgramSpec", "FileListing", "FileAttributes",
    "FileTransferInformation", "Credentials", "FileInfo", "ProcessInfo",
]

MAX_PROCESS_PAGES = 4096  # a guest paging a process listing forever is cut off


@dataclass(frozen=True)
class ProgramSpec:
    """vSphere's GuestProgramSpec."""

    program_path: str
    arguments: str = ""
    working_directory: str | None = None
    env_variables: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileListing:
    """vSphere's GuestListFileInfo: the entries and how many are left after them."""

    files: tuple[FileInfo, ...]
    remaining: int


@dataclass(frozen=True)
class FileAttributes:
    """vSphere's GuestPosixFileAttributes: None leaves a value as it is."""

    modification_time: int | None = None
    access_time: int | None = None
    owner_id: int | None = None
    group_id: int | None = None
    permissions: int | None = None

    def request(self, path: str) -> vix.SetAttributes:
        flags = vix.AttributeFlags(0)
        for value, flag in ((self.modification_time, vix.AttributeFlags.MODIFY_DATE),
                            (self.access_time, vix.AttributeFlags.ACCESS_DATE),
                            (self.owner_id, vix.AttributeFlags.UNIX_OWNERID),
                            (self.group_id, vix.AttributeFlags.UNIX_GROUPID),
                            (self.permissions, vix.AttributeFlags.UNIX_PERMISSIONS)):
            if value is not None:
                flags |= flag
        return vix.SetAttributes(
            path, int(flags), self.access_time or 0, self.modification_time or 0,
            -1 if self.owner_id is None else self.owner_id, -1 if self.group_id is None else self.group_id,
            self.permissions or 0,
        )


@dataclass(frozen=True)
class FileTransferInformation:
    """What InitiateFileTransferFromGuest answers: the file's attributes and size (the bytes move over HGFS)."""

    attributes: FileInfo
    size: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", self.attributes.size)


class IGuestOperations(Interface):
    """vSphere guest operations on one VM."""

    def start_program(auth: Credentials, spec: ProgramSpec) -> Deferred[int]:
        """StartProgramInGuest: the pid, at once."""

    def list_processes(auth: Credentials, pids: tuple[int, ...] = ()) -> Deferred[list[ProcessInfo]]:
        """ListProcessesInGuest: every process, or only ``pids``; exit code and end time for those we started."""

    def terminate_process(auth: Credentials, pid: int) -> Deferred[None]:
        """TerminateProcessInGuest."""

    def read_environment_variable(auth: Credentials, names: tuple[str, ...] = ()) -> Deferred[list[str]]:
        """ReadEnvironmentVariableInGuest: ``NAME=VALUE`` entries (all of them if no names)."""

    def list_files(auth: Credentials, file_path: str, index: int = 0, max_results: int = 50,
                   match_pattern: str | None = None) -> Deferred[FileListing]:
        """ListFilesInGuest: one page."""

    def make_directory(auth: Credentials, directory_path: str, create_parent_directories: bool = False
                       ) -> Deferred[None]:
        """MakeDirectoryInGuest."""

    def delete_file(auth: Credentials, file_path: str) -> Deferred[None]:
        """DeleteFileInGuest."""

    def delete_directory(auth: Credentials, directory_path: str, recursive: bool = False) -> Deferred[None]:
        """DeleteDirectoryInGuest."""

    def move_file(auth: Credentials, src_file_path: str, dst_file_path: str, overwrite: bool = False
                  ) -> Deferred[None]:
        """MoveFileInGuest."""

    def move_directory(auth: Credentials, src_directory_path: str, dst_directory_path: str) -> Deferred[None]:
        """MoveDirectoryInGuest."""

    def create_temporary_file(auth: Credentials, prefix: str = "", suffix: str = "",
                              directory_path: str | None = None) -> Deferred[str]:
        """CreateTemporaryFileInGuest: its path."""

    def create_temporary_directory(auth: Credentials, prefix: str = "", suffix: str = "",
                                   directory_path: str | None = None) -> Deferred[str]:
        """CreateTemporaryDirectoryInGuest: its path."""

    def change_file_attributes(auth: Credentials, guest_file_path: str, file_attributes: FileAttributes
                               ) -> Deferred[None]:
        """ChangeFileAttributesInGuest."""

    def initiate_file_transfer_from_guest(auth: Credentials, guest_file_path: str
                                          ) -> Deferred[FileTransferInformation]:
        """InitiateFileTransferFromGuest: the checks and the file's attributes."""

    def initiate_file_transfer_to_guest(auth: Credentials, guest_file_path: str, file_attributes: FileAttributes,
                                        file_size: int, overwrite: bool = False) -> Deferred[None]:
        """InitiateFileTransferToGuest: the checks (nothing is written yet)."""

    def download(auth: Credentials, guest_file_path: str, write: Callable[[bytes], object]) -> Deferred[int]:
        """InitiateFileTransferFromGuest, then the bytes over HGFS into ``write`` (e.g. an
        ``IConsumer``'s ``write``; a Deferred it returns is waited for); fires with the count.
        The packets carry the login: the guest reads as that account.  A directory (or
        ``/archive:/path[?format=tgz&prefix=…]``) comes as a tar stream; ``/proc/<pid>/stdout|stderr``
        of a program started with I/O streams its output."""

    def upload(auth: Credentials, guest_file_path: str, read: Callable[[int], bytes | Awaitable[bytes]],
               file_attributes: FileAttributes | None = None, overwrite: bool = False) -> Deferred[int]:
        """InitiateFileTransferToGuest, then ``read(n)`` (until b"") over HGFS, then the attributes;
        fires with the count.  The guest writes as the login's account and renames the upload into
        place only when it is complete.  To a directory (or ``/archive:/path``) ``read`` is a tar
        stream, unpacked there; to ``/proc/<pid>/stdin`` it feeds the program."""


@implementer(IGuestOperations)
class GuestOperations:
    """`IGuestOperations` over Vix: ``send`` delivers a TCLO command to the guest and returns its reply."""

    def __init__(self, send: Send) -> None:
        self.client = VixClient(send)

    def hgfs_sender(self, auth: Credentials) -> Sender:
        """HGFS packets as the VMX sends a transfer's: Vix HGFS_SEND_PACKET commands carrying the login,
        so that the guest performs each as that account (vixTools.c VixToolsProcessHgfsPacket)."""

        def send(packet: bytes) -> Deferred[hgfs.Data]:
            sent: Deferred[hgfs.Data] = self._call(Op.HGFS_SEND_PACKET, vix.HgfsPacket(packet), auth)  # type: ignore[assignment]
            return sent.addErrback(_undelivered)

        return send

    def _call(self, op: Op, body: vix.Body, auth: Credentials | None) -> Deferred[bytes]:
        return ensureDeferred(self.client.call(op, body, auth))

    def _done(self, op: Op, body: vix.Body, auth: Credentials) -> Deferred[None]:
        return self._call(op, body, auth).addCallback(lambda _: None)

    def start_program(self, auth: Credentials, spec: ProgramSpec) -> Deferred[int]:
        body = vix.StartProgram(spec.program_path, spec.arguments or None, spec.working_directory,
                                tuple(spec.env_variables))
        return self._call(Op.START_PROGRAM, body, auth).addCallback(_pid)

    def list_processes(self, auth: Credentials, pids: tuple[int, ...] = ()) -> Deferred[list[ProcessInfo]]:
        return ensureDeferred(self._list_processes(auth, tuple(pids)))

    async def _list_processes(self, auth: Credentials, pids: tuple[int, ...]) -> list[ProcessInfo]:
        result = await self.client.call(Op.LIST_PROCESSES_EX, vix.ListProcesses(pids), auth)
        page = vix.decode_process_page(result)
        if page is not None:
            result = await self._rest_of_listing(auth, page)
        return vix.decode_processes(result.decode("utf-8", "replace"))

    async def _rest_of_listing(self, auth: Credentials, first: vix.ProcessPage) -> bytes:
        if first.key is None:
            raise GuestOperationError(vix.VixCode.FAIL, "a paged process listing without its key")
        text = first.chunk
        left = first.left_to_send
        for _ in range(MAX_PROCESS_PAGES):
            if not left:
                return text
            result = await self.client.call(Op.LIST_PROCESSES_EX, vix.ListProcesses(key=first.key,
                                                                                     offset=len(text)), auth)
            page = vix.decode_process_page(result)
            if page is None or not page.chunk:
                raise GuestOperationError(vix.VixCode.FAIL, "a process listing page without content")
            text += page.chunk
            left = page.left_to_send
        raise GuestOperationError(vix.VixCode.FAIL, "the guest's process listing does not end")

    def terminate_process(self, auth: Credentials, pid: int) -> Deferred[None]:
        return self._done(Op.TERMINATE_PROCESS, vix.KillProcess(pid), auth)

    def read_environment_variable(self, auth: Credentials, names: tuple[str, ...] = ()) -> Deferred[list[str]]:
        reading = self._call(Op.READ_ENV_VARIABLES, vix.ReadEnvironment(tuple(names)), auth)
        return reading.addCallback(vix.decode_environment)

    def list_files(self, auth: Credentials, file_path: str, index: int = 0, max_results: int = 50,
                   match_pattern: str | None = None) -> Deferred[FileListing]:
        body = vix.ListFiles(file_path, match_pattern, index, max_results)
        return self._call(Op.LIST_FILES, body, auth).addCallback(_listing)

    def make_directory(self, auth: Credentials, directory_path: str, create_parent_directories: bool = False
                       ) -> Deferred[None]:
        return self._done(Op.CREATE_DIRECTORY_EX, vix.PathRequest(directory_path, create_parent_directories), auth)

    def delete_file(self, auth: Credentials, file_path: str) -> Deferred[None]:
        return self._done(Op.DELETE_GUEST_FILE_EX, vix.SimpleFile(file_path), auth)

    def delete_directory(self, auth: Credentials, directory_path: str, recursive: bool = False) -> Deferred[None]:
        return self._done(Op.DELETE_GUEST_DIRECTORY_EX, vix.PathRequest(directory_path, recursive), auth)

    def move_file(self, auth: Credentials, src_file_path: str, dst_file_path: str, overwrite: bool = False
                  ) -> Deferred[None]:
        return self._done(Op.MOVE_GUEST_FILE_EX, vix.Move(src_file_path, dst_file_path, overwrite), auth)

    def move_directory(self, auth: Credentials, src_directory_path: str, dst_directory_path: str) -> Deferred[None]:
        return self._done(Op.MOVE_GUEST_DIRECTORY, vix.Move(src_directory_path, dst_directory_path), auth)

    def create_temporary_file(self, auth: Credentials, prefix: str = "", suffix: str = "",
                              directory_path: str | None = None) -> Deferred[str]:
        body = vix.CreateTemporary(prefix, suffix, directory_path or "")
        return self._call(Op.CREATE_TEMPORARY_FILE_EX, body, auth).addCallback(_text)

    def create_temporary_directory(self, auth: Credentials, prefix: str = "", suffix: str = "",
                                   directory_path: str | None = None) -> Deferred[str]:
        body = vix.CreateTemporary(prefix, suffix, directory_path or "")
        return self._call(Op.CREATE_TEMPORARY_DIRECTORY, body, auth).addCallback(_text)

    def change_file_attributes(self, auth: Credentials, guest_file_path: str, file_attributes: FileAttributes
                               ) -> Deferred[None]:
        return self._done(Op.SET_GUEST_FILE_ATTRIBUTES, file_attributes.request(guest_file_path), auth)

    def initiate_file_transfer_from_guest(self, auth: Credentials, guest_file_path: str
                                          ) -> Deferred[FileTransferInformation]:
        checking = self._call(Op.INITIATE_FILE_TRANSFER_FROM_GUEST, vix.ListFiles(guest_file_path), auth)
        return checking.addCallback(_transfer_information)

    def initiate_file_transfer_to_guest(self, auth: Credentials, guest_file_path: str,
                                        file_attributes: FileAttributes, file_size: int, overwrite: bool = False
                                        ) -> Deferred[None]:
        if file_size < 0:
            return fail(GuestOperationError(vix.VixCode.INVALID_ARG, "a negative file size"))
        return self._done(Op.INITIATE_FILE_TRANSFER_TO_GUEST, vix.TransferToGuest(guest_file_path, overwrite), auth)

    def download(self, auth: Credentials, guest_file_path: str, write: Callable[[bytes], object]) -> Deferred[int]:
        return ensureDeferred(self._download(auth, guest_file_path, write))

    async def _download(self, auth: Credentials, path: str, write: Callable[[bytes], object]) -> int:
        try:
            await self.initiate_file_transfer_from_guest(auth, path)
        except GuestOperationError as error:
            path = await self._as_archive(error, path, lambda tree: self.initiate_file_transfer_from_guest(auth, tree))
        return await with_session(self.hgfs_sender(auth), lambda client: client.download(path, write))  # type: ignore[no-any-return]

    def upload(self, auth: Credentials, guest_file_path: str, read: Callable[[int], bytes | Awaitable[bytes]],
               file_attributes: FileAttributes | None = None, overwrite: bool = False) -> Deferred[int]:
        return ensureDeferred(self._upload(auth, guest_file_path, read, file_attributes or FileAttributes(),
                                           overwrite))

    async def _upload(self, auth: Credentials, path: str, read: Callable[[int], bytes | Awaitable[bytes]],
                      attributes: FileAttributes, overwrite: bool) -> int:
        # vSphere gives the size first; a stream's is not known, and the guest's checks do not use it.
        try:
            await self.initiate_file_transfer_to_guest(auth, path, attributes, 0, overwrite)
        except GuestOperationError as error:
            path = await self._as_archive(
                error, path, lambda tree: self.initiate_file_transfer_to_guest(auth, tree, attributes, 0, overwrite))
        count: int = await with_session(
            self.hgfs_sender(auth), lambda client: client.upload(path, read, overwrite=overwrite, permissions=None))
        if attributes != FileAttributes():
            await self.change_file_attributes(auth, _real_path(path), attributes)
        return count

    @staticmethod
    async def _as_archive(error: GuestOperationError, path: str, check: Callable[[str], Awaitable[object]]) -> str:
        """A directory moves as an archive: vmtoolsd's checks call it NotAFile, the guest's archive path takes it."""
        if error.code != vix.VixCode.NOT_A_FILE or path.startswith(ARCHIVE_PREFIX):
            raise error
        tree = ARCHIVE_PREFIX + path
        await check(tree)
        return tree

    def tools_properties(self) -> Deferred[dict[int, vix.PropertyValue]]:
        """GET_TOOLS_STATE: the guest's property list (no login)."""
        reading = self._call(Op.GET_TOOLS_STATE, vix.NoBody(), None)
        return reading.addCallback(lambda result: vix.decode_properties(base64.b64decode(result)))


def _undelivered(failure: Failure) -> Failure:
    """A packet the guest never answered is the HGFS client's transport error (it then drops the session)."""
    error = failure.value
    if isinstance(error, GuestOperationError) and error.code == TOOLS_NOT_RUNNING:
        return Failure(HGFSClientError(0, Status.TRANSPORT_ERROR, str(error)))
    return failure


ARCHIVE_PREFIX = "/archive:"  # the guest's virtual path for a tree moved as a tar stream


def _real_path(path: str) -> str:
    """The guest path an archive path (``/archive:/dir?format=tgz``) unpacks into."""
    return path[len(ARCHIVE_PREFIX) :].partition("?")[0] if path.startswith(ARCHIVE_PREFIX) else path


def _pid(result: bytes) -> int:
    try:
        return int(result)
    except ValueError:
        raise GuestOperationError(vix.VixCode.FAIL, f"StartProgram answered {result[:40]!r}, not a pid") from None


def _text(result: bytes) -> str:
    return result.decode("utf-8", "replace")


def _listing(result: bytes) -> FileListing:
    try:
        decoded = vix.decode_file_listing(result)
    except vix.VixCodecError as error:
        raise GuestOperationError(error.code, str(error)) from None
    return FileListing(decoded.files, decoded.remaining)


def _transfer_information(result: bytes) -> FileTransferInformation:
    infos = vix.decode_file_infos(result.decode("utf-8", "replace"))
    if len(infos) != 1:
        raise GuestOperationError(vix.VixCode.FAIL, "InitiateFileTransferFromGuest answered no file")
    return FileTransferInformation(infos[0])
