"""The vsock packet: a big-endian length, then a DataMap.

open-vm-tools frames every RPCI request, TCLO command and reply on its vsock
channels (and we do the same on stream sockets) as ``BE32 length`` followed by
that many bytes of DataMap entries.  Each entry is ``BE32 type, BE32 fieldId,
value``; entries come in hash-table order, so the decoder accepts any order
but rejects a field that appears twice, as the C decoder does.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from .errors import CodecError

MAX_PACKET = 1 << 20  # far above any RPC; bounds what a peer can make us buffer
# Why a reply is an error when the packet it answers could not be read (docs/stream-transport.md):
# the VMX answers `0 malformed packet` (RPCI), the guest `ERROR malformed packet` (TCLO).
MALFORMED_PACKET = b"malformed packet"


class VsockPacketError(CodecError):
    """A vsock packet or DataMap that cannot be decoded."""


class FieldType(enum.IntEnum):
    INT64 = 1
    STRING = 2
    INT64LIST = 3
    STRINGLIST = 4


class FieldId(enum.IntEnum):
    TYPE = 1
    PAYLOAD = 2
    FAST_CLOSE = 3
    # Ours, not open-vm-tools' (which uses 1-3): the stream transport's TCLO pipelining
    # (docs/stream-transport.md).  A peer that does not know it ignores it.
    MAX_IN_FLIGHT = 100


class PacketType(enum.IntEnum):
    DATA = 1
    PING = 2


Value = int | bytes | tuple[int, ...] | tuple[bytes, ...]

_U32 = struct.Struct(">I")


def _encode_int64(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF
    # Low word first: DataMap writes the two halves separately, each in network order.
    return _U32.pack(value & 0xFFFFFFFF) + _U32.pack(value >> 32)


def _encode_string(value: bytes) -> bytes:
    return _U32.pack(len(value)) + value


def encode_datamap(entries: dict[int, tuple[FieldType, Value]]) -> bytes:
    """Encode ``{fieldId: (type, value)}`` as DataMap content (no length)."""
    out = bytearray()
    for field_id, (ftype, value) in entries.items():
        out += _U32.pack(ftype) + _U32.pack(field_id)
        if ftype is FieldType.INT64:
            assert isinstance(value, int)
            out += _encode_int64(value)
        elif ftype is FieldType.STRING:
            assert isinstance(value, bytes)
            out += _encode_string(value)
        elif ftype is FieldType.INT64LIST:
            assert isinstance(value, tuple)
            out += _U32.pack(len(value)) + b"".join(_encode_int64(int(v)) for v in value)
        else:
            assert isinstance(value, tuple)
            out += _U32.pack(len(value)) + b"".join(_encode_string(bytes(v)) for v in value)  # type: ignore[arg-type]
    return bytes(out)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.remaining():
            raise VsockPacketError(f"truncated DataMap: wanted {n} bytes, {self.remaining()} left")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u32(self) -> int:
        return int(_U32.unpack(self.take(4))[0])

    def int64(self) -> int:
        low = self.u32()
        high = self.u32()
        value = (high << 32) | low
        return value - (1 << 64) if value >= 1 << 63 else value

    def string(self) -> bytes:
        return self.take(self.u32())

    def count(self, unit: int) -> int:
        n = self.u32()
        if n * unit > self.remaining():
            raise VsockPacketError(f"DataMap list of {n} entries does not fit")
        return n


def decode_datamap(content: bytes) -> dict[int, tuple[FieldType, Value]]:
    """Decode DataMap content (no length prefix) into ``{fieldId: (type, value)}``."""
    reader = _Reader(content)
    entries: dict[int, tuple[FieldType, Value]] = {}
    while reader.remaining():
        raw_type = reader.u32()
        field_id = reader.u32()
        try:
            ftype = FieldType(raw_type)
        except ValueError:
            raise VsockPacketError(f"unknown DataMap field type {raw_type}") from None
        if field_id in entries:
            raise VsockPacketError(f"DataMap field {field_id} appears twice")
        value: Value
        if ftype is FieldType.INT64:
            value = reader.int64()
        elif ftype is FieldType.STRING:
            value = reader.string()
        elif ftype is FieldType.INT64LIST:
            value = tuple(reader.int64() for _ in range(reader.count(8)))
        else:
            value = tuple(reader.string() for _ in range(reader.count(4)))
        entries[field_id] = (ftype, value)
    return entries


@dataclass(frozen=True)
class VsockPacket:
    """One framed message: DATA carries a payload, PING is the guest's heartbeat."""

    type: PacketType = PacketType.DATA
    payload: bytes | None = None
    fast_close: bool = False
    # On a guest's TCLO reply: the TCLO commands it accepts in flight (0: not said, i.e. one).
    max_in_flight: int = 0
    extra: dict[int, tuple[FieldType, Value]] = field(default_factory=dict, compare=False)

    @classmethod
    def data(cls, payload: bytes, fast_close: bool = False) -> VsockPacket:
        return cls(PacketType.DATA, payload, fast_close)

    @classmethod
    def ping(cls) -> VsockPacket:
        return cls(PacketType.PING)

    def frame(self) -> list[bytes]:
        """The encoded packet in pieces: a DATA packet's payload goes out as it is, not copied behind its head."""
        if self.type is PacketType.DATA and self.payload is not None and not self._fields():
            # The common shape, byte for byte what the generic path of `encode` produces.
            size = len(self.payload)
            return [_U32.pack(_DATA_HEAD_SIZE + size) + _DATA_HEAD + _U32.pack(size), self.payload]
        return [self.encode()]

    def encode(self) -> bytes:
        if not self._fields():
            if self.type is PacketType.DATA and self.payload is not None:
                return b"".join(self.frame())
            if self.type is PacketType.PING and self.payload is None:
                return _PING_PACKET
        entries: dict[int, tuple[FieldType, Value]] = dict(self.extra)
        entries[FieldId.TYPE] = (FieldType.INT64, int(self.type))
        if self.payload is not None:
            entries[FieldId.PAYLOAD] = (FieldType.STRING, self.payload)
        if self.fast_close:
            entries[FieldId.FAST_CLOSE] = (FieldType.INT64, 1)
        if self.max_in_flight:
            entries[FieldId.MAX_IN_FLIGHT] = (FieldType.INT64, self.max_in_flight)
        content = encode_datamap(entries)
        return _U32.pack(len(content)) + content

    @classmethod
    def decode_content(cls, content: bytes | memoryview) -> VsockPacket:
        """One packet from its content (no length prefix); a view's bytes are copied, never kept."""
        # Nearly every packet is exactly TYPE=DATA then PAYLOAD, or a bare PING: those
        # decode without building the generic entry table (a measured hot spot), and
        # the payload is the one copy made of a 520 KB HGFS packet on its way in.
        if content[: len(_DATA_HEAD)] == _DATA_HEAD and len(content) >= _DATA_HEAD_SIZE:
            (length,) = _U32.unpack_from(content, _DATA_HEAD_SIZE - 4)
            if len(content) == _DATA_HEAD_SIZE + length:
                return cls(PacketType.DATA, bytes(content[_DATA_HEAD_SIZE:]))
        elif content == _PING:
            return cls(PacketType.PING)
        content = bytes(content)
        entries = decode_datamap(content)
        ptype = _typed(entries, FieldId.TYPE, FieldType.INT64)
        if not isinstance(ptype, int):
            raise VsockPacketError("vsock packet has no TYPE field")
        try:
            kind = PacketType(ptype)
        except ValueError:
            raise VsockPacketError(f"unknown vsock packet type {ptype}") from None
        payload = _typed(entries, FieldId.PAYLOAD, FieldType.STRING)
        if kind is PacketType.DATA and payload is None:
            raise VsockPacketError("vsock DATA packet has no PAYLOAD field")
        fast_close = _typed(entries, FieldId.FAST_CLOSE, FieldType.INT64)
        in_flight = _typed(entries, FieldId.MAX_IN_FLIGHT, FieldType.INT64)
        if not isinstance(in_flight, int):
            in_flight = 0  # absent (`_typed` checked the type of a present one)
        elif in_flight < 0:
            raise VsockPacketError(f"vsock field MAX_IN_FLIGHT is negative ({in_flight})")
        extra = {k: v for k, v in entries.items() if k not in _KNOWN_FIELDS}
        assert payload is None or isinstance(payload, bytes)
        return cls(kind, payload, bool(fast_close), in_flight, extra)

    def _fields(self) -> bool:
        """Whether any field beyond TYPE and PAYLOAD is set."""
        return bool(self.extra or self.fast_close or self.max_in_flight)


_KNOWN_FIELDS = frozenset(FieldId)
_TYPE_ENTRY = struct.Struct(">IIII")  # field type, field id, INT64 low word, high word
_PING = _TYPE_ENTRY.pack(FieldType.INT64, FieldId.TYPE, PacketType.PING, 0)
_DATA_HEAD = _TYPE_ENTRY.pack(FieldType.INT64, FieldId.TYPE, PacketType.DATA, 0) + struct.pack(
    ">II", FieldType.STRING, FieldId.PAYLOAD
)
_DATA_HEAD_SIZE = len(_DATA_HEAD) + 4  # and the payload's length
_PING_PACKET = _U32.pack(len(_PING)) + _PING
MAX_PAYLOAD = MAX_PACKET - _DATA_HEAD_SIZE  # the largest payload one DATA packet carries


def _typed(entries: dict[int, tuple[FieldType, Value]], fid: FieldId, ftype: FieldType) -> Value | None:
    entry = entries.get(fid)
    if entry is None:
        return None
    if entry[0] is not ftype:
        raise VsockPacketError(f"vsock field {fid.name} has type {entry[0].name}, not {ftype.name}")
    return entry[1]


class PacketDecoder:
    """Incremental decoder: feed bytes as they arrive, get whole packets out.

    A packet whose content is malformed comes out as a `VsockPacketError`
    in its place: its length prefix still says where the next one starts, so
    the stream can go on.  A length over the limit means the framing itself
    is lost; that raises.
    """

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self._buffer = bytearray()
        self._max = max_packet
        self._need = 0  # buffered bytes needed before anything can come out
        self.copied = 0  # bytes moved between buffers: linear in the input, whatever its chunking

    def feed(self, data: bytes) -> list[VsockPacket | VsockPacketError]:
        if self._buffer:
            # A partial packet waits: append (amortised constant per byte) and look again only
            # once it can be whole, so a peer writing one byte at a time costs linear time.
            self._buffer += data
            self.copied += len(data)
            if len(self._buffer) < self._need:
                return []
            packets, used = self._split(self._buffer)
            del self._buffer[:used]  # what is left is less than one packet
            self.copied += len(self._buffer)
            return packets
        # Usually `data` holds exactly one whole packet: its payload is copied out, nothing buffered.
        packets, used = self._split(data)
        if used < len(data):
            self._buffer += memoryview(data)[used:]
            self.copied += len(data) - used
        return packets

    def _split(self, data: bytes | bytearray) -> tuple[list[VsockPacket | VsockPacketError], int]:
        """The whole packets at the start of ``data``, and how many bytes they took."""
        packets: list[VsockPacket | VsockPacketError] = []
        position, size = 0, len(data)
        self._need = 4
        with memoryview(data) as view:  # released before the caller resizes a bytearray
            while size - position >= 4:
                (length,) = _U32.unpack_from(view, position)
                if length > self._max:
                    raise VsockPacketError(f"vsock packet of {length} bytes exceeds {self._max}")
                end = position + 4 + length
                if end > size:
                    self._need = 4 + length
                    break
                try:
                    packets.append(VsockPacket.decode_content(view[position + 4 : end]))
                except VsockPacketError as error:
                    packets.append(error)
                position = end
        return packets, position

    @property
    def buffered(self) -> int:
        """Bytes of a partial packet held (at most 4 + the packet limit)."""
        return len(self._buffer)

    @property
    def missing(self) -> int:
        """Bytes still to come before the partial packet held can be whole (0 when none is held)."""
        return max(self._need - len(self._buffer), 0) if self._buffer else 0


def decode_packet(data: bytes) -> VsockPacket:
    """Decode exactly one whole packet (length prefix included)."""
    if len(data) < 4:
        raise VsockPacketError("vsock packet shorter than its length prefix")
    (length,) = _U32.unpack_from(data)
    if length != len(data) - 4:
        raise VsockPacketError(f"vsock packet length {length} does not match {len(data) - 4} bytes")
    return VsockPacket.decode_content(data[4:])
