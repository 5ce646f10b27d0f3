"""Keep packet-sized buffers in the C heap, so that bulk transfers do not page-fault.

CPython makes a new bytes object for every socket read, slice and join.  glibc
serves a block above its mmap threshold (128 KiB at first, then adapting to
the largest block freed) from a fresh mapping that is unmapped again when
freed, and gives the heap's free top back to the kernel above twice that
threshold.  A 520,192-byte HGFS packet then costs about 130 page faults at
every step that allocates, which measured as three quarters of the guest's
CPU per MiB moved (`benchmarks/hgfs_transfer.py`).  Fixed thresholds above the
largest packet keep those blocks in the heap, reused packet after packet; at
most `TRIM_THRESHOLD` of freed memory stays resident.

Applications call `keep_packets_in_heap` once at start (``twistd vmtools``,
``vmtools-sim``); the library never changes its host process's allocator.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 4 << 20  # above a whole stream packet (1 MiB) and a socket read of one (1 MiB)
TRIM_THRESHOLD = 16 << 20  # freed memory kept for reuse; bounds the resident growth it causes


def keep_packets_in_heap() -> bool:
    """Set this process's glibc malloc thresholds; False (and nothing changed) elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it; musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
