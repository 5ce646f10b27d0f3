"""HGFS file transfers over the stream transport, beside the raw socket ceiling.

This process is the VMX (``SimulatorService`` on a Unix socket in a temporary
directory) and drives `HGFSClient` through ``vmx.send`` (TCLO ``f`` commands);
the guest is ``twistd -n vmtools --transport unix:PATH`` in a subprocess.  A file
of ``--size`` MiB is uploaded into the guest's temporary directory, then
downloaded (and discarded), with ``--packet`` bytes of data per HGFS packet.

The ceiling is the same exchange without HGFS, TCLO or Twisted on the far side:
a child process on a Unix socket pair that answers each length-prefixed message
with a 4-byte ack (upload shape) or answers each 4-byte request with a message
of the packet size (download shape).

The guest's RSS is sampled every 50 ms during the transfers; the table shows its
growth over the RSS before the first transfer.

    python benchmarks/hgfs_transfer.py                 # 256 MiB, 520,192-byte packets
    python benchmarks/hgfs_transfer.py --size 64 --packet 61440
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

import psutil
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import LoopingCall, deferLater, react

from twisted_vmtools.codecs import hgfs
from twisted_vmtools.vmx.hgfs_client import HGFSClient, tclo_sender
from twisted_vmtools.vmx.model import VMX
from twisted_vmtools.vmx.simulator import SimulatorService

MiB = 1 << 20
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "--logfile=-",
          *os.environ.get("HGFS_BENCH_TWISTD", "").split()]


def ceiling(total: int, packet: int) -> tuple[float, float]:
    """MB/s of request/response exchanges moving ``total`` bytes in ``packet``-sized messages, both ways."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # the far end: ack uploads, answer downloads
        parent.close()
        _echo(child, packet)
        os._exit(0)
    child.close()
    data = os.urandom(packet)
    count = total // packet
    start = time.perf_counter()
    for _ in range(count):
        parent.sendall(struct.pack("<I", packet) + data)
        _recv(parent, 4)
    upload = total / (time.perf_counter() - start) / MiB
    start = time.perf_counter()
    for _ in range(count):
        parent.sendall(struct.pack("<I", 0))
        _recv(parent, packet)
    download = total / (time.perf_counter() - start) / MiB
    parent.close()
    os.waitpid(pid, 0)
    return upload, download


def _echo(sock: socket.socket, packet: int) -> None:
    data = os.urandom(packet)
    while True:
        head = _recv(sock, 4)
        if not head:
            return
        (size,) = struct.unpack("<I", head)
        if size:
            _recv(sock, size)
            sock.sendall(b"ack!")
        else:
            sock.sendall(data)


def _recv(sock: socket.socket, size: int) -> bytes:
    parts = []
    while size:
        part = sock.recv(min(size, 1 << 20))
        if not part:
            return b""
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def make_file(path: str, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))


async def hgfs_run(reactor: Any, workdir: str, source: str, size: int, packet: int) -> dict[str, float]:
    where = os.path.join(workdir, "vmx.sock")
    vmx = VMX(reactor, ping_interval=60)
    simulator = SimulatorService(reactor, where, vmx=vmx)
    simulator.startService()
    guest = subprocess.Popen(
        [*TWISTD, "vmtools", "--transport", f"unix:{where}", "--guestinfo-interval", "0",
         "--transfer-state", os.path.join(workdir, "state")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        while not vmx.running:
            await deferLater(reactor, 0.1, lambda: None)
        await deferLater(reactor, 1.0, lambda: None)
        process = psutil.Process(guest.pid)
        base_rss = process.memory_info().rss
        peak = [base_rss]
        sampler = LoopingCall(lambda: peak.append(process.memory_info().rss))
        sampler.clock = reactor
        sampler.start(0.05)
        client = HGFSClient(tclo_sender(lambda command: vmx.send(command, timeout=60)),
                            max_packet=packet + hgfs.V4_HEADER_SIZE + 25)
        await client.start()
        target = os.path.join(workdir, "in-guest.bin")
        cpu0 = sum(process.cpu_times()[:2])
        with open(source, "rb") as f:
            start = time.perf_counter()
            await client.upload(target, f.read, overwrite=True, permissions=None)
            upload = size / (time.perf_counter() - start) / MiB
        cpu1 = sum(process.cpu_times()[:2])
        received = [0]

        def discard(data: bytes) -> None:
            received[0] += len(data)

        start = time.perf_counter()
        await client.download(target, discard)
        download = size / (time.perf_counter() - start) / MiB
        cpu2 = sum(process.cpu_times()[:2])
        assert received[0] == size, received[0]
        await client.stop()
        sampler.stop()
        return {
            "upload": upload, "download": download, "rss_growth": (max(peak) - base_rss) / MiB,
            "base_rss": base_rss / MiB, "upload_cpu": (cpu1 - cpu0) * 1000 / (size / MiB),
            "download_cpu": (cpu2 - cpu1) * 1000 / (size / MiB),
        }
    finally:
        guest.terminate()
        guest.wait()
        await simulator.stopService()


async def main(reactor: Any, args: argparse.Namespace) -> None:
    size = args.size * MiB
    with tempfile.TemporaryDirectory(prefix="hgfs-bench-") as workdir:
        source = os.path.join(workdir, "source.bin")
        make_file(source, size)
        raw_up, raw_down = ceiling(size, args.packet)
        figures = await hgfs_run(reactor, workdir, source, size, args.packet)
    print(f"{args.size} MiB, {args.packet:,}-byte packets, Unix socket, two processes\n")
    print("| | upload MB/s | download MB/s |")
    print("|---|---|---|")
    print(f"| ceiling: raw socket, same packets, request/response | {raw_up:,.0f} | {raw_down:,.0f} |")
    print(f"| HGFS over TCLO (stream transport) | {figures['upload']:,.0f} ({figures['upload'] / raw_up:.0%}) "
          f"| {figures['download']:,.0f} ({figures['download'] / raw_down:.0%}) |")
    print(f"| guest CPU ms per MiB | {figures['upload_cpu']:.1f} | {figures['download_cpu']:.1f} |")
    print(f"\nguest RSS {figures['base_rss']:.1f} MiB before, peak growth {figures['rss_growth']:.1f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="MiB to move each way")
    parser.add_argument("--packet", type=int, default=hgfs.LARGE_IO_MAX, help="data bytes per HGFS packet")
    arguments = parser.parse_args()
    react(lambda reactor: ensureDeferred(main(reactor, arguments)))
