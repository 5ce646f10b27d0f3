"""Does the guest's memory stay flat?  A million TCLO pings through the stream transport.

24 hours of a VMX's pings, compressed: ``twistd -n vmtools --transport unix:PATH``
runs as a subprocess and this process is its VMX, answering the guest's RPCI
requests, greeting it as a VMX does (``reset``, ``Capabilities_Register``,
the options), then sending ``ping`` after ``ping`` over the TCLO connection as
fast as the guest answers (one at a time, as a VMX does).  The VMX here is a
minimal one, blocking sockets and the project's DataMap codec, with nothing
kept per command: the fastest path, and the memory measured is the guest's
alone (the simulator's RPC log is the VMX's memory, not the guest's).

The guest's resident set is read from /proc after ``--warmup`` pings (the
start-up and the first reports done) and every ``--every`` pings after that;
the growth reported is the last reading less the warm-up one.

    python benchmarks/ping_memory.py                      # 1,000,000 pings
    python benchmarks/ping_memory.py --pings 100000       # quicker
"""

from __future__ import annotations

import argparse
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from twisted_vmtools.codecs.datamap import PacketDecoder, PacketType, VsockPacket, VsockPacketError
from twisted_vmtools.codecs.stream import PREAMBLE_SIZE, StreamKind, parse_preamble
from twisted_vmtools.vmx.lifecycle import start_sequence

PING = VsockPacket.data(b"ping").encode()
OK = b"OK "


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class Connection:
    """One guest connection: its channel (once the preamble is in) and its packet decoder."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.kind: StreamKind | None = None
        self.head = b""
        self.decoder = PacketDecoder()

    def received(self, data: bytes) -> list[VsockPacket]:
        if self.kind is None:
            self.head += data
            if len(self.head) < PREAMBLE_SIZE:
                return []
            self.kind = parse_preamble(self.head[:PREAMBLE_SIZE])
            data, self.head = self.head[PREAMBLE_SIZE:], b""
        packets = []
        for packet in self.decoder.feed(data):
            if isinstance(packet, VsockPacketError):
                raise SystemExit(f"ping_memory: the guest sent a malformed packet: {packet}")
            packets.append(packet)
        return packets


class MinimalVMX:
    """Answers RPCI with ``1 `` and plays TCLO: a VMX's start sequence (``reset``,
    ``Capabilities_Register``, the ``Set_Option``s: docs/vmx-lifecycle.md), then ``ping`` after each reply."""

    def __init__(self, listener: socket.socket, pings: int, on_reply: Callable[[int], None]) -> None:
        self.listener = listener
        self.pings = pings
        self.on_reply = on_reply
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ)
        self.tclo: Connection | None = None
        self.greeting = [VsockPacket.data(command).encode() for command in start_sequence()]
        self.replies = 0  # ping replies so far
        self.sent_pings = 0
        self.rpci_requests = 0

    def run(self, deadline: float) -> None:
        while self.replies < self.pings:
            if time.monotonic() > deadline:
                raise SystemExit(f"ping_memory: timed out after {self.replies} pings")
            for key, _ in self.selector.select(timeout=1.0):
                if key.fileobj is self.listener:
                    sock, _ = self.listener.accept()
                    self.selector.register(sock, selectors.EVENT_READ, Connection(sock))
                else:
                    self._readable(key.data)

    def _readable(self, connection: Connection) -> None:
        data = connection.sock.recv(1 << 16)
        if not data:
            if connection is self.tclo:
                raise SystemExit(f"ping_memory: the guest closed its TCLO connection after {self.replies} pings")
            self.selector.unregister(connection.sock)
            connection.sock.close()
            return
        for packet in connection.received(data):
            if connection.kind is StreamKind.RPCI:
                self.rpci_requests += 1
                connection.sock.sendall(VsockPacket.data(b"1 ").encode())
            elif connection.kind is StreamKind.TCLO:
                self._tclo(connection, packet)
            else:
                raise SystemExit(f"ping_memory: unexpected channel {connection.kind}")
        if connection.kind is StreamKind.TCLO and self.tclo is None:
            self.tclo = connection
            connection.sock.sendall(self.greeting.pop(0))

    def _tclo(self, connection: Connection, packet: VsockPacket) -> None:
        if packet.type is PacketType.PING:
            return  # the guest's heartbeat
        reply = packet.payload or b""
        if self.greeting:  # a refusal (ERROR) does not stop a VMX's greeting either
            connection.sock.sendall(self.greeting.pop(0))
            return
        if self.sent_pings:
            if reply != OK:
                raise SystemExit(f"ping_memory: the guest answered ping with {reply[:80]!r}")
            self.replies += 1
            self.on_reply(self.replies)
        if self.replies < self.pings:
            self.sent_pings += 1
            connection.sock.sendall(PING)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pings", type=int, default=1_000_000)
    parser.add_argument("--warmup", type=int, default=20_000, help="pings before the first reading")
    parser.add_argument("--every", type=int, default=100_000, help="pings between readings")
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    parser.add_argument("--guestinfo-interval", type=float, default=30.0,
                        help="the guest's seconds between guest info reports (30: its default; 0.1 compresses "
                             "a day's 2,880 reports into five minutes as well)")
    args = parser.parse_args(argv)
    if args.warmup >= args.pings:
        parser.error("--warmup must be fewer than --pings")
    directory = tempfile.mkdtemp(prefix="ping-memory-")
    path = os.path.join(directory, "vmx.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    twistd = shutil.which("twistd") or "twistd"
    command = [twistd, "-n", "--pidfile=", f"--logfile={os.path.join(directory, 'guest.log')}", "vmtools",
               "--transport", f"unix:{path}", "--transfer-state", os.path.join(directory, "hgfs"),
               "--guestinfo-interval", str(args.guestinfo_interval)]
    started = time.perf_counter()
    guest = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    readings: list[tuple[int, int, float, float]] = []  # pings, RSS KiB, wall time, guest CPU seconds

    def on_reply(done: int) -> None:
        if done == args.warmup or (done > args.warmup and (done - args.warmup) % args.every == 0) or done == args.pings:
            readings.append((done, rss_kib(guest.pid), time.perf_counter(), cpu_seconds(guest.pid)))
            (_, first, _, _), (_, now, at, _) = readings[0], readings[-1]
            print(f"{done:>10,} pings  {at - started:6.1f} s  guest RSS {now / 1024:7.2f} MiB  "
                  f"({(now - first) / 1024:+.2f} MiB since the warm-up)", flush=True)

    vmx = MinimalVMX(listener, args.pings, on_reply)
    try:
        vmx.run(time.monotonic() + args.timeout)
    finally:
        guest.terminate()
        guest.wait(30)
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)
    (start, rss0, wall0, cpu0), (end, rss1, wall1, cpu1) = readings[0], readings[-1]
    count = end - start
    peak = max(r[1] for r in readings)
    print()
    print(f"pings measured            {count:,} (after {start:,} of warm-up)")
    print(f"rate                      {count / (wall1 - wall0):,.0f} pings/s")
    print(f"RPCI requests answered    {vmx.rpci_requests:,} (guest info every {args.guestinfo_interval:g} s)")
    print(f"guest CPU per ping        {(cpu1 - cpu0) / count * 1e6:.1f} µs")
    print(f"guest RSS                 {rss0 / 1024:.2f} -> {rss1 / 1024:.2f} MiB (peak {peak / 1024:.2f})")
    print(f"guest RSS growth          {(rss1 - rss0) / 1024:+.3f} MiB ({(rss1 - rss0) * 1024 / count:+.2f} B/ping)")


if __name__ == "__main__":
    main(sys.argv[1:])
