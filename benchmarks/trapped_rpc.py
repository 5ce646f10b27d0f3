"""TCLO round trips through the real backdoor under the trap engine: vmtoolsd against ours.

Each guest runs trapped against an in-process simulated VMX; once it answers,
the VMX sends N sequential TCLO commands and the wall time and the number of
trapped backdoor instructions per command are taken from the VMX's backdoor
counters.  Two commands:

- ``ping``: the bare TCLO round trip (vmtoolsd needs 5 traps per ping with
  high-bandwidth transfers: the reply SENDSIZE + HB out, then RECVSIZE + HB in
  + RECVSTATUS for the next command; polls in between add more);
- ``Set_Option broadcastIP 1``: a round trip that makes the guest send one RPCI
  (``info-set guestinfo.ip …``) before it answers.

Both with the VMX offering high-bandwidth transfers and without (4-byte ``in``
calls only).  Run: ``python benchmarks/trapped_rpc.py [--count N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater, react

from twisted_vmtools.vmx.model import VMX
from twisted_vmtools.vmx.trapped import spawn_guest, twistd_vmtools, until_running

VMTOOLSD = ["vmtoolsd", "-n", "vmsvc"]


async def measure(reactor: Any, argv: list[str], high_bandwidth: bool, count: int) -> dict[str, tuple[float, float]]:
    vmx = VMX(reactor, ping_interval=3600)
    devnull = os.open(os.devnull, os.O_WRONLY)
    program = spawn_guest(reactor, vmx, argv, high_bandwidth=high_bandwidth, stdout=devnull, stderr=devnull)
    host = program.engine.host
    try:
        await until_running(reactor, vmx)
        await deferLater(reactor, 2.0, lambda: None)  # let start-up traffic finish
        results = {}
        for command in (b"ping", b"Set_Option broadcastIP 1"):
            traps_before = sum(host.host.counts.values())
            started = time.perf_counter()
            for _ in range(count):
                await vmx.send(command)
            elapsed = time.perf_counter() - started
            traps = sum(host.host.counts.values()) - traps_before
            results[command.decode()] = (count / elapsed, traps / count)
        return results
    finally:
        program.terminate()
        await program.ended
        os.close(devnull)


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args(argv)
    guests = [("twistd vmtools", twistd_vmtools("--transport", "backdoor", "--guestinfo-interval", "0"))]
    if shutil.which("vmtoolsd"):
        guests.insert(0, ("vmtoolsd", VMTOOLSD))
    print(f"{'guest':16} {'transfers':15} {'command':26} {'round trips/s':>14} {'traps/command':>14}")
    for name, command in guests:
        for high_bandwidth in (True, False):
            results = await measure(reactor, command, high_bandwidth, args.count)
            for tclo, (rate, traps) in results.items():
                mode = "high bandwidth" if high_bandwidth else "low bandwidth"
                print(f"{name:16} {mode:15} {tclo:26} {rate:14.0f} {traps:14.1f}")


if __name__ == "__main__":
    react(lambda reactor: ensureDeferred(main(reactor, sys.argv[1:])))
