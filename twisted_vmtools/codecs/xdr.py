"""A tiny XDR (RFC 4506) packer and unpacker, just what rpcgen's guest-info types need.

Everything is big-endian 4-byte units.  Decoding is strict where rpcgen's
output is canonical (zero padding, booleans and pointer flags of 0 or 1,
counts within their declared maximum), so a decoder never has to guess; any
malformed input raises `XDRError` and nothing else.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import TypeVar

from .errors import CodecError

T = TypeVar("T")

U32_MAX = 0xFFFFFFFF
_BE32 = struct.Struct(">I")
_BE32_SIGNED = struct.Struct(">i")


class XDRError(CodecError):
    """Malformed XDR, or a value that cannot be encoded as the declared type."""


def _padding(length: int) -> int:
    return -length % 4


class Packer:
    """Appends XDR items; `data` is the encoding so far."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    @property
    def data(self) -> bytes:
        return b"".join(self._parts)

    def u32(self, value: int) -> None:
        if not 0 <= value <= U32_MAX:
            raise XDRError(f"unsigned int out of range: {value}")
        self._parts.append(_BE32.pack(value))

    def i32(self, value: int) -> None:
        if not -(1 << 31) <= value < (1 << 31):
            raise XDRError(f"int out of range: {value}")
        self._parts.append(_BE32_SIGNED.pack(value))

    def enum(self, value: int) -> None:
        self.i32(int(value))

    def bool(self, value: bool) -> None:
        self.u32(1 if value else 0)

    def opaque(self, data: bytes, max_length: int = U32_MAX) -> None:
        """Variable-length opaque (and ``string``): length, bytes, zero pad to 4."""
        if len(data) > max_length:
            raise XDRError(f"{len(data)} bytes exceed the maximum of {max_length}")
        self.u32(len(data))
        self._parts.append(data + b"\0" * _padding(len(data)))

    string = opaque

    def chars(self, data: bytes, count: int) -> None:
        """``char x[count]``: rpcgen packs each char with xdr_char, i.e. as a whole int.

        A C ``char`` is signed on the platforms vmtoolsd runs on, so bytes of
        0x80 and above go out sign-extended, as xdr_char sends them.
        """
        if len(data) > count:
            raise XDRError(f"{len(data)} chars do not fit char[{count}]")
        for byte in data.ljust(count, b"\0"):
            self.i32(byte - 256 if byte >= 0x80 else byte)

    def optional(self, value: T | None, pack: Callable[[T], None]) -> None:
        """An optional-data pointer (``T *x``): a boolean flag, then the value if present."""
        self.bool(value is not None)
        if value is not None:
            pack(value)

    def array(self, items: Sequence[T], pack: Callable[[T], None], max_count: int = U32_MAX) -> None:
        """A variable-length array ``T x<max_count>``."""
        if len(items) > max_count:
            raise XDRError(f"{len(items)} elements exceed the maximum of {max_count}")
        self.u32(len(items))
        for item in items:
            pack(item)


class Unpacker:
    """Reads XDR items from ``data``; call `done` to insist nothing is left over."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(bytes(data))
        self._offset = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._offset

    def _take(self, length: int) -> bytes:
        if length > self.remaining:
            raise XDRError(f"truncated: {length} bytes needed at offset {self._offset}, {self.remaining} left")
        chunk = bytes(self._data[self._offset : self._offset + length])
        self._offset += length
        return chunk

    def u32(self) -> int:
        value: int = _BE32.unpack(self._take(4))[0]
        return value

    def i32(self) -> int:
        value: int = _BE32_SIGNED.unpack(self._take(4))[0]
        return value

    def enum(self) -> int:
        return self.i32()

    def bool(self) -> bool:
        value = self.u32()
        if value > 1:
            raise XDRError(f"boolean is neither 0 nor 1: {value}")
        return value == 1

    def opaque(self, max_length: int = U32_MAX) -> bytes:
        length = self.u32()
        if length > max_length:
            raise XDRError(f"length {length} exceeds the maximum of {max_length}")
        data = self._take(length)
        if self._take(_padding(length)).strip(b"\0"):
            raise XDRError("non-zero padding")
        return data

    string = opaque

    def chars(self, count: int) -> bytes:
        """``char x[count]``, each char a whole int (see `Packer.chars`)."""
        out = bytearray()
        for _ in range(count):
            value = self.i32()
            if not -128 <= value <= 255:
                raise XDRError(f"char out of range: {value}")
            out.append(value & 0xFF)
        return bytes(out)

    def optional(self, unpack: Callable[[], T]) -> T | None:
        return unpack() if self.bool() else None

    def array(self, unpack: Callable[[], T], max_count: int = U32_MAX) -> list[T]:
        count = self.u32()
        if count > max_count:
            raise XDRError(f"{count} elements exceed the maximum of {max_count}")
        # Each element takes at least 4 bytes: refuse a huge count before looping on it.
        if count > self.remaining // 4:
            raise XDRError(f"truncated: {count} elements announced, {self.remaining} bytes left")
        return [unpack() for _ in range(count)]

    def done(self) -> None:
        if self.remaining:
            raise XDRError(f"{self.remaining} trailing bytes")

