"""Round trips over the stream transport (a Unix socket) between two processes.

(a) RPCI: the guest side (``StreamChannel`` + ``RPCI``) runs here; the VMX is
    ``vmtools-sim serve`` in a subprocess.
(b) TCLO: the VMX (``SimulatorService``) runs here and drives ``vmx.send(b"ping")``
    directly (not through the AMP control channel, which would measure AMP);
    the guest is ``twistd -n vmtools --transport unix:PATH`` in a subprocess.
(c) The guest subprocess's CPU while idle (heartbeats and the VMX's pings only) and its RSS.

For scale, a "floor" row runs the least a Twisted round trip can cost here: a
bare ``Int32StringReceiver`` echo between the same kind of two processes.

Each side is one process, so on two cores neither waits for the other's CPU.
Besides the rates, the table shows the CPU each process spent per round trip,
which says which side limits the rate.

    python benchmarks/stream_rpc.py            # 5 s per measurement, 10 s idle
    python benchmarks/stream_rpc.py --quick    # 1 s per measurement, 3 s idle
    python benchmarks/stream_rpc.py --profile  # also cProfile both processes
    python benchmarks/stream_rpc.py --cpus 0   # both processes on CPU 0 (no cross-CPU wake-ups)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import psutil
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater, react
from twisted.protocols.basic import Int32StringReceiver

from twisted_vmtools.channels.stream import StreamChannel
from twisted_vmtools.codecs.datamap import VsockPacket
from twisted_vmtools.protocols.rpci import RPCI
from twisted_vmtools.vmx.model import VMX
from twisted_vmtools.vmx.simulator import SimulatorService

TARGET = 5_000  # round trips per second, each way


@dataclass
class Result:
    name: str
    ops: int
    seconds: float
    local_cpu: float  # CPU seconds of this process during the run
    peer_cpu: float  # CPU seconds of the other process during the run
    local_role: str
    peer_role: str

    @property
    def rate(self) -> float:
        return self.ops / self.seconds

    def row(self) -> str:
        per = 1e6 / self.ops if self.ops else 0.0
        return (
            f"{self.name:38} {self.ops:>8} {self.rate:>9.0f} {1e6 / self.rate:>8.1f}"
            f"   {self.local_role} {self.local_cpu * per:>6.1f}   {self.peer_role} {self.peer_cpu * per:>6.1f}"
            f"   {'ok' if self.rate >= TARGET else 'MISS'}"
        )


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def wait_for(reactor: IReactorTime, condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"stream_rpc: timed out waiting for {what}")
        await deferLater(reactor, 0.02, lambda: None)


async def measure(
    name: str,
    duration: float,
    concurrency: int,
    one: Callable[[], Awaitable[object]],
    peer: psutil.Process,
    roles: tuple[str, str],
    profiler: cProfile.Profile | None,
) -> Result:
    """Run ``one`` in ``concurrency`` sequential loops for ``duration`` seconds."""
    me = psutil.Process()
    done = 0
    stop_at = time.perf_counter() + duration

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await one()
            done += 1

    local0, peer0, start = cpu_seconds(me), cpu_seconds(peer), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    await gatherResults([ensureDeferred(loop()) for _ in range(concurrency)])
    if profiler is not None:
        profiler.disable()
    elapsed = time.perf_counter() - start
    return Result(name, done, elapsed, cpu_seconds(me) - local0, cpu_seconds(peer) - peer0, *roles)


ECHO_SERVER = """
import sys
from twisted.internet import reactor
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols.basic import Int32StringReceiver

class Echo(Int32StringReceiver):
    def stringReceived(self, data):
        self.sendString(data)

UNIXServerEndpoint(reactor, sys.argv[1]).listen(Factory.forProtocol(Echo))
reactor.run()
"""


class EchoClient(Int32StringReceiver):
    """One request in flight at a time, answered in order: the floor under RPCI."""

    def __init__(self) -> None:
        self._waiting: list[Deferred[bytes]] = []

    def call(self, data: bytes) -> Deferred[bytes]:
        waiting: Deferred[bytes] = Deferred()
        self._waiting.append(waiting)
        self.sendString(data)
        return waiting

    def stringReceived(self, data: bytes) -> None:
        self._waiting.pop(0).callback(data)


async def floor_part(reactor: IReactorTime, args: argparse.Namespace, directory: str) -> list[Result]:
    socket = os.path.join(directory, "echo.sock")
    server = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, socket])
    try:
        await wait_for(reactor, lambda: os.path.exists(socket), "the echo server to listen")
        client = await connectProtocol(UNIXClientEndpoint(reactor, socket), EchoClient())
        request = VsockPacket.data(b"info-get guestinfo.x").encode()[4:]  # the same bytes on the wire

        def one() -> Deferred[bytes]:
            return client.call(request)

        result = await measure("floor: bare Twisted echo, sequential", args.duration, 1, one,
                               psutil.Process(server.pid), ("here ", "echo "), None)
        client.transport.loseConnection()
        return [result]
    finally:
        stop(server)


def python_command(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def vmx_command(socket: str, profile: str | None) -> list[str]:
    # A long ping interval: the TCLO side is not what part (a) measures.
    argv = ["serve", "--socket", socket, "--ping-interval", "3600"]
    if profile is None:
        return python_command(f"from twisted_vmtools.vmx.cli import main; main({argv!r})")
    # cProfile.run writes its file even when the program ends in SystemExit (SIGTERM → reactor stop).
    statement = f"main({argv!r})"
    return python_command(
        f"import cProfile; from twisted_vmtools.vmx.cli import main; cProfile.run({statement!r}, {profile!r})"
    )


def guest_command(socket: str, log: str, profile: str | None) -> list[str]:
    twistd = shutil.which("twistd") or "twistd"
    argv = [twistd, "-n", "--pidfile=", f"--logfile={log}"]
    if profile is not None:
        argv += [f"--profile={profile}", "--profiler=cprofile", "--savestats"]
    return argv + ["vmtools", "--transport", f"unix:{socket}"]


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def rpci_part(reactor: IReactorTime, args: argparse.Namespace, directory: str,
                    profiles: dict[str, str], profiler: cProfile.Profile | None) -> list[Result]:
    socket = os.path.join(directory, "vmx-a.sock")
    profile = os.path.join(directory, "vmx-a.prof") if args.profile else None
    with open(os.path.join(directory, "vmx-a.log"), "wb") as log:
        server = subprocess.Popen(vmx_command(socket, profile), stdout=log, stderr=subprocess.STDOUT)
    try:
        await wait_for(reactor, lambda: os.path.exists(socket), "vmtools-sim to listen")
        channel = StreamChannel(reactor, f"unix:{socket}")
        rpci = RPCI(channel)
        await rpci.call(b"info-set guestinfo.x benchmark")
        assert await rpci.call(b"info-get guestinfo.x") == b"benchmark"
        peer = psutil.Process(server.pid)

        def one() -> Deferred[bytes]:
            return rpci.call(b"info-get guestinfo.x")

        roles = ("guest", "vmx")
        results = [
            await measure("RPCI info-get, sequential", args.duration, 1, one, peer, roles, profiler),
            await measure(f"RPCI info-get, {args.concurrency} concurrent", args.duration, args.concurrency, one,
                          peer, roles, profiler),
        ]
        await channel.stop()
        return results
    finally:
        stop(server)
        if profile is not None:
            profiles["VMX subprocess (vmtools-sim serve), RPCI part"] = profile


async def tclo_part(reactor: IReactorTime, args: argparse.Namespace, directory: str,
                    profiles: dict[str, str], profiler: cProfile.Profile | None) -> tuple[list[Result], list[str]]:
    socket = os.path.join(directory, "vmx-b.sock")
    vmx = VMX(reactor)  # the default 5 s ping interval, as a guest idles against it
    simulator = SimulatorService(reactor, socket, vmx=vmx)
    simulator.startService()
    profile = os.path.join(directory, "guest-b.prof") if args.profile else None
    guest = subprocess.Popen(guest_command(socket, os.path.join(directory, "guest-b.log"), profile),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_for(reactor, lambda: vmx.running, "the guest tools to answer reset and ping", timeout=30)
        peer = psutil.Process(guest.pid)
        roles = ("vmx  ", "guest")

        def one() -> Deferred[bytes]:
            return vmx.send(b"ping")

        assert await one() == b"OK "
        # The VMX serialises TCLO, so "queued" keeps its queue non-empty rather than adding parallelism.
        results = [
            await measure("TCLO ping, sequential", args.duration, 1, one, peer, roles, profiler),
            await measure(f"TCLO ping, {args.concurrency} queued", args.duration, args.concurrency, one, peer,
                          roles, profiler),
        ]
        # Let the burst's garbage settle before watching the guest do nothing.
        await deferLater(reactor, 1.0, lambda: None)
        peer.cpu_percent(None)
        await deferLater(reactor, args.idle, lambda: None)
        idle_percent = peer.cpu_percent(None)
        memory = peer.memory_info()
        lines = [
            f"{'guest idle CPU over ' + format(args.idle, 'g') + ' s':38} {idle_percent:>8.2f} %",
            f"{'guest RSS':38} {memory.rss / 2**20:>8.1f} MiB",
            f"{'guest tools running (VMX view)':38} {vmx.running!s:>8}",
        ]
        return results, lines
    finally:
        stop(guest)
        await simulator.stopService()
        if profile is not None:
            profiles["guest subprocess (twistd vmtools), TCLO part"] = profile


def top(path_or_profile: str | cProfile.Profile, limit: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(path_or_profile, stream=out)  # type: ignore[arg-type]
    stats.strip_dirs().sort_stats("tottime").print_stats(limit)
    return out.getvalue()


async def main(reactor: IReactorTime, args: argparse.Namespace) -> None:
    profiler = cProfile.Profile() if args.profile else None
    profiles: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="stream-rpc-") as directory:
        floor_results = await floor_part(reactor, args, directory)
        rpci_results = await rpci_part(reactor, args, directory, profiles, profiler)
        tclo_results, idle_lines = await tclo_part(reactor, args, directory, profiles, profiler)
        cpus = sorted(os.sched_getaffinity(0))
        print(f"\nstream transport, Unix socket, {psutil.cpu_count()} CPUs (running on {cpus}), "
              f"Python {sys.version.split()[0]}, {args.duration:g} s per measurement (target {TARGET}/s each way)\n")
        print(f"{'measurement':38} {'ops':>8} {'ops/s':>9} {'µs/op':>8}   CPU µs per op (this / other process)")
        for result in floor_results + rpci_results + tclo_results:
            print(result.row())
        print()
        for line in idle_lines:
            print(line)
        if profiler is not None:
            print("\n==== benchmark process (guest side in RPCI, VMX side in TCLO), by own time\n")
            print(top(profiler, args.profile_lines))
            for name, path in profiles.items():
                if os.path.exists(path):
                    print(f"\n==== {name}, by own time\n")
                    print(top(path, args.profile_lines))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 s per measurement, 3 s idle")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per rate measurement")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle guest to measure")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight for the concurrent runs")
    parser.add_argument("--profile", action="store_true", help="cProfile both processes and print the top")
    parser.add_argument("--profile-lines", type=int, default=25)
    parser.add_argument("--cpus", type=lambda text: {int(c) for c in text.split(",")},
                        help="pin this process and its subprocesses to these CPUs, e.g. 0 or 0,1")
    args = parser.parse_args(argv)
    if args.cpus:
        # Set before any subprocess starts: they inherit the affinity.
        os.sched_setaffinity(0, args.cpus)
    if args.quick:
        args.duration, args.idle = 1.0, 3.0
    return args


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    react(lambda reactor: ensureDeferred(main(reactor, arguments)))
