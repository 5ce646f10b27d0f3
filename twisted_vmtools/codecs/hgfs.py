"""HGFS: the host-guest file system packets that ride in TCLO ``f `` commands.

Two header forms share one wire.  A *legacy* packet begins with
``HgfsRequest {u32 id, u32 op}`` (replies: ``HgfsReply {u32 id, u32 status}``);
a packet whose op field is 0xff (``OP_NEW_HEADER``) has the 52-byte V4 header
instead, which carries a session id.  Ops below OPEN_V3 (V1/V2 ops such as the
legacy Close, GetattrV2 and SetattrV2) keep their own ``HgfsRequest`` /
``HgfsReply`` inside the payload in both forms; this module strips and adds it,
so an op's message class only holds its own fields.

Everything is little-endian and packed (``lib/include/hgfsProto.h``).  Names are
CPName: NUL-separated components, the first naming the share (``root`` = ``/``).
Every decoder raises `HGFSError` subclasses only.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, TypeVar

from .errors import CodecError

# Sizes (hgfs.h).  A VMX that negotiates it may send packets up to LARGE_PACKET_MAX.
PACKET_MAX = 6144
HEADER_SIZE_MAX = 2048
LARGE_IO_MAX = 127 * 4096  # 520,192: the largest read vmtoolsd answers in one packet
LARGE_PACKET_MAX = LARGE_IO_MAX + HEADER_SIZE_MAX  # 522,240
LEGACY_LARGE_PACKET_MAX = 15 * 4096 + HEADER_SIZE_MAX  # 63,488: fits one 64 KiB GuestMsg

OP_NEW_HEADER = 0xFF
HEADER_VERSION = 1
INVALID_HANDLE = 0xFFFFFFFF
INVALID_SESSION_ID = 0xFFFFFFFFFFFFFFFF
UNKNOWN_SIZE = (1 << 63) - 1  # the size a virtual file (archive, process output) reports: read until empty
SHARE = b"root"  # the one share a guest exports: "/" (hgfsPlugin.c)

# V4 header flags
FLAG_REQUEST = 1
FLAG_REPLY = 2
FLAG_INFO_EXTERROR = 4

# Session flags (CreateSessionV4 reply)
SESSION_MAXPACKETSIZE_VALID = 1


class Op(enum.IntEnum):
    OPEN = 0
    READ = 1
    WRITE = 2
    CLOSE = 3
    SEARCH_OPEN = 4
    SEARCH_READ = 5
    SEARCH_CLOSE = 6
    GETATTR = 7
    SETATTR = 8
    CREATE_DIR = 9
    DELETE_FILE = 10
    DELETE_DIR = 11
    RENAME = 12
    QUERY_VOLUME_INFO = 13
    OPEN_V2 = 14
    GETATTR_V2 = 15
    SETATTR_V2 = 16
    SEARCH_READ_V2 = 17
    CREATE_SYMLINK = 18
    SERVER_LOCK_CHANGE = 19
    CREATE_DIR_V2 = 20
    DELETE_FILE_V2 = 21
    DELETE_DIR_V2 = 22
    RENAME_V2 = 23
    OPEN_V3 = 24
    READ_V3 = 25
    WRITE_V3 = 26
    CLOSE_V3 = 27
    SEARCH_OPEN_V3 = 28
    SEARCH_READ_V3 = 29
    SEARCH_CLOSE_V3 = 30
    GETATTR_V3 = 31
    SETATTR_V3 = 32
    CREATE_DIR_V3 = 33
    DELETE_FILE_V3 = 34
    DELETE_DIR_V3 = 35
    RENAME_V3 = 36
    QUERY_VOLUME_INFO_V3 = 37
    CREATE_SYMLINK_V3 = 38
    SERVER_LOCK_CHANGE_V3 = 39
    WRITE_WIN32_STREAM_V3 = 40
    CREATE_SESSION_V4 = 41
    DESTROY_SESSION_V4 = 42


FIRST_V3_OP = Op.OPEN_V3
FIRST_V4_OP = Op.CREATE_SESSION_V4
LAST_OP = 64  # SET_EAS_V4: the highest op a V4 header may name


class Status(enum.IntEnum):
    SUCCESS = 0
    NO_SUCH_FILE_OR_DIR = 1
    INVALID_HANDLE = 2
    OPERATION_NOT_PERMITTED = 3
    FILE_EXISTS = 4
    NOT_DIRECTORY = 5
    DIR_NOT_EMPTY = 6
    PROTOCOL_ERROR = 7
    ACCESS_DENIED = 8
    INVALID_NAME = 9
    GENERIC_ERROR = 10
    SHARING_VIOLATION = 11
    NO_SPACE = 12
    OPERATION_NOT_SUPPORTED = 13
    NAME_TOO_LONG = 14
    INVALID_PARAMETER = 15
    NOT_SAME_DEVICE = 16
    STALE_SESSION = 17  # 17 and above: V4 clients only
    TOO_MANY_SESSIONS = 18
    TRANSPORT_ERROR = 19


class OpenMode(enum.IntEnum):
    READ_ONLY = 0
    WRITE_ONLY = 1
    READ_WRITE = 2


class OpenFlags(enum.IntEnum):
    OPEN = 0  # must exist
    OPEN_EMPTY = 1  # must exist; truncated
    OPEN_CREATE = 2  # created if missing
    CREATE_SAFE = 3  # must not exist
    CREATE_EMPTY = 4  # created or truncated


class FileType(enum.IntEnum):
    REGULAR = 0
    DIRECTORY = 1
    SYMLINK = 2


# OpenV3 mask bits
OPEN_VALID_MODE = 1 << 0
OPEN_VALID_FLAGS = 1 << 1
OPEN_VALID_SPECIAL_PERMS = 1 << 2
OPEN_VALID_OWNER_PERMS = 1 << 3
OPEN_VALID_GROUP_PERMS = 1 << 4
OPEN_VALID_OTHER_PERMS = 1 << 5
OPEN_VALID_FILE_ATTR = 1 << 6
OPEN_VALID_ALLOCATION_SIZE = 1 << 7
OPEN_VALID_DESIRED_ACCESS = 1 << 8
OPEN_VALID_SHARE_ACCESS = 1 << 9
OPEN_VALID_SERVER_LOCK = 1 << 10
OPEN_VALID_FILE_NAME = 1 << 11

# HgfsAttrV2 mask bits
ATTR_VALID_TYPE = 1 << 0
ATTR_VALID_SIZE = 1 << 1
ATTR_VALID_CREATE_TIME = 1 << 2
ATTR_VALID_ACCESS_TIME = 1 << 3
ATTR_VALID_WRITE_TIME = 1 << 4
ATTR_VALID_CHANGE_TIME = 1 << 5
ATTR_VALID_SPECIAL_PERMS = 1 << 6
ATTR_VALID_OWNER_PERMS = 1 << 7
ATTR_VALID_GROUP_PERMS = 1 << 8
ATTR_VALID_OTHER_PERMS = 1 << 9
ATTR_VALID_FLAGS = 1 << 10
ATTR_VALID_ALLOCATION_SIZE = 1 << 11
ATTR_VALID_USERID = 1 << 12
ATTR_VALID_GROUPID = 1 << 13
ATTR_VALID_FILEID = 1 << 14
ATTR_VALID_VOLID = 1 << 15
ATTR_VALID_NON_STATIC_FILEID = 1 << 16
ATTR_VALID_EFFECTIVE_PERMS = 1 << 17

# Hints
ATTR_HINT_SET_ACCESS_TIME = 1 << 0
ATTR_HINT_SET_WRITE_TIME = 1 << 1
ATTR_HINT_USE_FILE_DESC = 1 << 2
RENAME_HINT_NO_REPLACE_EXISTING = 1 << 2
FILE_NAME_USE_FILE_DESC = 1
WRITE_APPEND = 1

# CreateDirV3 mask bits
CREATE_DIR_VALID_SPECIAL_PERMS = 1 << 0
CREATE_DIR_VALID_OWNER_PERMS = 1 << 1
CREATE_DIR_VALID_GROUP_PERMS = 1 << 2
CREATE_DIR_VALID_OTHER_PERMS = 1 << 3
CREATE_DIR_VALID_FILE_NAME = 1 << 4

NT_EPOCH_OFFSET = 116_444_736_000_000_000  # 100 ns ticks from 1601-01-01 to 1970-01-01


class HGFSError(CodecError):
    """Base of every HGFS codec error."""


class HGFSPacketError(HGFSError):
    """No usable header: the packet cannot even be answered in its own form."""


class HGFSMalformedError(HGFSError):
    """A header was read, but the op's fields are missing or inconsistent."""


class HGFSUnsupportedOp(HGFSError):
    """A well-formed header naming an op this codec has no message for."""


# --- headers ---------------------------------------------------------------------------------------------------

_LEGACY = struct.Struct("<II")
_V4 = struct.Struct("<B3xIIIIIIIIQQ")
LEGACY_HEADER_SIZE = _LEGACY.size  # 8
V4_HEADER_SIZE = _V4.size  # 52

Data = bytes | memoryview  # packets and file data: decoded as views into their packet, not copied


@dataclass(frozen=True)
class Header:
    """What precedes an op's fields.  ``session_id`` None means the legacy form.

    For a legacy request, ``status`` is unused; for a legacy reply the op is not
    on the wire (the caller knows what it asked)."""

    op: int
    request_id: int = 0
    session_id: int | None = None
    status: int = 0
    flags: int = FLAG_REQUEST
    information: int = 0
    version: int = HEADER_VERSION

    @property
    def legacy(self) -> bool:
        return self.session_id is None

    def reply(self, status: int, session_id: int | None = None) -> Header:
        """The header of the answer to this request."""
        if self.legacy:
            return Header(self.op, self.request_id, None, status, FLAG_REPLY)
        sid = self.session_id if session_id is None else session_id
        return Header(self.op, self.request_id, sid, status, FLAG_REPLY)


def _has_inner_header(op: int) -> bool:
    """V1/V2 ops carry their own HgfsRequest/HgfsReply inside a V4 payload."""
    return op < FIRST_V3_OP


def encode_packet(header: Header, body: Data | list[Data], *, reply: bool) -> bytes:
    """Header + body (bytes, or its pieces), adding the inner legacy header where the op has one.

    One join: file data is copied once into the packet, whatever the layers around it.
    """
    return b"".join(packet_pieces(header, body if isinstance(body, list) else [body], reply=reply))


def packet_pieces(header: Header, body: list[Data], *, reply: bool) -> list[Data]:
    """`encode_packet` before the join: for a layer that puts its own bytes in front (TCLO's ``OK ``)."""
    word = header.status if reply else header.op
    if header.legacy:
        return [_LEGACY.pack(header.request_id, word), *body]
    inner = [_LEGACY.pack(header.request_id, word)] if _has_inner_header(header.op) else []
    size = V4_HEADER_SIZE + LEGACY_HEADER_SIZE * len(inner) + sum(len(part) for part in body)
    head = _V4.pack(
        header.version, OP_NEW_HEADER, size, V4_HEADER_SIZE, header.request_id, header.op,
        header.status, header.flags, header.information, header.session_id or 0, 0,
    )
    return [head, *inner, *body]


def decode_request_header(data: Data) -> tuple[Header, Data]:
    """Split a request into its header and the op's own fields.

    `HGFSPacketError` when no header can be read (too short, unknown op form);
    `HGFSMalformedError` (with ``header``) when the header is read but sizes
    disagree, so the request can still be answered.
    """
    if len(data) < LEGACY_HEADER_SIZE:
        raise HGFSPacketError(f"HGFS packet of {len(data)} bytes is shorter than a header")
    request_id, op = _LEGACY.unpack_from(data)
    if op == OP_NEW_HEADER:
        return _decode_v4(data, reply=False)
    if op >= FIRST_V4_OP:
        raise HGFSPacketError(f"HGFS op {op} needs the V4 header")
    return Header(op, request_id), memoryview(data)[LEGACY_HEADER_SIZE:]


def decode_reply_header(data: Data, op: int) -> tuple[Header, Data]:
    """Split a reply to ``op``; the form (legacy or V4) is read from the packet."""
    if len(data) >= V4_HEADER_SIZE and _LEGACY.unpack_from(data)[1] == OP_NEW_HEADER and data[0] >= 1:
        header, body = _decode_v4(data, reply=True)
        return header, body
    if len(data) < LEGACY_HEADER_SIZE:
        raise HGFSPacketError(f"HGFS reply of {len(data)} bytes is shorter than a header")
    request_id, status = _LEGACY.unpack_from(data)
    return Header(op, request_id, None, status, FLAG_REPLY), memoryview(data)[LEGACY_HEADER_SIZE:]


def _decode_v4(data: Data, *, reply: bool) -> tuple[Header, Data]:
    if len(data) < V4_HEADER_SIZE:
        raise HGFSPacketError(f"HGFS V4 packet of {len(data)} bytes is shorter than its header")
    version, _, size, head_size, request_id, op, status, flags, information, session_id, _ = _V4.unpack_from(data)
    header = Header(op, request_id, session_id, status, flags, information, version)
    if version < HEADER_VERSION:
        raise _malformed(header, f"HGFS header version {version}")
    if head_size < V4_HEADER_SIZE or size < head_size or size > len(data):
        raise _malformed(header, f"HGFS packet size {size} / header size {head_size} for {len(data)} bytes")
    if version == HEADER_VERSION and not reply:
        # Version 1 file-copy clients left these uninitialised (hgfsServerParameters.c).
        header = Header(op, request_id, session_id, 0, FLAG_REQUEST, 0, version)
    elif flags and not flags & (FLAG_REQUEST | FLAG_REPLY):
        raise _malformed(header, f"HGFS header flags {flags:#x}")
    # A view: a 520 KB WriteV3 or ReadV3 reply is not copied to strip its header.
    payload = memoryview(data)[head_size:size]
    if _has_inner_header(op):
        if len(payload) < LEGACY_HEADER_SIZE:
            raise _malformed(header, f"HGFS op {op} payload lacks its inner header")
        payload = payload[LEGACY_HEADER_SIZE:]
    return header, payload


def _malformed(header: Header, why: str) -> HGFSMalformedError:
    error = HGFSMalformedError(why)
    error.header = header  # type: ignore[attr-defined]
    return error


# --- building blocks -------------------------------------------------------------------------------------------


class _Reader:
    """Bounds-checked little-endian reads; every shortfall is an `HGFSMalformedError`."""

    def __init__(self, data: Data, what: str) -> None:
        self.data = data
        self.position = 0
        self.what = what

    def take(self, fmt: struct.Struct) -> tuple[int, ...]:
        end = self.position + fmt.size
        if end > len(self.data):
            raise HGFSMalformedError(f"{self.what}: {len(self.data)} bytes, need {end}")
        values = fmt.unpack_from(self.data, self.position)
        self.position = end
        return values

    def chunk(self, count: int) -> bytes:
        """``count`` bytes of their own (names and other small fields)."""
        return bytes(self.view(count))

    def view(self, count: int) -> memoryview:
        """``count`` bytes as a view into the packet: file data, which is not copied on its way through."""
        end = self.position + count
        if count < 0 or end > len(self.data):
            raise HGFSMalformedError(f"{self.what}: {count} bytes announced, {len(self.data) - self.position} left")
        value = memoryview(self.data)[self.position : end]
        self.position = end
        return value

    def rest(self) -> bytes:
        value = bytes(self.data[self.position :])
        self.position = len(self.data)
        return value

    def skip_nul(self) -> None:
        """A name's terminating NUL: optional at the very end (senders differ)."""
        if self.position < len(self.data):
            if self.data[self.position] != 0:
                raise HGFSMalformedError(f"{self.what}: name not NUL-terminated")
            self.position += 1


_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_NAME_V3 = struct.Struct("<IIII")


@dataclass(frozen=True)
class FileNameV3:
    """HgfsFileNameV3: a CPName, or a handle when ``flags`` has USE_FILE_DESC."""

    name: bytes = b""
    flags: int = 0
    case_type: int = 0
    fid: int = INVALID_HANDLE

    def encode(self) -> bytes:
        return _NAME_V3.pack(len(self.name), self.flags, self.case_type, self.fid) + self.name + b"\0"

    @classmethod
    def read(cls, reader: _Reader) -> FileNameV3:
        length, flags, case_type, fid = reader.take(_NAME_V3)
        name = reader.chunk(length)
        reader.skip_nul()
        return cls(name, flags, case_type, fid)


def _encode_name(name: bytes) -> bytes:
    """HgfsFileName (V1/V2): u32 length, name, NUL."""
    return _U32.pack(len(name)) + name + b"\0"


def _read_name(reader: _Reader) -> bytes:
    (length,) = reader.take(_U32)
    name = reader.chunk(length)
    reader.skip_nul()
    return name


_ATTR = struct.Struct("<QIQQQQQBBBBQQIIQIIQ")


@dataclass(frozen=True)
class AttrV2:
    """HgfsAttrV2 (104 bytes).  Times are Windows NT time (100 ns since 1601)."""

    mask: int = 0
    type: int = FileType.REGULAR
    size: int = 0
    creation_time: int = 0
    access_time: int = 0
    write_time: int = 0
    change_time: int = 0
    special_perms: int = 0
    owner_perms: int = 0
    group_perms: int = 0
    other_perms: int = 0
    flags: int = 0
    allocation_size: int = 0
    user_id: int = 0
    group_id: int = 0
    host_file_id: int = 0
    volume_id: int = 0
    effective_perms: int = 0

    SIZE: ClassVar[int] = _ATTR.size

    def encode(self) -> bytes:
        return _ATTR.pack(
            self.mask, self.type, self.size, self.creation_time, self.access_time, self.write_time,
            self.change_time, self.special_perms, self.owner_perms, self.group_perms, self.other_perms,
            self.flags, self.allocation_size, self.user_id, self.group_id, self.host_file_id,
            self.volume_id, self.effective_perms, 0,
        )

    @classmethod
    def read(cls, reader: _Reader) -> AttrV2:
        return cls(*reader.take(_ATTR)[:-1])

    @property
    def mode(self) -> int:
        """The POSIX permission bits the four perms fields describe."""
        return self.special_perms << 9 | self.owner_perms << 6 | self.group_perms << 3 | self.other_perms


def nt_time(unix_ns: int) -> int:
    return max(0, unix_ns // 100 + NT_EPOCH_OFFSET)


def unix_ns(nt: int) -> int:
    return (nt - NT_EPOCH_OFFSET) * 100


def cpname(path: str) -> bytes:
    """``/etc/hostname`` → ``root\\0etc\\0hostname`` (the share, then the components)."""
    parts = [part for part in path.split("/") if part]
    return b"\0".join([SHARE] + [part.encode("utf-8", "surrogateescape") for part in parts])


def path_of(name: bytes) -> str:
    """The guest path a CPName names; `HGFSMalformedError` for another share or a `.`/`..` step.

    A trailing NUL (some senders count it) is ignored.
    """
    parts = name.rstrip(b"\0").split(b"\0")
    if parts[0] != SHARE:
        raise HGFSMalformedError(f"HGFS name is outside the {SHARE.decode()!r} share: {name[:40]!r}")
    steps = parts[1:]
    if any(step in (b"", b".", b"..") or b"/" in step for step in steps):
        raise HGFSMalformedError(f"HGFS name has an empty, '.', '..' or '/' component: {name[:80]!r}")
    return "/" + "/".join(step.decode("utf-8", "surrogateescape") for step in steps)


# --- op messages -----------------------------------------------------------------------------------------------


class Message(Protocol):
    def encode(self) -> bytes: ...


def _parts(message: Message) -> list[Data]:
    """A message's bytes as pieces: a bulk message's file data goes into the packet untouched."""
    parts = getattr(message, "parts", None)
    return parts() if parts is not None else [message.encode()]  # type: ignore[no-any-return]


M = TypeVar("M", bound="_Fixed")


class _Fixed:
    """A message that is one fixed struct (its fields in declaration order, reserved as zero)."""

    FORMAT: ClassVar[struct.Struct]
    RESERVED: ClassVar[int] = 0  # trailing u64 reserved words, written as zero

    def _values(self) -> tuple[int, ...]:
        return tuple(getattr(self, name) for name in self.__dataclass_fields__)  # type: ignore[attr-defined]

    def encode(self) -> bytes:
        return self.FORMAT.pack(*self._values(), *([0] * self.RESERVED))

    @classmethod
    def decode(cls: type[M], data: bytes) -> M:
        values = _Reader(data, cls.__name__).take(cls.FORMAT)
        return cls(*values[: len(values) - cls.RESERVED])


@dataclass(frozen=True)
class Empty:
    """A message with no fields (the legacy Close and SetattrV2 replies)."""

    def encode(self) -> bytes:
        return b""

    @classmethod
    def decode(cls, data: Data) -> Empty:
        return cls()


@dataclass(frozen=True)
class Reserved(_Fixed):
    """One reserved u64: the reply of most V3 ops and both DestroySessionV4 messages."""

    FORMAT = _U64
    RESERVED = 1


@dataclass(frozen=True)
class Capability:
    op: int
    flags: int = 1


_CAP = struct.Struct("<II")
_SESSION_REQUEST = struct.Struct("<IIII")
_SESSION_REPLY = struct.Struct("<QIIIII")


@dataclass(frozen=True)
class CreateSessionRequest:
    max_packet_size: int = LEGACY_LARGE_PACKET_MAX
    flags: int = 0
    capabilities: tuple[Capability, ...] = ()

    def encode(self) -> bytes:
        head = _SESSION_REQUEST.pack(len(self.capabilities), self.max_packet_size, self.flags, 0)
        return head + b"".join(_CAP.pack(c.op, c.flags) for c in self.capabilities)

    @classmethod
    def decode(cls, data: Data) -> CreateSessionRequest:
        if len(data) < 12:
            raise HGFSMalformedError(f"CreateSessionV4 request of {len(data)} bytes")
        count, max_packet, flags, _ = _SESSION_REQUEST.unpack(bytes(data[:16]).ljust(16, b"\0"))
        reader = _Reader(data, "CreateSessionV4 request")
        reader.position = 16 if count else min(16, len(data))
        caps = tuple(Capability(*reader.take(_CAP)) for _ in range(count))
        return cls(max_packet, flags, caps)


@dataclass(frozen=True)
class CreateSessionReply:
    session_id: int
    max_packet_size: int
    flags: int = SESSION_MAXPACKETSIZE_VALID
    capabilities: tuple[Capability, ...] = ()
    identity_offset: int = 0

    def encode(self) -> bytes:
        head = _SESSION_REPLY.pack(
            self.session_id, len(self.capabilities), self.max_packet_size, self.identity_offset, self.flags, 0
        )
        return head + b"".join(_CAP.pack(c.op, c.flags) for c in self.capabilities)

    @classmethod
    def decode(cls, data: Data) -> CreateSessionReply:
        reader = _Reader(data, "CreateSessionV4 reply")
        session_id, count, max_packet, identity, flags, _ = reader.take(_SESSION_REPLY)
        if count > len(data) // _CAP.size:
            raise HGFSMalformedError(f"CreateSessionV4 reply announces {count} capabilities")
        caps = tuple(Capability(*reader.take(_CAP)) for _ in range(count))
        return cls(session_id, max_packet, flags, caps, identity)


_OPEN_V3 = struct.Struct("<QIIBBBBQQIIIQQ")


@dataclass(frozen=True)
class OpenRequest:
    """OpenV3."""

    name: FileNameV3
    mode: int = OpenMode.READ_ONLY
    flags: int = OpenFlags.OPEN
    mask: int = OPEN_VALID_MODE | OPEN_VALID_FLAGS | OPEN_VALID_FILE_NAME
    special_perms: int = 0
    owner_perms: int = 0
    group_perms: int = 0
    other_perms: int = 0
    attr: int = 0
    allocation_size: int = 0
    desired_access: int = 0
    share_access: int = 0
    desired_lock: int = 0

    def encode(self) -> bytes:
        head = _OPEN_V3.pack(
            self.mask, self.mode, self.flags, self.special_perms, self.owner_perms, self.group_perms,
            self.other_perms, self.attr, self.allocation_size, self.desired_access, self.share_access,
            self.desired_lock, 0, 0,
        )
        return head + self.name.encode()

    @classmethod
    def decode(cls, data: Data) -> OpenRequest:
        reader = _Reader(data, "OpenV3 request")
        (mask, mode, flags, special, owner, group, other, attr, alloc, access, share, lock, _, _) = reader.take(
            _OPEN_V3
        )
        name = FileNameV3.read(reader)
        return cls(name, mode, flags, mask, special, owner, group, other, attr, alloc, access, share, lock)

    @property
    def permissions(self) -> int:
        """The mode a created file asks for (before the umask), as vmtoolsd reads it: owner rw
        if the owner's perms are not given, and the owner's for a group or other not given."""
        return _permissions(
            self.mask,
            (OPEN_VALID_SPECIAL_PERMS, OPEN_VALID_OWNER_PERMS, OPEN_VALID_GROUP_PERMS, OPEN_VALID_OTHER_PERMS),
            (self.special_perms, self.owner_perms, self.group_perms, self.other_perms), default_owner=6,
        )


def _permissions(mask: int, bits: tuple[int, int, int, int], perms: tuple[int, int, int, int], *,
                 default_owner: int) -> int:
    special, owner, group, other = (value & 7 for value in perms)
    mode = (special << 9) if mask & bits[0] else 0
    owner = owner if mask & bits[1] else default_owner
    mode |= owner << 6
    mode |= (group if mask & bits[2] else owner) << 3
    mode |= other if mask & bits[3] else owner
    return mode


@dataclass(frozen=True)
class OpenReply(_Fixed):
    handle: int
    acquired_lock: int = 0
    flags: int = 0

    FORMAT = struct.Struct("<IIII")
    RESERVED = 1


@dataclass(frozen=True)
class ReadRequest(_Fixed):
    """ReadV3: ``size`` bytes from ``offset`` (64-bit)."""

    handle: int
    offset: int
    size: int

    FORMAT = struct.Struct("<IQIQ")
    RESERVED = 1


_READ_REPLY = struct.Struct("<IQ")


@dataclass(frozen=True)
class ReadReply:
    data: Data

    def encode(self) -> bytes:
        return b"".join(self.parts())

    def parts(self) -> list[Data]:
        return [_READ_REPLY.pack(len(self.data), 0), self.data]

    @classmethod
    def decode(cls, data: Data) -> ReadReply:
        reader = _Reader(data, "ReadV3 reply")
        (size, _) = reader.take(_READ_REPLY)
        # vmtoolsd's reply carries one more byte than it says (sizeof with payload[1]).
        return cls(reader.view(size))


_WRITE = struct.Struct("<IBQIQ")


@dataclass(frozen=True)
class WriteRequest:
    """WriteV3: ``data`` at ``offset`` (or at the end, with WRITE_APPEND)."""

    handle: int
    offset: int
    data: Data
    flags: int = 0

    def encode(self) -> bytes:
        return b"".join(self.parts())

    def parts(self) -> list[Data]:
        return [_WRITE.pack(self.handle, self.flags, self.offset, len(self.data), 0), self.data]

    @classmethod
    def decode(cls, data: Data) -> WriteRequest:
        reader = _Reader(data, "WriteV3 request")
        handle, flags, offset, size, _ = reader.take(_WRITE)
        return cls(handle, offset, reader.view(size), flags)


@dataclass(frozen=True)
class WriteReply(_Fixed):
    written: int

    FORMAT = _READ_REPLY
    RESERVED = 1


@dataclass(frozen=True)
class CloseRequest(_Fixed):
    """CloseV3 (and SearchCloseV3, whose layout is the same)."""

    handle: int

    FORMAT = struct.Struct("<IQ")
    RESERVED = 1


@dataclass(frozen=True)
class LegacyCloseRequest(_Fixed):
    """The V1 Close (op 3), which file-copy clients use."""

    handle: int

    FORMAT = _U32


_HINTS_RESERVED = struct.Struct("<QQ")


@dataclass(frozen=True)
class NameRequest:
    """hints, reserved, name: GetattrV3, DeleteFileV3, DeleteDirV3."""

    name: FileNameV3
    hints: int = 0

    def encode(self) -> bytes:
        return _HINTS_RESERVED.pack(self.hints, 0) + self.name.encode()

    @classmethod
    def decode(cls, data: Data) -> NameRequest:
        reader = _Reader(data, cls.__name__)
        hints, _ = reader.take(_HINTS_RESERVED)
        return cls(FileNameV3.read(reader), hints)


@dataclass(frozen=True)
class ReservedNameRequest:
    """reserved, name: SearchOpenV3, QueryVolumeInfoV3."""

    name: FileNameV3

    def encode(self) -> bytes:
        return _U64.pack(0) + self.name.encode()

    @classmethod
    def decode(cls, data: Data) -> ReservedNameRequest:
        reader = _Reader(data, cls.__name__)
        reader.take(_U64)
        return cls(FileNameV3.read(reader))


@dataclass(frozen=True)
class GetattrReply:
    """GetattrV3 reply: attributes, and the target when it is a symlink."""

    attr: AttrV2
    symlink_target: FileNameV3 = field(default_factory=lambda: FileNameV3(fid=0))

    def encode(self) -> bytes:
        return self.attr.encode() + _U64.pack(0) + self.symlink_target.encode()

    @classmethod
    def decode(cls, data: Data) -> GetattrReply:
        reader = _Reader(data, "GetattrV3 reply")
        attr = AttrV2.read(reader)
        reader.take(_U64)
        return cls(attr, FileNameV3.read(reader))


_GETATTR_V2 = struct.Struct("<QI")


@dataclass(frozen=True)
class GetattrV2Request:
    name: bytes
    hints: int = 0
    handle: int = INVALID_HANDLE

    def encode(self) -> bytes:
        return _GETATTR_V2.pack(self.hints, self.handle) + _encode_name(self.name)

    @classmethod
    def decode(cls, data: Data) -> GetattrV2Request:
        reader = _Reader(data, "GetattrV2 request")
        hints, handle = reader.take(_GETATTR_V2)
        return cls(_read_name(reader), hints, handle)


@dataclass(frozen=True)
class GetattrV2Reply:
    attr: AttrV2
    symlink_target: bytes = b""

    def encode(self) -> bytes:
        return self.attr.encode() + _encode_name(self.symlink_target)

    @classmethod
    def decode(cls, data: Data) -> GetattrV2Reply:
        reader = _Reader(data, "GetattrV2 reply")
        attr = AttrV2.read(reader)
        return cls(attr, _read_name(reader))


@dataclass(frozen=True)
class SetattrV2Request:
    name: bytes
    attr: AttrV2
    hints: int = 0
    handle: int = INVALID_HANDLE

    def encode(self) -> bytes:
        return _U64.pack(self.hints) + self.attr.encode() + _U32.pack(self.handle) + _encode_name(self.name)

    @classmethod
    def decode(cls, data: Data) -> SetattrV2Request:
        reader = _Reader(data, "SetattrV2 request")
        (hints,) = reader.take(_U64)
        attr = AttrV2.read(reader)
        (handle,) = reader.take(_U32)
        return cls(_read_name(reader), attr, hints, handle)


@dataclass(frozen=True)
class SetattrRequest:
    """SetattrV3."""

    name: FileNameV3
    attr: AttrV2
    hints: int = 0

    def encode(self) -> bytes:
        return _U64.pack(self.hints) + self.attr.encode() + _U64.pack(0) + self.name.encode()

    @classmethod
    def decode(cls, data: Data) -> SetattrRequest:
        reader = _Reader(data, "SetattrV3 request")
        (hints,) = reader.take(_U64)
        attr = AttrV2.read(reader)
        reader.take(_U64)
        return cls(FileNameV3.read(reader), attr, hints)


_CREATE_DIR = struct.Struct("<QBBBBQ")


@dataclass(frozen=True)
class CreateDirRequest:
    """CreateDirV3."""

    name: FileNameV3
    mask: int = CREATE_DIR_VALID_OWNER_PERMS | CREATE_DIR_VALID_FILE_NAME
    special_perms: int = 0
    owner_perms: int = 7
    group_perms: int = 0
    other_perms: int = 0
    attr: int = 0

    def encode(self) -> bytes:
        head = _CREATE_DIR.pack(
            self.mask, self.special_perms, self.owner_perms, self.group_perms, self.other_perms, self.attr
        )
        return head + self.name.encode()

    @classmethod
    def decode(cls, data: Data) -> CreateDirRequest:
        reader = _Reader(data, "CreateDirV3 request")
        mask, special, owner, group, other, attr = reader.take(_CREATE_DIR)
        return cls(FileNameV3.read(reader), mask, special, owner, group, other, attr)

    @property
    def permissions(self) -> int:
        """The mode the new directory asks for (before the umask), as vmtoolsd reads it: owner rwx
        if not given, the owner's for a group or other not given."""
        return _permissions(
            self.mask,
            (CREATE_DIR_VALID_SPECIAL_PERMS, CREATE_DIR_VALID_OWNER_PERMS, CREATE_DIR_VALID_GROUP_PERMS,
             CREATE_DIR_VALID_OTHER_PERMS),
            (self.special_perms, self.owner_perms, self.group_perms, self.other_perms), default_owner=7,
        )


@dataclass(frozen=True)
class RenameRequest:
    """RenameV3."""

    old: FileNameV3
    new: FileNameV3
    hints: int = 0

    def encode(self) -> bytes:
        return _HINTS_RESERVED.pack(self.hints, 0) + self.old.encode() + self.new.encode()

    @classmethod
    def decode(cls, data: Data) -> RenameRequest:
        reader = _Reader(data, "RenameV3 request")
        hints, _ = reader.take(_HINTS_RESERVED)
        old = FileNameV3.read(reader)
        return cls(old, FileNameV3.read(reader), hints)


@dataclass(frozen=True)
class QueryVolumeReply(_Fixed):
    free_bytes: int
    total_bytes: int

    FORMAT = struct.Struct("<QQQ")
    RESERVED = 1


@dataclass(frozen=True)
class SearchOpenReply(_Fixed):
    handle: int

    FORMAT = struct.Struct("<IQ")
    RESERVED = 1


@dataclass(frozen=True)
class SearchReadRequest(_Fixed):
    """SearchReadV3: the entry at index ``offset`` of an open search."""

    handle: int
    offset: int
    flags: int = 0

    FORMAT = struct.Struct("<IIIQ")
    RESERVED = 1


@dataclass(frozen=True)
class DirEntry:
    """One HgfsDirEntry; an empty ``name`` marks the end of the directory."""

    name: bytes
    attr: AttrV2 = field(default_factory=AttrV2)

    def encode(self) -> bytes:
        return _U32.pack(0) + self.attr.encode() + FileNameV3(self.name, fid=0).encode()


@dataclass(frozen=True)
class SearchReadReply:
    entries: tuple[DirEntry, ...]

    def encode(self) -> bytes:
        return _HINTS_RESERVED.pack(len(self.entries), 0) + b"".join(entry.encode() for entry in self.entries)

    @classmethod
    def decode(cls, data: Data) -> SearchReadReply:
        reader = _Reader(data, "SearchReadV3 reply")
        count, _ = reader.take(_HINTS_RESERVED)
        if count > len(data) // (4 + AttrV2.SIZE + _NAME_V3.size):
            raise HGFSMalformedError(f"SearchReadV3 reply announces {count} entries")
        entries = []
        for _ in range(count):
            reader.take(_U32)
            attr = AttrV2.read(reader)
            entries.append(DirEntry(FileNameV3.read(reader).name, attr))
        return cls(tuple(entries))

    @property
    def end(self) -> bool:
        """No entry at this index: the search is over."""
        return not self.entries or not self.entries[0].name


# op → (request message, reply message): the ops this codec speaks.
MESSAGES: dict[int, tuple[type, type]] = {
    Op.CLOSE: (LegacyCloseRequest, Empty),
    Op.GETATTR_V2: (GetattrV2Request, GetattrV2Reply),
    Op.SETATTR_V2: (SetattrV2Request, Empty),
    Op.OPEN_V3: (OpenRequest, OpenReply),
    Op.READ_V3: (ReadRequest, ReadReply),
    Op.WRITE_V3: (WriteRequest, WriteReply),
    Op.CLOSE_V3: (CloseRequest, Reserved),
    Op.SEARCH_OPEN_V3: (ReservedNameRequest, SearchOpenReply),
    Op.SEARCH_READ_V3: (SearchReadRequest, SearchReadReply),
    Op.SEARCH_CLOSE_V3: (CloseRequest, Reserved),
    Op.GETATTR_V3: (NameRequest, GetattrReply),
    Op.SETATTR_V3: (SetattrRequest, Reserved),
    Op.CREATE_DIR_V3: (CreateDirRequest, Reserved),
    Op.DELETE_FILE_V3: (NameRequest, Reserved),
    Op.DELETE_DIR_V3: (NameRequest, Reserved),
    Op.RENAME_V3: (RenameRequest, Reserved),
    Op.QUERY_VOLUME_INFO_V3: (ReservedNameRequest, QueryVolumeReply),
    Op.CREATE_SESSION_V4: (CreateSessionRequest, CreateSessionReply),
    Op.DESTROY_SESSION_V4: (Reserved, Reserved),
}


def decode_request_body(op: int, body: Data) -> object:
    """The op's request message; `HGFSUnsupportedOp` or `HGFSMalformedError`."""
    pair = MESSAGES.get(op)
    if pair is None:
        raise HGFSUnsupportedOp(f"HGFS op {op} is not supported")
    return _decode(pair[0], body)


def decode_reply_body(op: int, body: Data) -> object:
    pair = MESSAGES.get(op)
    if pair is None:
        raise HGFSUnsupportedOp(f"HGFS op {op} is not supported")
    return _decode(pair[1], body)


def _decode(cls: type, body: Data) -> object:
    try:
        return cls.decode(body)  # type: ignore[attr-defined]
    except HGFSError:
        raise
    except (struct.error, ValueError, IndexError) as error:  # a field out of range for its enum, etc.
        raise HGFSMalformedError(f"{cls.__name__}: {error}") from error


def encode_request(header: Header, message: Message) -> bytes:
    return b"".join(request_pieces(header, message))


def request_pieces(header: Header, message: Message) -> list[Data]:
    """`encode_request` before the join: for a carrier that puts its own bytes in front (TCLO's ``f ``)."""
    return packet_pieces(header, _parts(message), reply=False)


def encode_reply(request: Header, status: int, message: Message | None = None, session_id: int | None = None) -> bytes:
    """The reply to ``request``: ``message`` on success, the bare header on an error."""
    return b"".join(reply_pieces(request, status, message, session_id))


def reply_pieces(
    request: Header, status: int, message: Message | None = None, session_id: int | None = None
) -> list[Data]:
    """`encode_reply` in pieces, file data among them as it is (not yet copied into one packet)."""
    body = _parts(message) if message is not None and status == Status.SUCCESS else []
    return packet_pieces(request.reply(status, session_id), body, reply=True)


def error_reply(data: Data, status: int = Status.PROTOCOL_ERROR) -> bytes:
    """A reply to a packet whose header could not be read: the request id if there is one."""
    request_id = _U32.unpack_from(data)[0] if len(data) >= 4 else 0
    return _LEGACY.pack(request_id, status)
