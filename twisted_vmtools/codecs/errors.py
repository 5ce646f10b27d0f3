"""`CodecError`: the one base of every codec's error.

Each protocol's codec raises its own subclass (`TCLOError`, `RPCIFormatError`,
`VsockPacketError`, `MessageChannelError`, `XDRError`, `HGFSError`, …), so a
caller catches one protocol's malformed input by its class, or any
protocol's with ``except CodecError``.  A `ValueError`, as bad input is.
"""

from __future__ import annotations


class CodecError(ValueError):
    """Bytes that do not follow a protocol's format, or a value that cannot be encoded in it."""
