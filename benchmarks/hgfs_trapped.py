"""HGFS reads under the trap engine: vmtoolsd's HGFS server beside ours, the same file, the same packets.

Each guest runs under the trap engine as a guest of its own VMX in this process
(vmtoolsd ``-n vmsvc``; ours ``twistd vmtools --transport backdoor``), so every
``f`` command and its reply cross the real backdoor (high-bandwidth transfers).
`HGFSClient` opens a session and reads a ``--size`` MiB file with ``--packet``
bytes per ReadV3 (the backdoor carries at most 64 KiB per message, so the
default is the legacy large packet's 61,440 bytes of data).  Reported: MB/s
and the guest daemon's CPU ms per MiB (user + system of the process polling TCLO,
its trapped instructions included; the tracer is this process).

    python benchmarks/hgfs_trapped.py            # 64 MiB
    python benchmarks/hgfs_trapped.py --size 16
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater, react

from twisted_vmtools.codecs import hgfs
from twisted_vmtools.vmx.conformance import VMTOOLSD_CONF
from twisted_vmtools.vmx.hgfs_client import HGFSClient, tclo_sender
from twisted_vmtools.vmx.model import VMX
from twisted_vmtools.vmx.trapped import process_cpu_seconds, spawn_guest, tclo_owner, twistd_vmtools, until_running

MiB = 1 << 20


async def measure(
    reactor: Any, argv: list[str], path: str, size: int, packet: int
) -> tuple[float, float, float]:
    vmx = VMX(reactor, ping_interval=3600)
    devnull = os.open(os.devnull, os.O_WRONLY)
    program = spawn_guest(reactor, vmx, argv, stdout=devnull, stderr=devnull)
    try:
        await until_running(reactor, vmx)
        await deferLater(reactor, 2.0, lambda: None)  # let start-up traffic finish
        client = HGFSClient(tclo_sender(lambda command: vmx.send(command, timeout=60)),
                            max_packet=packet + hgfs.V4_HEADER_SIZE + 25)
        await client.start()
        received = [0]

        def count(data: bytes) -> None:
            received[0] += len(data)

        daemon = tclo_owner(program)
        counts: dict[str, int] = program.engine.host.host.counts
        traps = sum(counts.values())
        cpu = process_cpu_seconds(daemon)
        started = time.perf_counter()
        await client.download(path, count)
        elapsed = time.perf_counter() - started
        used = process_cpu_seconds(daemon) - cpu
        traps = sum(counts.values()) - traps
        await client.stop()
        if received[0] != size:
            raise RuntimeError(f"{argv[0]}: read {received[0]} bytes of {size}")
        packets = -(-size // packet)
        return size / elapsed / MiB, used * 1000 / (size / MiB), traps / packets
    finally:
        program.terminate()
        await program.ended
        os.close(devnull)


async def main(reactor: Any, args: argparse.Namespace) -> None:
    size = args.size * MiB
    with tempfile.TemporaryDirectory(prefix="hgfs-trapped-") as work:
        path = os.path.join(work, "file.bin")
        with open(path, "wb") as f:
            for _ in range(args.size):
                f.write(os.urandom(MiB))
        conf = os.path.join(work, "tools.conf")
        with open(conf, "w") as f:
            f.write(VMTOOLSD_CONF)
        ours = twistd_vmtools("--transport", "backdoor", "--guestinfo-interval", "0",
                              twistd_options=os.environ.get("HGFS_BENCH_TWISTD", "").split())
        guests = [("twistd vmtools", ours)]
        if shutil.which("vmtoolsd"):
            guests.insert(0, ("vmtoolsd", ["vmtoolsd", "-n", "vmsvc", "-c", conf]))
        print(f"{args.size} MiB read, {args.packet:,}-byte ReadV3 packets, backdoor under the trap engine\n")
        print("| guest | MB/s | guest CPU ms/MiB | trapped instructions per packet |")
        print("|---|---|---|---|")
        for name, argv in guests:
            rate, cpu, traps = await measure(reactor, argv, path, size, args.packet)
            print(f"| {name} | {rate:,.1f} | {cpu:.2f} | {traps:.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="MiB to read")
    parser.add_argument("--packet", type=int, default=61440, help="data bytes per ReadV3")
    arguments = parser.parse_args()
    react(lambda reactor: ensureDeferred(main(reactor, arguments)))
