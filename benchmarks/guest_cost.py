"""CPU time and peak RSS of vmtoolsd and of our guest tools, on the conformance scenarios.

Both guests run under the trap engine against the simulated VMX (ours over the
real backdoor through the C extension, as `vmtools-sim conformance` runs it),
while the scenarios of twisted_vmtools.vmx.conformance are played.  The
guest's process tree is sampled with psutil every 50 ms: CPU time is the last
reading of user+system per process, summed; peak RSS is the largest reading of
the guest's main process.  Forked helpers (vmtoolsd's lsb_release pipeline)
are counted in CPU time.

    python benchmarks/guest_cost.py
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import psutil
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import LoopingCall, react

from twisted_vmtools.vmx.conformance import Guest, Ours, Vmtoolsd, observe


class TreeSampler:
    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.cpu: dict[int, float] = {}
        self.peak_rss = 0

    def sample(self) -> None:
        for process in psutil.Process().children(recursive=True):
            try:
                cmdline = " ".join(process.cmdline())
                times = process.cpu_times()
                rss = process.memory_info().rss
            except psutil.Error:
                continue
            if "vmtools-sim" in cmdline or "launch" in cmdline and self.marker not in cmdline:
                continue
            self.cpu[process.pid] = times.user + times.system
            if self.marker in cmdline:
                self.peak_rss = max(self.peak_rss, rss)


async def measure(reactor: Any, guest: Guest, marker: str) -> tuple[float, int]:
    sampler = TreeSampler(marker)
    loop = LoopingCall(sampler.sample)
    loop.clock = reactor
    loop.start(0.05)
    try:
        await observe(reactor, guest)
    finally:
        loop.stop()
    return sum(sampler.cpu.values()), sampler.peak_rss


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    if not Vmtoolsd.available():
        raise SystemExit("open-vm-tools is not installed")
    rows = []
    for label, guest, marker in (
        ("vmtoolsd -n vmsvc (open-vm-tools 12.2)", Vmtoolsd(), "vmtoolsd"),
        ("twistd vmtools --transport backdoor", Ours("backdoor"), "twistd"),
    ):
        cpu, rss = await measure(reactor, guest, marker)
        rows.append((label, cpu, rss))
    print(f"{'guest (same scenarios, trapped)':42} {'CPU time':>10} {'peak RSS':>10}")
    for label, cpu, rss in rows:
        print(f"{label:42} {cpu:9.2f}s {rss / 2**20:8.1f}MB")


if __name__ == "__main__":
    react(lambda reactor: ensureDeferred(main(reactor, sys.argv[1:])))
