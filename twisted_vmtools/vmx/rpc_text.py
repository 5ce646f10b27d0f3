"""The VMX's RPC records as ``vmtools-sim log`` and ``serve --trace`` show them."""

from __future__ import annotations

from ..printable import TRACE_BYTES as TRACE_BYTES  # re-exported: the simulator's trace uses both
from ..printable import abridged
from .stores import RPCRecord

SHOWN_BYTES = 400  # of one record's data in `log`: enough for a text RPC, a glimpse of a binary one


def record_line(record: RPCRecord, shown: int = SHOWN_BYTES) -> str:
    """``arrow channel: data`` with at most ``shown`` bytes of the data, and how many more there were."""
    return f"{record.arrow} {record.channel}: {abridged(record.data, shown, record.size)}"
