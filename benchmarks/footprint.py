"""The footprint of one guest-tools process: ours beside vmtoolsd, in one run, under the trap engine.

Each guest runs trapped against an in-process simulated VMX (as ``vmtools-sim
serve --trap -- …`` runs it): Debian's ``vmtoolsd -n vmsvc`` and ours, ``twistd
-n vmtools --transport backdoor``, both with their default settings.  Each
round starts every guest twice, once unpinned and once with guest, tracer
and VMX on one CPU (the trap engine's default), and takes:

- start: exec → the VMX seeing ``OK ATR toolbox`` (the answer to ``reset``);
- idle: the guest's CPU (user + system of the process polling TCLO, trapped
  instructions included) over ``--idle`` seconds with no command, the polls
  the VMX saw meanwhile, and the CPU per poll;
- resident memory after the idle spell, beside a bare Twisted reactor
  process (``python -c 'from twisted.internet import reactor; reactor.run()'``);
- CPU per TCLO ``ping`` over ``--pings`` sequential pings, unpinned and pinned.

No other command is sent (never a power command).  Medians of ``--rounds``
(3) rounds; the table is Markdown, for the README.

    python benchmarks/footprint.py                   # 3 rounds, 30 s idle, 500 pings
    python benchmarks/footprint.py --quick           # 1 round, 5 s idle, 200 pings
    python benchmarks/footprint.py --profile g.prof  # ours only, once, under cProfile; prints the top
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater, react

from twisted_vmtools.codecs.tclo import OK_PREFIX, PING, RESET_REPLY_PREFIX
from twisted_vmtools.vmx.model import VMX, RPCRecord
from twisted_vmtools.vmx.trapped import process_cpu_seconds, spawn_guest, tclo_owner, twistd_vmtools, until_running

VMTOOLSD = ["vmtoolsd", "-n", "vmsvc"]
BARE_REACTOR = [sys.executable, "-c", "from twisted.internet import reactor; reactor.run()"]
RESET_ANSWER = OK_PREFIX + RESET_REPLY_PREFIX
SETTLE = 3.0  # after the start sequence: vmtoolsd retries vsock and runs lsb_release meanwhile


@dataclass
class Samples:
    """One guest's readings, one entry per round."""

    start: list[float] = field(default_factory=list)  # s
    idle_cpu: list[float] = field(default_factory=list)  # CPU s per wall s
    polls: list[float] = field(default_factory=list)  # per s, idle
    poll_cpu: list[float] = field(default_factory=list)  # CPU s per idle poll
    rss: list[int] = field(default_factory=list)  # bytes, after the idle spell
    ping_cpu: list[float] = field(default_factory=list)  # CPU s per ping, unpinned
    ping_cpu_pinned: list[float] = field(default_factory=list)
    ping_traps: list[float] = field(default_factory=list)


def sleep(reactor: Any, seconds: float) -> Any:
    return deferLater(reactor, seconds, lambda: None)


class Pinning:
    """Where the guest, its tracer and this process's reactor thread run for one spawn."""

    def __init__(self, pinned: bool) -> None:
        self.pinned = pinned
        self._saved = os.sched_getaffinity(0)
        self.cpu: int | bool = min(self._saved) if pinned else False

    def __enter__(self) -> int | bool:
        if self.pinned:
            os.sched_setaffinity(0, {int(self.cpu)})  # this (the reactor) thread only
        return self.cpu

    def __exit__(self, *exc: object) -> None:
        os.sched_setaffinity(0, self._saved)


async def measure_guest(
    reactor: Any, argv: list[str], samples: Samples, *, pinned: bool, idle: float, pings: int
) -> None:
    vmx = VMX(reactor, ping_interval=3600)  # no pings but ours
    answered: list[float] = []

    def seen(record: RPCRecord) -> None:
        if record.direction == "tclo-in" and record.data.startswith(RESET_ANSWER):
            answered.append(time.perf_counter())

    vmx.observe(seen)
    devnull = os.open(os.devnull, os.O_WRONLY)
    with Pinning(pinned) as cpu:
        started = time.perf_counter()
        program = spawn_guest(reactor, vmx, argv, pin_cpu=cpu, stdout=devnull, stderr=devnull)
        try:
            await until_running(reactor, vmx, timeout=60)
            await sleep(reactor, SETTLE)
            daemon = psutil.Process(tclo_owner(program))
            if not pinned:
                samples.start.append(answered[0] - started)
                await measure_idle(reactor, vmx, daemon, samples, idle)
            per_ping, traps = await measure_pings(vmx, program, daemon, pings)
            (samples.ping_cpu_pinned if pinned else samples.ping_cpu).append(per_ping)
            if not pinned:
                samples.ping_traps.append(traps)
        finally:
            program.terminate()
            await program.ended
            os.close(devnull)


async def measure_idle(reactor: Any, vmx: VMX, daemon: psutil.Process, samples: Samples, seconds: float) -> None:
    # Every poll (an empty message before the RECVSIZE) tells the VMX the guest is alive.
    polls = [0]
    alive = vmx.guest_alive

    def counted() -> None:
        polls[0] += 1
        alive()

    vmx.guest_alive = counted  # type: ignore[method-assign]
    before, wall = process_cpu_seconds(daemon.pid), time.perf_counter()
    await sleep(reactor, seconds)
    used, wall = process_cpu_seconds(daemon.pid) - before, time.perf_counter() - wall
    vmx.guest_alive = alive  # type: ignore[method-assign]
    samples.idle_cpu.append(used / wall)
    samples.polls.append(polls[0] / wall)
    samples.poll_cpu.append(used / max(polls[0], 1))
    samples.rss.append(daemon.memory_info().rss)


async def measure_pings(vmx: VMX, program: Any, daemon: psutil.Process, count: int) -> tuple[float, float]:
    counts: dict[str, int] = program.engine.host.host.counts
    traps, cpu = sum(counts.values()), process_cpu_seconds(daemon.pid)
    for _ in range(count):
        reply = await vmx.send(PING)
        if not reply.startswith(OK_PREFIX):
            raise RuntimeError(f"the guest answered ping with {reply!r}")
    return (process_cpu_seconds(daemon.pid) - cpu) / count, (sum(counts.values()) - traps) / count


async def bare_reactor_rss(reactor: Any) -> int:
    process = subprocess.Popen(BARE_REACTOR)
    try:
        await sleep(reactor, 2.0)  # imported and in its loop well before this
        return int(psutil.Process(process.pid).memory_info().rss)
    finally:
        process.terminate()
        process.wait()


def table(vmtoolsd: Samples, ours: Samples, bare: list[int]) -> str:
    median = statistics.median

    def row(what: str, pick: Callable[[Samples], str], ratio: Callable[[Samples], float]) -> str:
        return f"| {what} | {pick(vmtoolsd)} | {pick(ours)} | {ratio(ours) / ratio(vmtoolsd):.2f}× |"

    def ping(s: Samples) -> str:
        return f"{median(s.ping_cpu) * 1e6:.0f} µs ({median(s.ping_cpu_pinned) * 1e6:.0f} pinned)"

    return "\n".join([
        "| | vmtoolsd | ours (`--transport backdoor`) | ratio |",
        "|---|---|---|---|",
        row(f"guest CPU per TCLO `ping` ({median(ours.ping_traps):.0f} trapped instructions each)", ping,
            lambda s: median(s.ping_cpu)),
        row("guest CPU per idle poll", lambda s: f"{median(s.poll_cpu) * 1e6:.0f} µs", lambda s: median(s.poll_cpu)),
        row("idle guest CPU (polls per second)",
            lambda s: f"{median(s.idle_cpu) * 100:.3f} % ({median(s.polls):.1f})", lambda s: median(s.idle_cpu)),
        row("resident memory, idle", lambda s: f"{median(s.rss) / 1e6:.1f} MB", lambda s: median(s.rss)),
        row("start (exec → `OK ATR toolbox`)", lambda s: f"{median(s.start) * 1000:.0f} ms",
            lambda s: median(s.start)),
        "",
        f"A bare Twisted reactor process beside them: {median(bare) / 1e6:.1f} MB resident "
        f"(ours: {median(ours.rss) / median(bare):.2f}× it).",
    ])


def print_round(name: str, s: Samples) -> None:
    print(f"  {name:9} start {s.start[-1] * 1000:5.0f} ms  idle {s.idle_cpu[-1] * 100:.3f} % "
          f"({s.polls[-1]:.1f} polls/s, {s.poll_cpu[-1] * 1e6:.0f} µs each)  RSS {s.rss[-1] / 1e6:.1f} MB  "
          f"ping {s.ping_cpu[-1] * 1e6:.0f} µs ({s.ping_cpu_pinned[-1] * 1e6:.0f} pinned, "
          f"{s.ping_traps[-1]:.1f} traps)", flush=True)


async def profile(reactor: Any, args: argparse.Namespace) -> None:
    argv = twistd_vmtools("--transport", "backdoor",
                          twistd_options=[f"--profile={args.profile}", "--profiler=cprofile", "--savestats"])
    await measure_guest(reactor, argv, Samples(), pinned=False, idle=args.idle, pings=args.pings)
    stats = pstats.Stats(args.profile)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(40)


async def main(reactor: Any, args: argparse.Namespace) -> None:
    if args.profile:
        return await profile(reactor, args)
    if not shutil.which("vmtoolsd"):
        raise SystemExit("footprint: vmtoolsd is not installed (apt-get install open-vm-tools)")
    guests = {"vmtoolsd": (VMTOOLSD, Samples()), "ours": (twistd_vmtools("--transport", "backdoor"), Samples())}
    bare: list[int] = []
    for number in range(1, args.rounds + 1):
        print(f"round {number} of {args.rounds}", flush=True)
        for name, (argv, samples) in guests.items():
            for pinned in (False, True):
                await measure_guest(reactor, argv, samples, pinned=pinned, idle=args.idle, pings=args.pings)
            print_round(name, samples)
        bare.append(await bare_reactor_rss(reactor))
    print()
    print(table(guests["vmtoolsd"][1], guests["ours"][1], bare))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle guest per round")
    parser.add_argument("--pings", type=int, default=500, help="sequential pings per measurement")
    parser.add_argument("--quick", action="store_true", help="1 round, 5 s idle, 200 pings")
    parser.add_argument("--profile", metavar="PATH", help="profile ours once (cProfile stats to PATH) instead")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.rounds, arguments.idle, arguments.pings = 1, 5.0, 200
    react(lambda reactor: ensureDeferred(main(reactor, arguments)))
