"""Bytes as a person reads them: ``vmtools-sim log``, ``--trace`` on both sides, the demo.

RPCs are mostly ASCII text with the odd binary payload (XDR reports, HGFS
packets).  Shown as text, with every byte that is not printable UTF-8 written
as a backslash escape, a line stays one line and shows exactly what was sent,
without Python's ``b'…'`` quoting around it.  Shared by both stacks.
"""

from __future__ import annotations

TRACE_BYTES = 4096  # of one RPC in ``--trace``: a whole HGFS packet (up to 520 KB) on one line would bury the rest

_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNDECODED = range(0xDC80, 0xDD00)  # where surrogateescape puts a byte that is not UTF-8


def readable(data: bytes) -> str:
    """``data`` as one printable line: UTF-8 text as is, anything else escaped (``\\x00``, ``\\n``, ``\\\\``)."""
    text = data.decode("utf-8", "surrogateescape")
    if text.isprintable() and "\\" not in text:
        return text  # the usual RPC: nothing to escape
    return "".join(_escape(char) for char in text)


def abridged(data: bytes, shown: int, size: int | None = None) -> str:
    """`readable` of at most ``shown`` bytes, and how many more of ``size`` (default: ``len(data)``) there were."""
    more = (len(data) if size is None else size) - min(len(data), shown)
    return readable(data[:shown]) + (f" (+{more} bytes)" if more > 0 else "")


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    if char.isprintable():
        return char
    code = ord(char)
    if code in _UNDECODED:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
