"""RPCI calls/s and TCLO round trips/s over the backdoor channel.

In memory (default): `BackdoorChannel` drives the message-channel state
machines against the simulated VMX (`VMX` + `BackdoorHost`) in this
process, with high-bandwidth transfers on and off.  This is the cost of our
guest-side Python per call, with no instruction executed.

Under the trap engine (``--trapped``): this script re-runs itself as
``vmtools-sim run -- python backdoor_rpc.py --hardware``, so the C extension
executes the real instructions, which fault and are emulated by the tracer.
The VMX lives in the tracer there and cannot be told to send TCLO commands,
so TCLO is measured as empty polls (a full send + receive cycle each).

    python benchmarks/backdoor_rpc.py              # in memory, 2 s per measurement
    python benchmarks/backdoor_rpc.py --trapped    # also under the trap engine (x86-64 Linux)
    python benchmarks/backdoor_rpc.py --duration 5
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface import implementer

from twisted_vmtools.channels.backdoor import BackdoorChannel, hardware_executor, host_executor
from twisted_vmtools.channels.detect import getversion_call
from twisted_vmtools.channels.interfaces import ITCLOHandler
from twisted_vmtools.codecs.message import PROTO_TCLO, Backdoor, GuestChannel, run_steps

REQUEST = b"info-get guestinfo.bench"
BIG = 16 * 1024  # a SetGuestInfo-sized payload


def measure(name: str, duration: float, op: Callable[[], object]) -> None:
    count = 0
    start = time.perf_counter()
    deadline = start + duration
    while time.perf_counter() < deadline:
        for _ in range(10):
            op()
        count += 10
    elapsed = time.perf_counter() - start
    print(f"{name:<44} {count / elapsed:>10,.0f}/s {elapsed / count * 1e6:>10.1f} µs")


def fired(d: Deferred[bytes]) -> bytes:
    results: list[object] = []
    d.addBoth(results.append)
    if not results or not isinstance(results[0], bytes):
        raise SystemExit(f"call failed: {results}")
    return results[0]


def rpci_benchmarks(label: str, executor: Backdoor, duration: float) -> None:
    channel = BackdoorChannel(executor, Clock())
    fired(channel.rpci(b"info-set guestinfo.bench " + b"x" * 20))
    measure(f"{label}: GETVERSION (1 backdoor call)", duration, lambda: executor(getversion_call()))
    measure(f"{label}: RPCI {REQUEST.decode()}", duration, lambda: fired(channel.rpci(REQUEST)))
    big = b"info-set guestinfo.big " + b"y" * BIG
    measure(f"{label}: RPCI info-set of {BIG // 1024} KiB", duration, lambda: fired(channel.rpci(big)))


def empty_polls(label: str, executor: Backdoor, duration: float) -> None:
    tclo = GuestChannel(PROTO_TCLO)
    run_steps(tclo.open(), executor)

    def poll() -> None:
        run_steps(tclo.send(b""), executor)
        run_steps(tclo.receive(), executor)

    measure(f"{label}: TCLO empty poll", duration, poll)
    run_steps(tclo.close(), executor)


@implementer(ITCLOHandler)
class Pong:
    def handle(self, command: bytes) -> Deferred[bytes]:
        return defer.succeed(b"OK ")


def in_memory(duration: float) -> None:
    from twisted_vmtools.vmx.backdoor_host import BackdoorHost
    from twisted_vmtools.vmx.endpoints import backdoor_endpoints
    from twisted_vmtools.vmx.model import VMX

    for high_bandwidth in (True, False):
        label = "memory, HB" if high_bandwidth else "memory, LB only"
        clock = Clock()
        vmx = VMX(clock)
        executor = host_executor(BackdoorHost(backdoor_endpoints(vmx), high_bandwidth=high_bandwidth))  # type: ignore[arg-type]
        rpci_benchmarks(label, executor, duration)
        empty_polls(label, executor, duration)

        # TCLO round trips: the VMX queues a command, the guest's poll loop (on the
        # Clock, so no waiting) fetches it, answers, and the reply rides the next poll.
        channel = BackdoorChannel(executor, clock)
        channel.start(Pong())
        clock.advance(0)  # the greeting (reset, ping)

        def round_trip(vmx: VMX = vmx, clock: Clock = clock) -> None:
            reply = vmx.send(b"ping")
            clock.advance(0.1)
            fired(reply)

        measure(f"{label}: TCLO ping round trip", duration, round_trip)
        channel.stop()
        vmx.stop()


def hardware(duration: float) -> None:
    from twisted_vmtools.channels.detect import detect

    found = detect()
    if not found.vmware or found.interface is None:
        raise SystemExit(f"not in a VMware VM (nor under the trap engine): {found.reason}")
    executor = hardware_executor(found.interface)
    rpci_benchmarks("trapped", executor, duration)
    empty_polls("trapped", executor, duration)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--trapped", action="store_true", help="also run under the trap engine")
    parser.add_argument("--hardware", action="store_true", help="use the real instructions (VMware or trapped)")
    args = parser.parse_args()
    if args.hardware:
        hardware(args.duration)
        return
    in_memory(args.duration)
    if args.trapped:
        command = [sys.executable, str(Path(__file__).resolve()), "--hardware", "--duration", str(args.duration)]
        sys.stdout.flush()
        subprocess.run([sys.executable, "-m", "twisted_vmtools.vmx.cli", "run", "--", *command], check=True)


if __name__ == "__main__":
    main()
