"""HGFS file transfers over the stream transport, beside the raw socket ceiling.

This process is the VMX (``SimulatorService`` on a Unix socket in a temporary
directory) and drives `HGFSClient` through ``vmx.send`` (TCLO ``f`` commands);
the guest is ``twistd -n vmtools --transport unix:PATH`` in a subprocess.  A file
of ``--size`` MiB is uploaded into the guest's temporary directory, then
downloaded (and discarded), with ``--packet`` bytes of data per HGFS packet.

The ceiling is the same exchange on the same kind of socket without HGFS, TCLO,
files or Twisted: a child process on a Unix socket pair with the stream
transport's kernel buffers, exchanging messages of exactly the sizes a WriteV3
command and its reply (upload) or a ReadV3 command and its reply (download)
have on the wire, from prebuilt buffers into preallocated ones: one exchange at
a time, and again with as many requests in flight as the guest takes on the
stream transport (a thread receives the replies).  The transfer's percentage is
of the higher of the two.

CPU time and minor page faults per MiB are counted for both processes (with
several commands in flight the two work at once, so their CPU no longer adds up
to the wall time).  The guest's RSS is sampled every 50 ms during the transfers; the
table shows its growth over the RSS before the first transfer.

    python benchmarks/hgfs_transfer.py                 # 256 MiB, 520,192-byte packets, best of 3
    python benchmarks/hgfs_transfer.py --size 64 --packet 61440
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import psutil
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import LoopingCall, deferLater, react

from twisted_vmtools.channels.stream_protocols import STREAM_IN_FLIGHT
from twisted_vmtools.codecs import hgfs
from twisted_vmtools.codecs.datamap import VsockPacket
from twisted_vmtools.codecs.vix import Credentials
from twisted_vmtools.framing import widen_socket
from twisted_vmtools.heap import keep_packets_in_heap
from twisted_vmtools.vmx.guest_operations import GuestOperations
from twisted_vmtools.vmx.hgfs_client import HGFSClient, tclo_sender
from twisted_vmtools.vmx.model import VMX
from twisted_vmtools.vmx.simulator import SimulatorService

MiB = 1 << 20
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "--logfile=-",
          *os.environ.get("HGFS_BENCH_TWISTD", "").split()]


def wire_sizes(packet: int) -> tuple[int, int, int, int]:
    """Bytes on the socket for one transfer step: (WriteV3 command, its reply, ReadV3 command, its reply).

    Each is the whole stream packet (length, DataMap, ``f ``/``OK ``, V4 header, op fields, data), so
    the ceiling moves exactly what the HGFS transfer moves.
    """
    header = hgfs.Header(hgfs.Op.WRITE_V3, 1, 1)

    def framed(payload: bytes) -> int:
        return len(VsockPacket.data(payload).encode())

    write = framed(b"f " + hgfs.encode_request(header, hgfs.WriteRequest(1, 0, bytes(packet))))
    written = framed(b"OK " + hgfs.encode_reply(header, hgfs.Status.SUCCESS, hgfs.WriteReply(packet)))
    read_header = hgfs.Header(hgfs.Op.READ_V3, 1, 1)
    read = framed(b"f " + hgfs.encode_request(read_header, hgfs.ReadRequest(1, 0, packet)))
    answer = framed(b"OK " + hgfs.encode_reply(read_header, hgfs.Status.SUCCESS, hgfs.ReadReply(bytes(packet))))
    return write, written, read, answer


def ceiling(total: int, packet: int, window: int = 1) -> tuple[float, float]:
    """MB/s of the same request/response exchanges on a raw Unix stream socket, both ways.

    The same socket type with the same kernel buffers as the stream transport, the same bytes
    per request and per reply; each side only sends prebuilt messages and receives into a
    preallocated buffer, so what it measures is the socket itself.  With ``window`` 1 one
    exchange at a time; with more, up to ``window`` requests are sent before their replies
    come back (a thread receives them), as TCLO carries them when the guest takes several.
    """
    sizes = wire_sizes(packet)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    widen_socket(parent)
    widen_socket(child)
    pid = os.fork()
    if pid == 0:  # the far end: the guest's side of each exchange
        parent.close()
        _answer(child, total // packet, sizes)
        os._exit(0)
    child.close()
    count = total // packet
    rates = []
    for request, reply in ((sizes[0], sizes[1]), (sizes[2], sizes[3])):
        message, buffer = os.urandom(request), memoryview(bytearray(reply))
        start = time.perf_counter()
        if window == 1:
            for _ in range(count):
                parent.sendall(message)
                _recv_into(parent, buffer)
        else:
            _streamed(parent, message, buffer, count, window)
        rates.append(total / (time.perf_counter() - start) / MiB)
    parent.close()
    os.waitpid(pid, 0)
    return rates[0], rates[1]


def _streamed(sock: socket.socket, message: bytes, buffer: memoryview, count: int, window: int) -> None:
    room = threading.Semaphore(window)

    def receive() -> None:
        for _ in range(count):
            _recv_into(sock, buffer)
            room.release()

    receiver = threading.Thread(target=receive)
    receiver.start()
    for _ in range(count):
        room.acquire()
        sock.sendall(message)
    receiver.join()


def _answer(sock: socket.socket, count: int, sizes: tuple[int, int, int, int]) -> None:
    for request, reply in ((sizes[0], sizes[1]), (sizes[2], sizes[3])):
        buffer, message = memoryview(bytearray(request)), os.urandom(reply)
        for _ in range(count):
            _recv_into(sock, buffer)
            sock.sendall(message)


def _recv_into(sock: socket.socket, buffer: memoryview) -> None:
    got = 0
    while got < len(buffer):
        got += sock.recv_into(buffer[got:])


def usage(process: psutil.Process) -> tuple[float, int, float, int]:
    """(guest CPU s, guest minor page faults, VMX CPU s, VMX minor page faults) so far."""
    with open(f"/proc/{process.pid}/stat") as f:
        guest_faults = int(f.read().rsplit(")", 1)[1].split()[7])
    own = resource.getrusage(resource.RUSAGE_SELF)
    return sum(process.cpu_times()[:2]), guest_faults, own.ru_utime + own.ru_stime, own.ru_minflt


def per_mib(before: tuple[float, int, float, int], after: tuple[float, int, float, int], mib: float) -> list[float]:
    """CPU ms and page faults per MiB moved, guest then VMX."""
    return [(after[i] - before[i]) * (1000 if i % 2 == 0 else 1) / mib for i in range(4)]


def make_file(path: str, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))


def file_io(workdir: str, source: str, size: int, packet: int) -> tuple[float, float]:
    """MB/s of the guest's own file work alone: pwrite of a new file, then pread, in the same packets."""
    target = os.path.join(workdir, "file-io.bin")
    data = open(source, "rb").read(packet)  # noqa: SIM115 - one packet of the same random file
    offsets = range(0, size - packet + 1, packet)
    fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        start = time.perf_counter()
        for offset in offsets:
            os.pwrite(fd, data, offset)
        written = time.perf_counter() - start
        start = time.perf_counter()
        for offset in offsets:
            os.pread(fd, packet, offset)
        rates = [size / written / MiB, size / (time.perf_counter() - start) / MiB]
    finally:
        os.close(fd)
        os.unlink(target)
    return rates[0], rates[1]


async def hgfs_run(reactor: Any, workdir: str, source: str, size: int, packet: int, repeat: int,
                   vix: bool = False) -> dict[str, Any]:
    where = os.path.join(workdir, "vmx.sock")
    vmx = VMX(reactor, ping_interval=60)
    simulator = SimulatorService(reactor, where, vmx=vmx)
    simulator.startService()
    guest = subprocess.Popen(
        [*TWISTD, "vmtools", "--transport", f"unix:{where}", "--guestinfo-interval", "0",
         "--transfer-state", os.path.join(workdir, "state"), *(["--auth", "none"] if vix else [])],
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
        send = lambda command: vmx.send(command, timeout=60)  # noqa: E731
        # --vix: as a transfer of guest operations moves, each packet a Vix HGFS_SEND_PACKET with a login.
        sender = GuestOperations(send).hgfs_sender(Credentials("bench", "bench")) if vix else tclo_sender(send)
        client = HGFSClient(sender, max_packet=packet + hgfs.V4_HEADER_SIZE + 25)
        await client.start()
        runs = [await _transfers(client, process, workdir, source, size) for _ in range(repeat)]
        await client.stop()
        sampler.stop()
        return {
            "upload": max(run[0] for run in runs), "download": max(run[1] for run in runs),
            "up": [statistics.median(run[2][i] for run in runs) for i in range(4)],
            "down": [statistics.median(run[3][i] for run in runs) for i in range(4)],
            "rss_growth": (max(peak) - base_rss) / MiB, "base_rss": base_rss / MiB,
        }
    finally:
        guest.terminate()
        guest.wait()
        await simulator.stopService()


async def _transfers(
    client: HGFSClient, process: psutil.Process, workdir: str, source: str, size: int
) -> tuple[float, float, list[float], list[float]]:
    """One upload and one download: MB/s each way, and CPU/faults per MiB each way."""
    target = os.path.join(workdir, "in-guest.bin")
    use0 = usage(process)
    with open(source, "rb") as f:
        start = time.perf_counter()
        await client.upload(target, f.read, overwrite=True, permissions=None)
        upload = size / (time.perf_counter() - start) / MiB
    use1 = usage(process)
    received = [0]

    def discard(data: bytes) -> None:
        received[0] += len(data)

    start = time.perf_counter()
    await client.download(target, discard)
    download = size / (time.perf_counter() - start) / MiB
    use2 = usage(process)
    assert received[0] == size, received[0]
    return upload, download, per_mib(use0, use1, size / MiB), per_mib(use1, use2, size / MiB)


async def main(reactor: Any, args: argparse.Namespace) -> None:
    keep_packets_in_heap()  # as vmtools-sim does: this process is the VMX
    size = args.size * MiB
    with tempfile.TemporaryDirectory(prefix="hgfs-bench-") as workdir:
        source = os.path.join(workdir, "source.bin")
        make_file(source, size)
        raw = [ceiling(size, args.packet) for _ in range(args.repeat)]
        raw_up, raw_down = max(r[0] for r in raw), max(r[1] for r in raw)
        streamed = [ceiling(size, args.packet, STREAM_IN_FLIGHT) for _ in range(args.repeat)]
        stream_up, stream_down = max(r[0] for r in streamed), max(r[1] for r in streamed)
        disk = [file_io(workdir, source, size, args.packet) for _ in range(args.repeat)]
        figures = await hgfs_run(reactor, workdir, source, size, args.packet, args.repeat, args.vix)
    print(f"{args.size} MiB, {args.packet:,}-byte packets, Unix socket, two processes, best of {args.repeat}\n")
    print("| | upload MB/s | download MB/s |")
    print("|---|---|---|")
    print(f"| ceiling: raw socket, same packets, request/response | {raw_up:,.0f} | {raw_down:,.0f} |")
    print(f"| ceiling: the same, {STREAM_IN_FLIGHT} requests in flight | {stream_up:,.0f} | {stream_down:,.0f} |")
    path = "HGFS in Vix HGFS_SEND_PACKET over TCLO" if args.vix else "HGFS over TCLO"
    # Against the higher ceiling of the two: pipelining must not make the target easier.
    top_up, top_down = max(raw_up, stream_up), max(raw_down, stream_down)
    print(f"| {path} (stream transport) | {figures['upload']:,.0f} ({figures['upload'] / top_up:.0%}) "
          f"| {figures['download']:,.0f} ({figures['download'] / top_down:.0%}) |")
    print(f"| the guest's file I/O alone (pwrite / pread, same packets) | {max(d[0] for d in disk):,.0f} "
          f"| {max(d[1] for d in disk):,.0f} |")
    up, down = figures["up"], figures["down"]
    print(f"| guest CPU ms per MiB | {up[0]:.2f} | {down[0]:.2f} |")
    print(f"| VMX CPU ms per MiB | {up[2]:.2f} | {down[2]:.2f} |")
    print(f"| page faults per MiB, guest / VMX | {up[1]:.0f} / {up[3]:.0f} | {down[1]:.0f} / {down[3]:.0f} |")
    print(f"\nguest RSS {figures['base_rss']:.1f} MiB before, peak growth {figures['rss_growth']:.1f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="MiB to move each way")
    parser.add_argument("--packet", type=int, default=hgfs.LARGE_IO_MAX, help="data bytes per HGFS packet")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the best is shown")
    parser.add_argument("--vix", action="store_true",
                        help="packets as Vix HGFS_SEND_PACKET with a login (the guest accepts any: --auth none)")
    arguments = parser.parse_args()
    react(lambda reactor: ensureDeferred(main(reactor, arguments)))
