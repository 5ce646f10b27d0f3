"""CPU time and peak RSS of vmtoolsd and of our guest tools, on the conformance scenarios.

Both guests run under the trap engine against the simulated VMX (ours over the
real backdoor through the C extension, as `vmtools-sim conformance` runs it),
while the scenarios of twisted_vmtools.vmx.conformance are played.  The
daemon's process tree is sampled with psutil every 50 ms: CPU time is the last
reading of user+system (with reaped children) per process, summed; peak RSS is
the largest reading of the daemon itself.  Forked helpers (vmtoolsd's
lsb_release pipeline) count in CPU time; the one-shot rpctool runs do not
(vmware-rpctool is a small C program, vmtools-rpctool a Python one: that
difference is start-up cost, not the tools' work).

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
        for daemon in psutil.Process().children(recursive=True):
            try:
                if self.marker not in " ".join(daemon.cmdline()):
                    continue
                self.peak_rss = max(self.peak_rss, daemon.memory_info().rss)
                tree = [daemon, *daemon.children(recursive=True)]
            except psutil.Error:
                continue
            for process in tree:
                try:
                    times = process.cpu_times()
                except psutil.Error:
                    continue
                # Children that already exited and were reaped show in the daemon's children_* times.
                self.cpu[process.pid] = times.user + times.system + times.children_user + times.children_system


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
