"""An RPC's bytes as a person reads them: ``vmtools-sim log``, ``serve --trace``, the demo.

RPCs are mostly ASCII text with the odd binary payload (XDR reports, HGFS
packets).  Shown as text, with every byte that is not printable UTF-8 written
as a backslash escape, a line stays one line and shows exactly what was sent,
without Python's ``b'…'`` quoting around it.
"""

from __future__ import annotations

from .stores import RPCRecord

SHOWN_BYTES = 400  # of one record's data in `log`: enough for a text RPC, a glimpse of a binary one
TRACE_BYTES = 4096  # in ``--trace``: a whole HGFS packet (up to 520 KB) on one line would bury the rest

_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNDECODED = range(0xDC80, 0xDD00)  # where surrogateescape puts a byte that is not UTF-8


def readable(data: bytes) -> str:
    """``data`` as one printable line: UTF-8 text as is, anything else escaped (``\\x00``, ``\\n``, ``\\\\``)."""
    text = data.decode("utf-8", "surrogateescape")
    if text.isprintable() and "\\" not in text:
        return text  # the usual RPC: nothing to escape
    return "".join(_escape(char) for char in text)


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    if char.isprintable():
        return char
    code = ord(char)
    if code in _UNDECODED:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def record_line(record: RPCRecord, shown: int = SHOWN_BYTES) -> str:
    """``arrow channel: data`` with at most ``shown`` bytes of the data, and how many more there were."""
    more = record.size - min(len(record.data), shown)
    suffix = f" (+{more} bytes)" if more > 0 else ""
    return f"{record.arrow} {record.channel}: {readable(record.data[:shown])}{suffix}"
