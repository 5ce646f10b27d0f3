"""The stream transport's preamble: which channel a new connection carries.

On vsock the port says whether a connection is RPCI (976) or TCLO (975).  A
stream socket (``unix:``/``tcp:``) has one address, so the guest's first four
bytes name the channel, using the message channel's own protocol numbers
(``RPCI``/``TCLO`` in ASCII); ``CTRL`` is the simulator's control channel.
See docs/stream-transport.md.
"""

from __future__ import annotations

import enum
import struct

from .errors import CodecError
from .registers import PROTO_RPCI, PROTO_TCLO

PREAMBLE_SIZE = 4


class StreamPreambleError(CodecError):
    """The first four bytes of a connection name no known channel."""


class StreamKind(enum.IntEnum):
    RPCI = PROTO_RPCI
    TCLO = PROTO_TCLO
    CONTROL = 0x4C525443  # b"CTRL"

    @property
    def preamble(self) -> bytes:
        return struct.pack("<I", self.value)


def parse_preamble(data: bytes) -> StreamKind:
    if len(data) != PREAMBLE_SIZE:
        raise StreamPreambleError("stream preamble must be 4 bytes")
    (value,) = struct.unpack("<I", data)
    try:
        return StreamKind(value)
    except ValueError:
        raise StreamPreambleError(f"unknown stream preamble {data!r}") from None
