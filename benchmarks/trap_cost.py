"""Cost of one trapped instruction under the ptrace trap engine.

    python benchmarks/trap_cost.py [--count N]

Compiles tests/vmx/trap/programs/bench.c, then runs it under `TrapEngine` with the
tracer and tracee pinned to one CPU (the default) and unpinned, and prints
the wall time per trapped operation as measured inside the tracee.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from zope.interface import implementer

from twisted_vmtools.codecs import registers as bd
from twisted_vmtools.vmx.trap.engine import TrapEngine
from twisted_vmtools.vmx.trap.interfaces import IBackdoorHost

SOURCES = Path(__file__).resolve().parent.parent / "tests" / "vmx" / "trap" / "programs"


@implementer(IBackdoorHost)
class GetVersionHost:
    def low_bandwidth(self, owner: int, regs: bd.Registers) -> bd.Registers | None:
        return regs.with_(ax=bd.VERSION_MAGIC, bx=bd.BDOOR_MAGIC, cx=bd.VMX_TYPE_SCALABLE_SERVER)

    def high_bandwidth_out(self, owner: int, regs: bd.Registers, data: bytes) -> bd.Registers:
        return regs.with_(bx=bd.pack16(1, regs.bx))

    def high_bandwidth_in(self, owner: int, regs: bd.Registers) -> tuple[bd.Registers, bytes]:
        return regs.with_(bx=bd.pack16(1, regs.bx)), b""

    def owner_exited(self, owner: int) -> None:
        pass


def measure(program: str, args: list[str], pin_cpu: bool) -> tuple[float, float]:
    """(wall µs per operation seen by the tracee, tracer CPU µs per operation)."""
    read, write = os.pipe()
    try:
        engine = TrapEngine(GetVersionHost(), pin_cpu=pin_cpu, stdout=write, timeout=300)
        cpu = time.thread_time()
        status = engine.run([program, *args])
        cpu = time.thread_time() - cpu
    finally:
        os.close(write)
    with os.fdopen(read) as output:
        text = output.read()
    if status != 0:
        raise SystemExit(f"bench {args} failed with status {status}")
    return float(text), cpu / int(args[1]) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20000, help="operations per measurement")
    options = parser.parse_args()
    cc = shutil.which("cc")
    if cc is None:
        sys.exit("needs a C compiler (cc)")
    with tempfile.TemporaryDirectory() as tmp:
        program = os.path.join(tmp, "bench")
        subprocess.run([cc, "-O1", "-o", program, str(SOURCES / "bench.c")], check=True)
        n = str(options.count)
        cases = [
            ("in (GETVERSION)", ["in", n]),
            ("cpuid (int3)", ["cpuid", n]),
            ("rep outsb 4 KiB", ["hb", n, "4096"]),
        ]
        print("µs per operation: wall time in the tracee (and the tracer's CPU time)")
        print(f"{'operation':<20} {'pinned':>16} {'unpinned':>16}")
        for label, args in cases:
            pinned, pinned_cpu = measure(program, args, True)
            unpinned, unpinned_cpu = measure(program, args, False)
            print(f"{label:<20} {pinned:>7.1f} ({pinned_cpu:5.1f}) {unpinned:>7.1f} ({unpinned_cpu:5.1f})")
        native = subprocess.run([program, "cpuid", n], capture_output=True, text=True, check=True).stdout
        print(f"{'cpuid (untraced)':<20} {float(native):>10.1f}")


if __name__ == "__main__":
    main()
