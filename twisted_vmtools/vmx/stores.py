"""The VMX's stores, each with a cap: what a guest or a control client puts in them is bounded.

A real VMX caps guest-set data (``tools.setInfo.sizeLimit``, 1 MB a value);
the simulator caps every store it keeps, so no input can grow its memory
without bound: the guestinfo store (per value and in total), the RPC log
(records and bytes, each record's data cut), and the tools' own log.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass

from ..codecs.rpci import GUESTINFO_PREFIX, MAX_GUESTINFO_VALUE

GUESTINFO_TOTAL_LIMIT = 16 << 20  # all keys and values together
GUESTINFO_KEY_LIMIT = 1024
ENTRY_OVERHEAD = 128  # what one more key costs beyond its bytes: many tiny keys are not free

RPC_LOG_RECORDS = 5000
RPC_LOG_DATA = 64 << 10  # bytes of each record's data kept (whole RPCI requests; its size is kept too)
RPC_LOG_BYTES = 8 << 20  # of kept data, all records together

TOOLS_LOG_ENTRIES = 256  # lines of the guest's ``log`` RPC kept
TOOLS_LOG_LINE = 1024


def guestinfo_key(raw: bytes) -> str:
    """A key as the store keeps it: text, any byte that is not UTF-8 kept as a surrogate escape.

    A guest (or ``vmtools-sim guestinfo``) may name a key in any bytes; kept this
    way it reads back as the very bytes it was set with, as ``os.fsdecode`` does
    for file names.
    """
    return raw.decode("utf-8", "surrogateescape")


def guestinfo_key_bytes(key: str) -> bytes:
    """The bytes a key stands for (the inverse of `guestinfo_key`)."""
    return key.encode("utf-8", "surrogateescape")


def check_guestinfo_key(key: str) -> str:
    """``key`` if it names a guestinfo value (``guestinfo.NAME``, what info-set and info-get reach),
    else `GuestInfoRefused`: a key the guest can never read is a mistake, not a value to keep."""
    raw = guestinfo_key_bytes(key)
    if not raw.startswith(GUESTINFO_PREFIX) or raw == GUESTINFO_PREFIX:
        shown = raw.decode("utf-8", "backslashreplace")[:80]
        raise GuestInfoRefused(f"a guestinfo key is guestinfo.NAME, not {shown!r}")
    return key


class GuestInfoRefused(ValueError):
    """A guestinfo key or value over the caps: refused, the store unchanged."""


class GuestInfoStore(MutableMapping[str, bytes]):
    """``guestinfo.*`` values, bounded per value (what a guest can read back) and in total."""

    def __init__(
        self, *, value_limit: int = MAX_GUESTINFO_VALUE, total_limit: int = GUESTINFO_TOTAL_LIMIT
    ) -> None:
        self._values: dict[str, bytes] = {}
        self._used = 0
        self.value_limit = value_limit
        self.total_limit = total_limit

    @property
    def used(self) -> int:
        """Bytes counted against the total cap."""
        return self._used

    def __getitem__(self, key: str) -> bytes:
        return self._values[key]

    def __setitem__(self, key: str, value: bytes) -> None:
        if not isinstance(value, bytes):
            raise TypeError(f"guestinfo values are bytes, not {type(value).__name__}")
        size = len(guestinfo_key_bytes(check_guestinfo_key(key)))
        if size > GUESTINFO_KEY_LIMIT:
            raise GuestInfoRefused(f"guestinfo key of {size} bytes exceeds {GUESTINFO_KEY_LIMIT}")
        if len(value) > self.value_limit:
            raise GuestInfoRefused(
                f"guestinfo value of {len(value)} bytes exceeds {self.value_limit}, the most a guest can read back"
            )
        old = self._values.get(key)
        freed = _cost(key, old) if old is not None else 0
        needed = self._used - freed + _cost(key, value)
        if needed > self.total_limit:
            raise GuestInfoRefused(f"the guestinfo store is full ({self.total_limit} bytes)")
        self._values[key] = value
        self._used = needed

    def __delitem__(self, key: str) -> None:
        value = self._values.pop(key)
        self._used -= _cost(key, value)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"GuestInfoStore({len(self)} keys, {self._used} bytes)"


def _cost(key: str, value: bytes) -> int:
    return len(guestinfo_key_bytes(key)) + len(value) + ENTRY_OVERHEAD


ARROWS = {
    "rpci-in": "guest→VMX RPCI",
    "rpci-out": "VMX→guest RPCI",
    "tclo-out": "VMX→guest TCLO",
    "tclo-in": "guest→VMX TCLO",
}


@dataclass(frozen=True)
class RPCRecord:
    """One RPC as the VMX saw it.  ``direction``: 'rpci-in' (guest request),
    'rpci-out' (VMX reply), 'tclo-out' (command), 'tclo-in' (guest reply).
    In the log, ``data`` is cut to `RPC_LOG_DATA` bytes; ``size`` is the RPC's whole size."""

    when: float
    direction: str
    channel: str
    data: bytes
    size: int = -1

    def __post_init__(self) -> None:
        if self.size < 0:
            object.__setattr__(self, "size", len(self.data))

    @property
    def arrow(self) -> str:
        return ARROWS.get(self.direction, self.direction)

    def cut(self, limit: int) -> RPCRecord:
        if len(self.data) <= limit:
            return self
        return RPCRecord(self.when, self.direction, self.channel, self.data[:limit], self.size)


class RPCLog:
    """The last RPCs, oldest first: at most `records` of them, `data_bytes` of data in all."""

    def __init__(
        self, records: int = RPC_LOG_RECORDS, data_limit: int = RPC_LOG_DATA, data_bytes: int = RPC_LOG_BYTES
    ) -> None:
        self._records: deque[RPCRecord] = deque()
        self._max_records = records
        self._data_limit = data_limit
        self._max_bytes = data_bytes
        self._bytes = 0
        self.total = 0  # records ever appended: a mark that survives old ones falling off

    def append(self, record: RPCRecord) -> None:
        kept = record.cut(self._data_limit)
        self._records.append(kept)
        self._bytes += len(kept.data)
        self.total += 1
        while len(self._records) > self._max_records or self._bytes > self._max_bytes:
            self._bytes -= len(self._records.popleft().data)

    @property
    def data_bytes(self) -> int:
        return self._bytes

    def since(self, mark: int) -> list[RPCRecord]:
        """Records appended after ``total`` was ``mark`` (those still kept)."""
        return list(self._records)[max(0, len(self._records) - (self.total - mark)) :]

    def __iter__(self) -> Iterator[RPCRecord]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> RPCRecord:
        return self._records[index]


class ToolsLog:
    """The lines a guest sent with the ``log`` RPC: the last `TOOLS_LOG_ENTRIES`, each cut."""

    def __init__(self, entries: int = TOOLS_LOG_ENTRIES, line: int = TOOLS_LOG_LINE) -> None:
        self._lines: deque[str] = deque(maxlen=entries)
        self._line = line

    def append(self, text: str) -> None:
        self._lines.append(text[: self._line])

    def __iter__(self) -> Iterator[str]:
        return iter(self._lines)

    def __len__(self) -> int:
        return len(self._lines)
