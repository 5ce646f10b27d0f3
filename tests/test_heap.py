"""keep_packets_in_heap: packet-sized blocks come from the heap and stop page-faulting."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Allocate, touch and free packet-sized blocks as a transfer does, and count the minor faults.
CHURN = """
import resource, sys
from twisted_vmtools.heap import keep_packets_in_heap
tuned = keep_packets_in_heap() if sys.argv[1] == "tuned" else None
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for size in range(520_000, 521_000, 5):
    block = b"x" * size
    other = block[1:] + b"y"
    del block, other
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True).stdout
    tuned, faults = out.split()
    return tuned, int(faults)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_packet_sized_blocks_stop_faulting() -> None:
    tuned, with_tuning = _faults("tuned")
    if tuned != "True":
        pytest.skip("not glibc: mallopt unavailable")
    _, default = _faults("default")
    # 200 rounds of two 520 KB blocks: by default each is a fresh mapping (about 127 faults);
    # tuned, they are reused heap memory.
    assert default > 200 * 100
    assert with_tuning < default / 20
