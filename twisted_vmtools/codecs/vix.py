"""Vix guest operations over TCLO: the request and reply codec, sans I/O.

The VMX relays a vSphere guest operation as the TCLO command
``Vix_1_Relayed_Command "<name>"\\0<request>``.  The request is a packed
little-endian `VixCommandRequestHeader` (51 bytes), an op-specific body (a
fixed struct, then strings), and the credential.  The guest answers
``OK <error> <additionalError> <result>\\0``: the RPC itself always succeeds,
the Vix error says whether the operation did.

Both peers use this module: the guest's command server decodes requests and
encodes replies, the simulated VMX's client does the reverse.  Every decoder
raises `VixCodecError` (carrying the Vix code a guest answers with) and
nothing else.  Facts: shared/reference/protocol.md §7, open-vm-tools'
``vixCommands.h``, ``vix.h``, ``vixOpenSource.h``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import errno
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import ClassVar, Self

from .errors import CodecError
from .tclo import VIX_GET_TOOLS_PROPERTIES, VIX_RELAYED_COMMAND

RELAYED_COMMAND = VIX_RELAYED_COMMAND
GET_TOOLS_PROPERTIES = VIX_GET_TOOLS_PROPERTIES

MAGIC = 0xD00D0001
MESSAGE_VERSION = 5
MAX_REQUEST = 65536  # VIX_COMMAND_MAX_REQUEST_SIZE: what a guest accepts
MAX_MESSAGE = 16 * 1024 * 1024  # VixMsg_ValidateMessage's ceiling
# The guest answers in one TCLO reply: GUESTMSG_MAX_IN_SIZE (64 KiB) less the "OK <err> <err> " prefix.
MAX_RESULT = 65536 - 64
BINARY_MARK = b"#"  # foundryToolsDaemon.c: ends the text part of a binary reply to a relayed command


class CommonFlags(enum.IntFlag):
    REQUEST = 0x01
    REPORT_EVENT = 0x02
    FORWARD_TO_GUEST = 0x04
    GUEST_RETURNS_STRING = 0x08
    GUEST_RETURNS_INTEGER_STRING = 0x10
    GUEST_RETURNS_PROPERTY_LIST = 0x40
    GUEST_RETURNS_BINARY = 0x80


class RequestFlags(enum.IntFlag):
    ONLY_RELOAD_NETWORKS = 0x01
    RUN_IN_ANY_VMX_STATE = 0x04
    REQUIRES_INTERACTIVE_ENVIRONMENT = 0x08
    INCLUDES_AUTH_DATA_V1 = 0x10
    ESCAPE_XML_DATA = 0x40
    HAS_HASHED_SHARED_SECRET = 0x80


AUTH_DATA_V1_SIZE = 44  # VixMsgAuthDataV1, appended when INCLUDES_AUTH_DATA_V1 is set


class Op(enum.IntEnum):
    """The guest opcodes (``VIX_COMMAND_*``) this project speaks."""

    GET_TOOLS_STATE = 62
    KILL_PROCESS = 85
    HGFS_SEND_PACKET = 84
    LIST_FILES = 177
    CREATE_DIRECTORY_EX = 178
    MOVE_GUEST_FILE_EX = 179
    MOVE_GUEST_DIRECTORY = 180
    CREATE_TEMPORARY_FILE_EX = 181
    CREATE_TEMPORARY_DIRECTORY = 182
    SET_GUEST_FILE_ATTRIBUTES = 183
    START_PROGRAM = 185
    LIST_PROCESSES_EX = 186
    READ_ENV_VARIABLES = 187
    INITIATE_FILE_TRANSFER_FROM_GUEST = 188
    INITIATE_FILE_TRANSFER_TO_GUEST = 189
    VALIDATE_CREDENTIALS = 192
    TERMINATE_PROCESS = 193
    DELETE_GUEST_FILE_EX = 194
    DELETE_GUEST_DIRECTORY_EX = 195


class CredentialType(enum.IntEnum):
    NONE = 0
    NAME_PASSWORD = 1
    ANONYMOUS = 2
    ROOT = 3
    NAME_PASSWORD_OBFUSCATED = 4
    CONSOLE_USER = 5
    HOST_CONFIG_SECRET = 6
    HOST_CONFIG_HASHED_SECRET = 7
    NAMED_INTERACTIVE_USER = 8
    TICKETED_SESSION = 9
    SSPI = 10
    SAML_BEARER_TOKEN = 11
    SAML_BEARER_TOKEN_HOST_VERIFIED = 12


NAME_PASSWORD_TYPES = frozenset(
    {CredentialType.NAME_PASSWORD, CredentialType.NAME_PASSWORD_OBFUSCATED, CredentialType.NAMED_INTERACTIVE_USER}
)


class VixCode(enum.IntEnum):
    """The Vix errors a guest answers with (``VIX_E_*``)."""

    OK = 0
    FAIL = 1
    OUT_OF_MEMORY = 2
    INVALID_ARG = 3
    FILE_NOT_FOUND = 4
    OBJECT_IS_BUSY = 5
    NOT_SUPPORTED = 6
    FILE_ERROR = 7
    DISK_FULL = 8
    FILE_ALREADY_EXISTS = 12
    FILE_ACCESS_ERROR = 13
    FILE_TOO_BIG = 21
    FILE_NAME_INVALID = 22
    AUTHENTICATION_FAIL = 35
    GUEST_USER_PERMISSIONS = 3015
    UNRECOGNIZED_COMMAND_IN_GUEST = 3025
    TOO_MANY_LOGONS = 3046
    INVALID_LOGIN_CREDENTIALS = 3050
    INVALID_MESSAGE_HEADER = 10000
    INVALID_MESSAGE_BODY = 10001
    NOT_A_FILE = 20001
    NOT_A_DIRECTORY = 20002
    NO_SUCH_PROCESS = 20003
    FILE_NAME_TOO_LONG = 20004
    OPERATION_DISABLED = 20005
    DIRECTORY_NOT_EMPTY = 20006


# The vSphere fault a client sees for each Vix error (what hostd's guest-operations layer raises).
FAULT_NAMES: dict[int, str] = {
    VixCode.FAIL: "GuestOperationsFault",
    VixCode.OUT_OF_MEMORY: "GuestOperationsFault",
    VixCode.INVALID_ARG: "InvalidArgument",
    VixCode.FILE_NOT_FOUND: "FileNotFound",
    VixCode.OBJECT_IS_BUSY: "GuestOperationsFault",
    VixCode.NOT_SUPPORTED: "OperationNotSupportedByGuest",
    VixCode.FILE_ERROR: "FileFault",
    VixCode.DISK_FULL: "NoDiskSpace",
    VixCode.FILE_ALREADY_EXISTS: "FileAlreadyExists",
    VixCode.FILE_ACCESS_ERROR: "CannotAccessFile",
    VixCode.FILE_TOO_BIG: "FileTooLarge",
    VixCode.FILE_NAME_INVALID: "InvalidArgument",
    VixCode.AUTHENTICATION_FAIL: "InvalidGuestLogin",
    VixCode.GUEST_USER_PERMISSIONS: "GuestPermissionDenied",
    VixCode.UNRECOGNIZED_COMMAND_IN_GUEST: "OperationNotSupportedByGuest",
    VixCode.TOO_MANY_LOGONS: "GuestOperationsUnavailable",
    VixCode.INVALID_LOGIN_CREDENTIALS: "InvalidGuestLogin",
    VixCode.INVALID_MESSAGE_HEADER: "GuestOperationsFault",
    VixCode.INVALID_MESSAGE_BODY: "GuestOperationsFault",
    VixCode.NOT_A_FILE: "NotAFile",
    VixCode.NOT_A_DIRECTORY: "NotADirectory",
    VixCode.NO_SUCH_PROCESS: "GuestProcessNotFound",
    VixCode.FILE_NAME_TOO_LONG: "FileNameTooLong",
    VixCode.OPERATION_DISABLED: "GuestOperationsUnavailable",
    VixCode.DIRECTORY_NOT_EMPTY: "DirectoryNotEmpty",
}


# vmtoolsd's errno translation (Vix_TranslateErrno), for guest operations that fail in the OS.
_ERRNO_CODES: dict[int, int] = {
    errno.EPERM: VixCode.FILE_ACCESS_ERROR, errno.EACCES: VixCode.FILE_ACCESS_ERROR,
    errno.EAGAIN: VixCode.OBJECT_IS_BUSY, errno.EBUSY: VixCode.OBJECT_IS_BUSY,
    errno.EEXIST: VixCode.FILE_ALREADY_EXISTS, errno.EFBIG: VixCode.FILE_TOO_BIG,
    errno.ENOTEMPTY: VixCode.DIRECTORY_NOT_EMPTY, errno.ENOTDIR: VixCode.NOT_A_DIRECTORY,
    errno.ETIMEDOUT: VixCode.FILE_ERROR, errno.ENOBUFS: VixCode.FILE_ERROR, errno.EIO: VixCode.FILE_ERROR,
    errno.EMFILE: VixCode.FILE_ERROR, errno.ENFILE: VixCode.FILE_ERROR, errno.EMLINK: VixCode.FILE_ERROR,
    errno.EROFS: VixCode.FILE_ERROR, errno.ENODEV: VixCode.FILE_NOT_FOUND, errno.ENOENT: VixCode.FILE_NOT_FOUND,
    errno.ENOSPC: VixCode.DISK_FULL, errno.EISDIR: VixCode.NOT_A_FILE, errno.ESRCH: VixCode.NO_SUCH_PROCESS,
    errno.ENAMETOOLONG: VixCode.FILE_NAME_TOO_LONG, errno.EMSGSIZE: VixCode.INVALID_ARG,
    errno.EINVAL: VixCode.INVALID_ARG, errno.ELOOP: VixCode.OUT_OF_MEMORY, errno.ENOMEM: VixCode.OUT_OF_MEMORY,
}


def errno_code(number: int | None) -> int:
    """The Vix error vmtoolsd answers for an OS error number."""
    return _ERRNO_CODES.get(number or 0, VixCode.FAIL)


def fault_name(code: int) -> str:
    """vSphere's name for the fault a Vix error becomes."""
    return FAULT_NAMES.get(code, "GuestOperationsFault")


def code_name(code: int) -> str:
    try:
        return "VIX_E_" + VixCode(code).name if code else "VIX_OK"
    except ValueError:
        return f"VIX error {code}"


class VixCodecError(CodecError):
    """A Vix message that cannot be decoded; ``code`` is the Vix error a guest answers with."""

    def __init__(self, message: str, code: int = VixCode.INVALID_MESSAGE_BODY) -> None:
        super().__init__(message)
        self.code = code


class VixHeaderError(VixCodecError):
    def __init__(self, message: str) -> None:
        super().__init__(message, VixCode.INVALID_MESSAGE_HEADER)


# -- the request header ------------------------------------------------------------------------

_REQUEST_HEADER = struct.Struct("<IHIIIIBIIIQII")
REQUEST_HEADER_SIZE = _REQUEST_HEADER.size  # 51
_COMMON_HEADER_SIZE = 23


@dataclass(frozen=True)
class Request:
    """One decoded request: the header's fields, the raw body and the credential bytes."""

    op: int
    body: bytes = b""
    credential: bytes = b""
    credential_type: int = CredentialType.NONE
    common_flags: int = CommonFlags.REQUEST
    request_flags: int = 0
    timeout: int = 0
    cookie: int = 0
    client_handle: int = 0
    auth_data: bytes = b""

    def encode(self) -> bytes:
        auth = self.auth_data if self.request_flags & RequestFlags.INCLUDES_AUTH_DATA_V1 else b""
        total = REQUEST_HEADER_SIZE + len(self.body) + len(self.credential) + len(auth)
        header = _REQUEST_HEADER.pack(
            MAGIC, MESSAGE_VERSION, total, REQUEST_HEADER_SIZE, len(self.body), len(self.credential),
            self.common_flags, self.op, self.request_flags, self.timeout, self.cookie, self.client_handle,
            self.credential_type,
        )
        return header + self.body + self.credential + auth

    @property
    def binary_reply(self) -> bool:
        return bool(self.common_flags & CommonFlags.GUEST_RETURNS_BINARY)


_COMMON_HEADER = struct.Struct("<IHIIIIB")


def decode_request(data: bytes | memoryview) -> Request:
    """Check a request's header and split it into body and credential (as vmtoolsd checks them).

    A header that is wrong or disagrees with itself is INVALID_MESSAGE_HEADER;
    a sound header with fewer bytes behind it than it announces is
    INVALID_MESSAGE_BODY (vmtoolsd reads on past the end and fails in the
    body); bytes beyond the announced total are ignored, as vmtoolsd ignores them.
    """
    if len(data) < _COMMON_HEADER_SIZE:
        raise VixHeaderError(f"Vix request of {len(data)} bytes is shorter than the {_COMMON_HEADER_SIZE}-byte header")
    magic, version, total, header_length, body_length, credential_length, _ = _COMMON_HEADER.unpack_from(data)
    if magic != MAGIC:
        raise VixHeaderError(f"bad Vix magic {magic:#x}")
    if version != MESSAGE_VERSION:
        raise VixHeaderError(f"unsupported Vix message version {version}")
    if header_length != REQUEST_HEADER_SIZE:
        raise VixHeaderError(f"Vix request header length {header_length}, expected {REQUEST_HEADER_SIZE}")
    if total > MAX_MESSAGE:
        raise VixHeaderError(f"Vix message of {total} bytes is over the {MAX_MESSAGE}-byte limit")
    request_flags = struct.unpack_from("<I", data, 27)[0] if len(data) >= 31 else 0
    auth_length = AUTH_DATA_V1_SIZE if request_flags & RequestFlags.INCLUDES_AUTH_DATA_V1 else 0
    expected = header_length + body_length + credential_length + auth_length
    if total != expected:
        raise VixHeaderError(f"Vix lengths disagree: total {total}, parts {expected}")
    if len(data) < total:
        raise VixCodecError(f"Vix request announces {total} bytes, {len(data)} arrived", VixCode.INVALID_MESSAGE_BODY)
    (_, _, _, _, _, _, common_flags, op, request_flags, timeout, cookie, client_handle,
     credential_type) = _REQUEST_HEADER.unpack_from(data)
    body_end = header_length + body_length
    credential_end = body_end + credential_length
    body = data[header_length:body_end]
    if op != Op.HGFS_SEND_PACKET:
        body = bytes(body)  # only a transfer's packet stays a view (of what ``data`` views): it is large
    return Request(
        op=op, body=body, credential=bytes(data[body_end:credential_end]),  # type: ignore[arg-type]
        credential_type=credential_type, common_flags=common_flags, request_flags=request_flags,
        timeout=timeout, cookie=cookie, client_handle=client_handle, auth_data=bytes(data[credential_end:total]),
    )


# -- the TCLO wrapping --------------------------------------------------------------------------


def relayed_command(request: bytes, name: bytes = b"vix") -> bytes:
    """The TCLO command carrying ``request``: ``Vix_1_Relayed_Command "<name>"\\0<request>``."""
    if b'"' in name or b"\0" in name or b"\\" in name:
        raise VixCodecError(f"request name {name!r} cannot be quoted")
    return RELAYED_COMMAND + b' "' + name + b'"\0' + request


def split_relayed(args: bytes | memoryview) -> tuple[bytes, memoryview]:
    """The TCLO arguments' request name and the Vix request after the first NUL (vmtoolsd's rule).

    The request is a view into ``args``: an HGFS packet inside it reaches the HGFS server uncopied.
    """
    found = _NUL.search(args)  # `re` searches a view too: an upload's packet is not copied to find the name
    if found is None:
        raise VixHeaderError("Vix_1_Relayed_Command without the NUL before its request")
    nul = found.start()
    return _unquote(bytes(args[:nul])), memoryview(args)[nul + 1 :]


_NUL = re.compile(b"\0")


def _unquote(text: bytes) -> bytes:
    text = text.strip()
    if len(text) >= 2 and text[:1] == b'"' and text[-1:] == b'"':
        return re.sub(rb"\\(.)", rb"\1", text[1:-1])
    return text


# -- credentials --------------------------------------------------------------------------------

_NAME_PASSWORD = struct.Struct("<II")


@dataclass(frozen=True)
class Credentials:
    """A guest login.  ``repr`` never shows the password."""

    user: str
    password: str = field(repr=False)
    type: int = CredentialType.NAME_PASSWORD_OBFUSCATED

    def encode(self) -> bytes:
        if self.type not in NAME_PASSWORD_TYPES:
            raise VixCodecError(f"cannot encode credential type {self.type}", VixCode.NOT_SUPPORTED)
        user, password = _utf8(self.user), _utf8(self.password)
        if b"\0" in user or b"\0" in password:
            raise VixCodecError("a guest user name or password cannot contain NUL", VixCode.INVALID_ARG)
        # Linux guests ignore the two lengths (protocol.md §7.2); the VMX fills them all the same.
        return _NAME_PASSWORD.pack(len(user), len(password)) + base64.b64encode(user + b"\0" + password + b"\0") + b"\0"


def decode_credentials(credential_type: int, data: bytes) -> Credentials:
    """A name/password credential; other types are `VixCode.NOT_SUPPORTED`, as on a Linux vmtoolsd."""
    if credential_type not in NAME_PASSWORD_TYPES:
        raise VixCodecError(f"credential type {credential_type} is not supported here", VixCode.NOT_SUPPORTED)
    if len(data) < _NAME_PASSWORD.size:
        raise VixCodecError("credential shorter than its header", VixCode.INVALID_LOGIN_CREDENTIALS)
    encoded = data[_NAME_PASSWORD.size :].split(b"\0", 1)[0]
    try:
        decoded = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise VixCodecError("credential is not base64", VixCode.INVALID_LOGIN_CREDENTIALS) from None
    parts = decoded.split(b"\0")
    if len(parts) < 2:
        raise VixCodecError("credential lacks the NUL between name and password", VixCode.INVALID_LOGIN_CREDENTIALS)
    try:
        return Credentials(parts[0].decode("utf-8"), parts[1].decode("utf-8"), credential_type)
    except UnicodeDecodeError:
        raise VixCodecError("credential is not UTF-8", VixCode.INVALID_LOGIN_CREDENTIALS) from None


# -- bodies ---------------------------------------------------------------------------------------


class _Reader:
    """Reads a body's strings after its fixed part; every shortfall is a `VixCodecError`."""

    def __init__(self, data: bytes, offset: int) -> None:
        self.data = data
        self.offset = offset

    def take(self, length: int) -> bytes:
        if length < 0 or self.offset + length > len(self.data):
            raise VixCodecError(f"Vix body too short: {length} bytes wanted at {self.offset} of {len(self.data)}")
        chunk = self.data[self.offset : self.offset + length]
        self.offset += length
        return chunk

    def string(self, length: int) -> str:
        """``GetString``: ``length`` bytes (the NUL not counted), then a NUL."""
        raw = self.take(length)
        if self.take(1) != b"\0":
            raise VixCodecError("Vix string not NUL-terminated")
        return _text(raw)

    def optional_string(self, length: int) -> str | None:
        """``GetOptionalString``: ``length`` counts the NUL; 0 means absent."""
        if length == 0:
            return None
        raw = self.take(length)
        if raw[-1:] != b"\0":
            raise VixCodecError("Vix string not NUL-terminated")
        return _text(raw[:-1])

    def strings(self, count: int, length: int) -> tuple[str, ...]:
        """``count`` NUL-terminated strings packed into ``length`` bytes."""
        raw = self.take(length)
        if count == 0:
            return ()
        if raw[-1:] != b"\0":
            raise VixCodecError("Vix string list not NUL-terminated")
        items = raw[:-1].split(b"\0")
        if len(items) != count:
            raise VixCodecError(f"Vix string list holds {len(items)} strings, header says {count}")
        return tuple(_text(item) for item in items)


def _text(raw: bytes) -> str:
    if b"\0" in raw:
        raise VixCodecError("Vix string contains a NUL")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise VixCodecError("Vix string is not UTF-8") from None


def _utf8(value: str) -> bytes:
    """``value`` as Vix carries text.  A str holding bytes that are not UTF-8 (a file name or argument
    decoded with surrogateescape) cannot go: refused with the codec's error, not a UnicodeEncodeError."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        shown = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise VixCodecError(f"'{shown[:80]}' is not UTF-8, the only text Vix carries", VixCode.INVALID_ARG) from None


def _string(value: str) -> tuple[int, bytes]:
    """(length without NUL, bytes with NUL) for ``GetString`` fields."""
    raw = _utf8(value)
    if b"\0" in raw:
        raise VixCodecError("a Vix string cannot contain NUL", VixCode.INVALID_ARG)
    return len(raw), raw + b"\0"


def _optional(value: str | None) -> tuple[int, bytes]:
    """(length with NUL, bytes) for ``GetOptionalString`` fields; None is absent."""
    if value is None:
        return 0, b""
    length, raw = _string(value)
    return length + 1, raw


def _string_list(values: Iterable[str]) -> tuple[int, int, bytes]:
    raws = [_string(v)[1] for v in values]
    data = b"".join(raws)
    return len(raws), len(data), data


class Body:
    """An op's request body.  Subclasses are frozen dataclasses with `OPS` and codec methods."""

    OPS: ClassVar[tuple[Op, ...]] = ()
    FIXED: ClassVar[struct.Struct]

    def encode(self) -> bytes:
        raise NotImplementedError

    def pieces(self) -> list[bytes | memoryview]:
        """The encoded body as pieces to be joined once (a large body is not copied to make it)."""
        return [self.encode()]

    @classmethod
    def decode(cls, data: bytes) -> Self:
        raise NotImplementedError

    @classmethod
    def _fixed(cls, data: bytes) -> tuple[tuple[int, ...], _Reader]:
        if len(data) < cls.FIXED.size:
            raise VixCodecError(f"{cls.__name__} body of {len(data)} bytes is shorter than {cls.FIXED.size}")
        return cls.FIXED.unpack_from(data), _Reader(data, cls.FIXED.size)

    @classmethod
    def _finish(cls, reader: _Reader) -> None:
        if reader.offset != len(reader.data):
            raise VixCodecError(f"{cls.__name__}: {len(reader.data) - reader.offset} stray bytes after the body")


@dataclass(frozen=True)
class NoBody(Body):
    OPS = (Op.GET_TOOLS_STATE, Op.VALIDATE_CREDENTIALS)

    def encode(self) -> bytes:
        return b""

    @classmethod
    def decode(cls, data: bytes) -> Self:
        return cls()  # the VMX may pad these; nothing in them is read


@dataclass(frozen=True)
class ListFiles(Body):
    """LIST_FILES and INITIATE_FILE_TRANSFER_FROM_GUEST (the same request)."""

    OPS = (Op.LIST_FILES, Op.INITIATE_FILE_TRANSFER_FROM_GUEST)
    FIXED = struct.Struct("<iIIiiQ")
    path: str
    pattern: str | None = None
    index: int = 0
    max_results: int = 0
    offset: int = 0
    file_options: int = 0

    def encode(self) -> bytes:
        path_len, path = _string(self.path)
        pattern_len, pattern = _string(self.pattern) if self.pattern else (0, b"")
        fixed = self.FIXED.pack(self.file_options, path_len, pattern_len, self.index, self.max_results, self.offset)
        return fixed + path + pattern

    @classmethod
    def decode(cls, data: bytes) -> Self:
        (options, path_len, pattern_len, index, max_results, offset), reader = cls._fixed(data)
        path = reader.string(path_len)
        pattern = reader.string(pattern_len) if pattern_len else None
        cls._finish(reader)
        return cls(path, pattern, index, max_results, offset, options)


@dataclass(frozen=True)
class PathRequest(Body):
    """CREATE_DIRECTORY_EX and DELETE_GUEST_DIRECTORY_EX: a path and one flag (parents / recursive)."""

    OPS = (Op.CREATE_DIRECTORY_EX, Op.DELETE_GUEST_DIRECTORY_EX)
    FIXED = struct.Struct("<iIIB")
    path: str
    flag: bool = False
    file_options: int = 0
    properties: bytes = b""

    def encode(self) -> bytes:
        path_len, path = _string(self.path)
        return self.FIXED.pack(self.file_options, path_len, len(self.properties), self.flag) + path + self.properties

    @classmethod
    def decode(cls, data: bytes) -> Self:
        (options, path_len, properties_len, flag), reader = cls._fixed(data)
        path = reader.string(path_len)
        properties = reader.take(properties_len)
        cls._finish(reader)
        return cls(path, bool(flag), options, properties)


@dataclass(frozen=True)
class SimpleFile(Body):
    """DELETE_GUEST_FILE_EX (`VixMsgSimpleFileRequest`)."""

    OPS = (Op.DELETE_GUEST_FILE_EX,)
    FIXED = struct.Struct("<iI")
    path: str
    file_options: int = 0

    def encode(self) -> bytes:
        path_len, path = _string(self.path)
        return self.FIXED.pack(self.file_options, path_len) + path

    @classmethod
    def decode(cls, data: bytes) -> Self:
        (options, path_len), reader = cls._fixed(data)
        path = reader.string(path_len)
        cls._finish(reader)
        return cls(path, options)


@dataclass(frozen=True)
class Move(Body):
    OPS = (Op.MOVE_GUEST_FILE_EX, Op.MOVE_GUEST_DIRECTORY)
    FIXED = struct.Struct("<iIIIB")
    old_path: str
    new_path: str
    overwrite: bool = False
    copy_options: int = 0
    properties: bytes = b""

    def encode(self) -> bytes:
        old_len, old = _string(self.old_path)
        new_len, new = _string(self.new_path)
        fixed = self.FIXED.pack(self.copy_options, old_len, new_len, len(self.properties), self.overwrite)
        return fixed + old + new + self.properties

    @classmethod
    def decode(cls, data: bytes) -> Self:
        (options, old_len, new_len, properties_len, overwrite), reader = cls._fixed(data)
        old, new = reader.string(old_len), reader.string(new_len)
        properties = reader.take(properties_len)
        cls._finish(reader)
        return cls(old, new, bool(overwrite), options, properties)


@dataclass(frozen=True)
class CreateTemporary(Body):
    OPS = (Op.CREATE_TEMPORARY_FILE_EX, Op.CREATE_TEMPORARY_DIRECTORY)
    FIXED = struct.Struct("<iIIII")
    prefix: str = ""
    suffix: str = ""
    directory: str = ""
    options: int = 0
    properties: bytes = b""

    def encode(self) -> bytes:
        (prefix_len, prefix), (suffix_len, suffix), (dir_len, directory) = map(
            _string, (self.prefix, self.suffix, self.directory)
        )
        fixed = self.FIXED.pack(self.options, prefix_len, suffix_len, dir_len, len(self.properties))
        return fixed + prefix + suffix + directory + self.properties

    @classmethod
    def decode(cls, data: bytes) -> Self:
        (options, prefix_len, suffix_len, dir_len, properties_len), reader = cls._fixed(data)
        prefix, suffix, directory = reader.string(prefix_len), reader.string(suffix_len), reader.string(dir_len)
        properties = reader.take(properties_len)
        cls._finish(reader)
        return cls(prefix, suffix, directory, options, properties)


class AttributeFlags(enum.IntFlag):
    """Which fields of SET_GUEST_FILE_ATTRIBUTES apply (``VIX_FILE_ATTRIBUTE_SET_*``)."""

    ACCESS_DATE = 0x01
    MODIFY_DATE = 0x02
    READONLY = 0x04
    HIDDEN = 0x08
    UNIX_OWNERID = 0x10
    UNIX_GROUPID = 0x20
    UNIX_PERMISSIONS = 0x40


@dataclass(frozen=True)
class SetAttributes(Body):
    OPS = (Op.SET_GUEST_FILE_ATTRIBUTES,)
    FIXED = struct.Struct("<iqqiiiBBI")
    path: str
    flags: int = 0
    access_time: int = 0
    modification_time: int = 0
    owner_id: int = -1
    group_id: int = -1
    permissions: int = 0
    hidden: bool = False
    read_only: bool = False

    def encode(self) -> bytes:
        path_len, path = _string(self.path)
        fixed = self.FIXED.pack(
            self.flags, self.access_time, self.modification_time, self.owner_id, self.group_id, self.permissions,
            self.hidden, self.read_only, path_len,
        )
        return fixed + path

    @classmethod
    def decode(cls, data: bytes) -> Self:
        (flags, atime, mtime, uid, gid, perm, hidden, read_only, path_len), reader = cls._fixed(data)
        path = reader.string(path_len)
        cls._finish(reader)
        return cls(path, flags, atime, mtime, uid, gid, perm, bool(hidden), bool(read_only))


@dataclass(frozen=True)
class StartProgram(Body):
    OPS = (Op.START_PROGRAM,)
    FIXED = struct.Struct("<BIIIII")
    program_path: str
    arguments: str | None = None
    working_directory: str | None = None
    environment: tuple[str, ...] = ()
    start_minimized: bool = False

    def encode(self) -> bytes:
        (path_len, path), (args_len, args), (dir_len, directory) = map(
            _optional, (self.program_path, self.arguments, self.working_directory)
        )
        count, env_len, env = _string_list(self.environment)
        fixed = self.FIXED.pack(self.start_minimized, path_len, args_len, dir_len, count, env_len)
        return fixed + path + args + directory + env

    @classmethod
    def decode(cls, data: bytes) -> Self:
        (minimized, path_len, args_len, dir_len, count, env_len), reader = cls._fixed(data)
        path = reader.optional_string(path_len)
        args, directory = reader.optional_string(args_len), reader.optional_string(dir_len)
        environment = reader.strings(count, env_len)
        cls._finish(reader)
        if not path:
            raise VixCodecError("StartProgram without a program path", VixCode.INVALID_ARG)
        return cls(path, args, directory, environment, bool(minimized))


_PID = struct.Struct("<q")


@dataclass(frozen=True)
class ListProcesses(Body):
    OPS = (Op.LIST_PROCESSES_EX,)
    FIXED = struct.Struct("<III")
    pids: tuple[int, ...] = ()
    key: int = 0
    offset: int = 0

    def encode(self) -> bytes:
        return self.FIXED.pack(self.key, self.offset, len(self.pids)) + b"".join(_PID.pack(p) for p in self.pids)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        (key, offset, count), reader = cls._fixed(data)
        raw = reader.take(count * _PID.size)
        cls._finish(reader)
        return cls(tuple(p for (p,) in _PID.iter_unpack(raw)), key, offset)


@dataclass(frozen=True)
class KillProcess(Body):
    OPS = (Op.KILL_PROCESS, Op.TERMINATE_PROCESS)
    FIXED = struct.Struct("<qI")
    pid: int
    options: int = 0

    def encode(self) -> bytes:
        return self.FIXED.pack(self.pid, self.options)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        (pid, options), reader = cls._fixed(data)
        cls._finish(reader)
        return cls(pid, options)


@dataclass(frozen=True)
class ReadEnvironment(Body):
    OPS = (Op.READ_ENV_VARIABLES,)
    FIXED = struct.Struct("<II")
    names: tuple[str, ...] = ()

    def encode(self) -> bytes:
        count, length, data = _string_list(self.names)
        return self.FIXED.pack(count, length) + data

    @classmethod
    def decode(cls, data: bytes) -> Self:
        (count, length), reader = cls._fixed(data)
        names = reader.strings(count, length)
        cls._finish(reader)
        return cls(names)


@dataclass(frozen=True)
class TransferToGuest(Body):
    OPS = (Op.INITIATE_FILE_TRANSFER_TO_GUEST,)
    FIXED = struct.Struct("<iIB")
    path: str
    overwrite: bool = False
    options: int = 0

    def encode(self) -> bytes:
        path_len, path = _string(self.path)
        return self.FIXED.pack(self.options, path_len, self.overwrite) + path

    @classmethod
    def decode(cls, data: bytes) -> Self:
        (options, path_len, overwrite), reader = cls._fixed(data)
        path = reader.string(path_len)
        cls._finish(reader)
        return cls(path, bool(overwrite), options)


@dataclass(frozen=True)
class HgfsPacket(Body):
    """VMXI_HGFS_SEND_PACKET: one HGFS request for the guest's HGFS server, performed as the login.

    This is how the VMX moves a transfer's bytes (vixTools.c
    ``VixToolsProcessHgfsPacket``); the reply is the HGFS reply packet, binary.
    Bytes after the packet are ignored, as vmtoolsd ignores them.
    """

    OPS = (Op.HGFS_SEND_PACKET,)
    FIXED = struct.Struct("<Ii")
    packet: bytes | memoryview  # decoded as a view into the request
    timeout: int = 0

    def encode(self) -> bytes:
        return self.FIXED.pack(len(self.packet), self.timeout) + self.packet

    def pieces(self) -> list[bytes | memoryview]:
        return [self.FIXED.pack(len(self.packet), self.timeout), self.packet]

    @classmethod
    def decode(cls, data: bytes) -> Self:
        (size, timeout), reader = cls._fixed(data)
        if size == 0:
            raise VixCodecError("an HGFS request without a packet", VixCode.FAIL)  # vmtoolsd: VIX_E_FAIL
        return cls(reader.take(size), timeout)


BODIES: dict[int, type[Body]] = {
    op: body
    for body in (NoBody, ListFiles, PathRequest, SimpleFile, Move, CreateTemporary, SetAttributes, StartProgram,
                 ListProcesses, KillProcess, ReadEnvironment, TransferToGuest, HgfsPacket)
    for op in body.OPS
}


def decode_body(op: int, data: bytes) -> Body:
    """The typed body of an op this codec knows; `VixCode.UNRECOGNIZED_COMMAND_IN_GUEST` otherwise."""
    body = BODIES.get(op)
    if body is None:
        raise VixCodecError(f"unknown Vix opcode {op}", VixCode.UNRECOGNIZED_COMMAND_IN_GUEST)
    try:
        return body.decode(data)
    except struct.error as error:  # a guard: _fixed checks sizes, so this is never expected
        raise VixCodecError(str(error)) from None


def build_request(op: Op, body: Body, credentials: Credentials | None = None, *, cookie: int = 0) -> Request:
    """A request as the VMX relays it to a guest (an HGFS packet asks for a binary reply)."""
    flags = CommonFlags.REQUEST
    if isinstance(body, HgfsPacket):
        flags |= CommonFlags.GUEST_RETURNS_BINARY
    if credentials is None:
        return Request(op=op, body=body.encode(), cookie=cookie, common_flags=flags)
    return Request(op=op, body=body.encode(), credential=credentials.encode(), credential_type=credentials.type,
                   cookie=cookie, common_flags=flags)


def relayed_request(op: Op, body: Body, credentials: Credentials | None = None, *, cookie: int = 0,
                    name: bytes = b"vix") -> bytes:
    """``relayed_command(build_request(op, body, credentials, cookie=cookie).encode(), name)`` in one
    join: a transfer's HGFS packet is copied once on its way into the command, not three times."""
    flags = CommonFlags.REQUEST | (CommonFlags.GUEST_RETURNS_BINARY if isinstance(body, HgfsPacket) else 0)
    credential = credentials.encode() if credentials is not None else b""
    credential_type = credentials.type if credentials is not None else CredentialType.NONE
    pieces = body.pieces()
    body_length = sum(len(piece) for piece in pieces)
    header = _REQUEST_HEADER.pack(
        MAGIC, MESSAGE_VERSION, REQUEST_HEADER_SIZE + body_length + len(credential), REQUEST_HEADER_SIZE,
        body_length, len(credential), flags, op, 0, 0, cookie, 0, credential_type,
    )
    prefix = relayed_command(b"", name)
    return b"".join([prefix, header, *pieces, credential])


# -- replies --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """``<error> <additionalError> <result>``: what follows ``OK `` in the guest's TCLO answer."""

    error: int = VixCode.OK
    additional_error: int = 0
    result: bytes = b""
    binary: bool = False
    marked: bool = False  # a binary result behind BINARY_MARK, as vmtoolsd answers a relayed binary request

    def encode(self) -> bytes:
        return b"".join(self.pieces())

    def pieces(self, more: Sequence[bytes | memoryview] = ()) -> list[bytes | memoryview]:
        """The encoding in pieces, a binary result continued by ``more`` (an HGFS reply's file data),
        for a writer that joins once: the TCLO dispatcher, behind its ``OK ``."""
        head = b"%d %d " % (self.error, self.additional_error)
        if self.binary:
            return [head, BINARY_MARK, self.result, *more] if self.marked else [head, self.result, *more]
        if more:
            raise VixCodecError("a string result comes whole, not in pieces", VixCode.FAIL)
        result = self.result
        if b"\0" in result:
            raise VixCodecError("a string result cannot contain NUL", VixCode.FAIL)
        return [head, result, b"\0"]  # vmtoolsd counts the NUL in the reply's length

    @property
    def ok(self) -> bool:
        return self.error == VixCode.OK


_REPLY = re.compile(rb"(-?\d+) (-?\d+) ")


def decode_reply(body: bytes | memoryview, *, binary: bool = False, marked: bool = False) -> Reply:
    """The Vix part of an ``OK …`` TCLO reply (the ``OK `` already removed).

    ``marked``: a binary reply to a relayed command, whose result follows a ``#``.
    """
    match = _REPLY.match(body)
    if match is None:
        raise VixCodecError(f"not a Vix reply: {body[:40]!r}", VixCode.FAIL)
    start = match.end()
    if binary and marked and body[start : start + 1] == BINARY_MARK:
        start += 1
    if binary and marked:
        # A transfer's HGFS reply packet: a view, so that it is not copied on its way to the HGFS client.
        return Reply(int(match.group(1)), int(match.group(2)), memoryview(body)[start:], True, True)  # type: ignore[arg-type]
    result = bytes(body[start:])
    if not binary:
        result = result.split(b"\0", 1)[0]
    return Reply(int(match.group(1)), int(match.group(2)), result, binary, marked and binary)


# -- XML results ------------------------------------------------------------------------------------

_ESCAPED = frozenset(b"\"%&'<>")


def escape_xml(text: str) -> str:
    """vmtoolsd's escaping: ``" % & ' < >`` become ``%XX`` (upper-case hex)."""
    return "".join(f"%{ord(c):02X}" if ord(c) < 128 and ord(c) in _ESCAPED else c for c in text)


def unescape_xml(text: str) -> str:
    return re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), text)


class FileType(enum.IntFlag):
    FILE = 0
    DIRECTORY = 0x1
    SYMLINK = 0x2


# vmtoolsd's stand-in for a file name that is not UTF-8 (open-vm-tools lib/file: "three UTF8
# substitution characters"): a listing still lists the file, and stays UTF-8.
UNREPRESENTABLE_NAME = "\ufffd" * 3


def _listed(name: str) -> str:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # bytes from the file system kept as surrogate escapes
        return UNREPRESENTABLE_NAME
    return name


@dataclass(frozen=True)
class FileInfo:
    """One ``<fxi>`` (Linux form)."""

    name: str
    type: int = FileType.FILE
    size: int = 0
    mtime: int = 0
    atime: int = 0
    uid: int = 0
    gid: int = 0
    permissions: int = 0
    symlink_target: str = ""

    def encode(self) -> str:
        return (
            f"<fxi><Name>{escape_xml(_listed(self.name))}</Name><ft>{self.type}</ft><fs>{self.size}</fs>"
            f"<mt>{self.mtime}</mt><at>{self.atime}</at><uid>{self.uid}</uid><gid>{self.gid}</gid>"
            f"<perm>{self.permissions}</perm><slt>{escape_xml(_listed(self.symlink_target))}</slt></fxi>"
        )


_ELEMENT = re.compile(r"<(\w+)>(.*?)</\1>", re.S)


def _elements(text: str, tag: str) -> list[dict[str, str]]:
    out = []
    for match in re.finditer(rf"<{tag}>(.*?)</{tag}>", text, re.S):
        out.append({m.group(1): unescape_xml(m.group(2)) for m in _ELEMENT.finditer(match.group(1))})
    return out


def _int(fields: dict[str, str], key: str, default: int = 0) -> int:
    try:
        return int(fields.get(key, default))
    except ValueError:
        raise VixCodecError(f"<{key}> is not a number: {fields.get(key)!r}", VixCode.FAIL) from None


def decode_file_infos(text: str) -> list[FileInfo]:
    return [
        FileInfo(
            f.get("Name", ""), _int(f, "ft"), _int(f, "fs"), _int(f, "mt"), _int(f, "at"), _int(f, "uid"),
            _int(f, "gid"), _int(f, "perm"), f.get("slt", ""),
        )
        for f in _elements(text, "fxi")
    ]


@dataclass(frozen=True)
class FileListing:
    """A LIST_FILES result: ``<truncated> <rem>N</rem>`` then the entries."""

    files: tuple[FileInfo, ...]
    remaining: int = 0
    truncated: bool = False

    def encode(self) -> bytes:
        head = f"{int(self.truncated)} <rem>{self.remaining}</rem>"
        return (head + "".join(f.encode() for f in self.files)).encode("utf-8")


def decode_file_listing(result: bytes) -> FileListing:
    text = result.decode("utf-8", "replace")
    match = re.match(r"([01]) <rem>(\d+)</rem>", text)
    if match is None:
        raise VixCodecError(f"not a file listing: {text[:40]!r}", VixCode.FAIL)
    return FileListing(tuple(decode_file_infos(text[match.end() :])), int(match.group(2)), match.group(1) == "1")


@dataclass(frozen=True)
class ProcessInfo:
    """One ``<proc>``: ``cmd`` is the program's short name, ``name`` its command line."""

    pid: int
    name: str
    owner: str
    start_time: int
    cmd: str | None = None
    exit_code: int = 0
    end_time: int = 0

    def encode(self) -> str:
        cmd = f"<cmd>{escape_xml(self.cmd)}</cmd>" if self.cmd is not None else ""
        return (
            f"<proc>{cmd}<name>{escape_xml(self.name)}</name><pid>{self.pid}</pid>"
            f"<user>{escape_xml(self.owner)}</user><start>{self.start_time}</start>"
            f"<eCode>{self.exit_code}</eCode><eTime>{self.end_time}</eTime></proc>"
        )


def decode_processes(text: str) -> list[ProcessInfo]:
    return [
        ProcessInfo(_int(p, "pid"), p.get("name", ""), p.get("user", ""), _int(p, "start"), p.get("cmd"),
                    _int(p, "eCode"), _int(p, "eTime"))
        for p in _elements(text, "proc")
    ]


@dataclass(frozen=True)
class ProcessPage:
    """A LIST_PROCESSES_EX result too big for one reply, in byte pieces (vmtoolsd's ``<key>`` paging).

    The first page carries the listing's key and total size; each names what
    is left after it.  Pieces are bytes: a cut may fall inside a character.
    """

    chunk: bytes
    left_to_send: int
    key: int | None = None
    total_size: int | None = None

    def encode(self) -> bytes:
        head = b""
        if self.key is not None:
            head = b"<key>%d</key><totalSize>%d</totalSize>" % (self.key, self.total_size or 0)
        return head + b"<leftToSend>%d</leftToSend>" % self.left_to_send + self.chunk


_PAGE = re.compile(rb"(?:<key>(\d+)</key><totalSize>(\d+)</totalSize>)?<leftToSend>(\d+)</leftToSend>")


def decode_process_page(result: bytes) -> ProcessPage | None:
    """The paging header of a LIST_PROCESSES_EX result, if it has one."""
    match = _PAGE.match(result)
    if match is None:
        return None
    key = int(match.group(1)) if match.group(1) else None
    total = int(match.group(2)) if match.group(2) else None
    return ProcessPage(result[match.end() :], int(match.group(3)), key, total)


def encode_environment(entries: Iterable[str]) -> bytes:
    return "".join(f"<ev>{escape_xml(e)}</ev>" for e in entries).encode("utf-8")


def decode_environment(result: bytes) -> list[str]:
    text = result.decode("utf-8", "replace")
    return [unescape_xml(m.group(1)) for m in re.finditer(r"<ev>(.*?)</ev>", text, re.S)]


# -- property lists (Vix_1_Get_ToolsProperties, GET_TOOLS_STATE) -------------------------------------


class PropertyType(enum.IntEnum):
    INTEGER = 1
    STRING = 2
    BOOL = 3
    INT64 = 5
    BLOB = 6


class Property(enum.IntEnum):
    """``VIX_PROPERTY_*`` ids a guest reports."""

    GUEST_TOOLS_VERSION = 4500
    GUEST_TOOLS_API_OPTIONS = 4501
    GUEST_OS_FAMILY = 4502
    GUEST_OS_VERSION = 4503
    GUEST_NAME = 4505
    GUEST_TOOLS_PRODUCT_NAME = 4511
    GUEST_OS_VERSION_SHORT = 4520
    GUEST_START_PROGRAM_ENABLED = 4540
    GUEST_LIST_PROCESSES_ENABLED = 4541
    GUEST_TERMINATE_PROCESS_ENABLED = 4542
    GUEST_READ_ENVIRONMENT_VARIABLE_ENABLED = 4543
    GUEST_MAKE_DIRECTORY_ENABLED = 4547
    GUEST_DELETE_FILE_ENABLED = 4548
    GUEST_DELETE_DIRECTORY_ENABLED = 4549
    GUEST_MOVE_DIRECTORY_ENABLED = 4550
    GUEST_MOVE_FILE_ENABLED = 4551
    GUEST_CREATE_TEMP_FILE_ENABLED = 4552
    GUEST_CREATE_TEMP_DIRECTORY_ENABLED = 4553
    GUEST_LIST_FILES_ENABLED = 4554
    GUEST_CHANGE_FILE_ATTRIBUTES_ENABLED = 4555
    GUEST_INITIATE_FILE_TRANSFER_FROM_GUEST_ENABLED = 4556
    GUEST_INITIATE_FILE_TRANSFER_TO_GUEST_ENABLED = 4557


PropertyValue = int | str | bool | bytes
_PROPERTY_HEAD = struct.Struct("<iii")


def encode_properties(properties: Iterable[tuple[int, PropertyType, PropertyValue]]) -> bytes:
    out = bytearray()
    for pid, ptype, value in properties:
        if ptype == PropertyType.INTEGER:
            raw = struct.pack("<i", int(value))
        elif ptype == PropertyType.INT64:
            raw = struct.pack("<q", int(value))
        elif ptype == PropertyType.BOOL:
            raw = bytes([bool(value)])
        elif ptype == PropertyType.STRING:
            raw = _utf8(str(value)) + b"\0"
        else:
            raw = bytes(value)  # type: ignore[arg-type]
        out += _PROPERTY_HEAD.pack(pid, ptype, len(raw)) + raw
    return bytes(out)


def decode_properties(data: bytes) -> dict[int, PropertyValue]:
    out: dict[int, PropertyValue] = {}
    offset = 0
    while offset < len(data):
        if offset + _PROPERTY_HEAD.size > len(data):
            raise VixCodecError("property list truncated in a header", VixCode.FAIL)
        pid, ptype, length = _PROPERTY_HEAD.unpack_from(data, offset)
        offset += _PROPERTY_HEAD.size
        if length < 0 or offset + length > len(data):
            raise VixCodecError(f"property {pid} runs past the list", VixCode.FAIL)
        raw = data[offset : offset + length]
        offset += length
        out[pid] = _property_value(pid, ptype, raw)
    return out


def _property_value(pid: int, ptype: int, raw: bytes) -> PropertyValue:
    sizes = {PropertyType.INTEGER: 4, PropertyType.INT64: 8, PropertyType.BOOL: 1}
    if ptype in sizes and len(raw) != sizes[ptype]:  # type: ignore[index]
        raise VixCodecError(f"property {pid} of type {ptype} has {len(raw)} bytes", VixCode.FAIL)
    if ptype == PropertyType.INTEGER:
        return int(struct.unpack("<i", raw)[0])
    if ptype == PropertyType.INT64:
        return int(struct.unpack("<q", raw)[0])
    if ptype == PropertyType.BOOL:
        return raw != b"\0"
    if ptype == PropertyType.STRING:
        if not raw.endswith(b"\0"):
            raise VixCodecError(f"string property {pid} not NUL-terminated", VixCode.FAIL)
        return raw[:-1].decode("utf-8", "replace")
    if ptype == PropertyType.BLOB:
        return raw
    raise VixCodecError(f"property {pid} has unknown type {ptype}", VixCode.FAIL)


def body_fields(body: Body) -> dict[str, object]:
    """A body's fields by name (for logs and the control channel)."""
    return {f.name: getattr(body, f.name) for f in fields(body)}  # type: ignore[arg-type]
