"""What acting as the login's account costs an HGFS transfer: the same packets three ways, in one process.

``server``: the tools' `HGFSServer` answers each packet directly (what ``f`` does).
``own account``: `UserHGFS` routes the packet of the tools' own account (``HGFS_SEND_PACKET`` as root).
``helper``: `UserHGFS` sends it to the HGFS helper process of another account (``nobody``), which
performs it as that account and sends the reply back over its Unix socket (needs root).

No TCLO and no VMX: the client's sender calls the guest side directly, so the table shows the routing
and the helper's round trip alone, beside the server's own work.  A file of ``--size`` MiB is uploaded
(into a directory every account may write) and downloaded with ``--packet`` data bytes per packet.

    python benchmarks/hgfs_users.py                  # 256 MiB, 520,192-byte packets, best of 3
"""

from __future__ import annotations

import argparse
import os
import pwd
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.task import react

from twisted_vmtools.codecs import hgfs
from twisted_vmtools.guest.accounts import GuestUser
from twisted_vmtools.guest.hgfs_server import HGFSServer
from twisted_vmtools.guest.hgfs_users import UserHGFS, helper_handlers
from twisted_vmtools.heap import keep_packets_in_heap
from twisted_vmtools.vmx.hgfs_client import HGFSClient

MiB = 1 << 20
Send = Callable[[bytes], "Deferred[Any]"]


async def transfer(send: Send, directory: str, source: str, size: int, packet: int) -> tuple[float, float, float]:
    """Upload then download ``source``: MB/s each way, and this process's CPU ms per MiB (both ways)."""
    client = HGFSClient(send, max_packet=packet + hgfs.V4_HEADER_SIZE + 25)
    await client.start()
    target = os.path.join(directory, "in-guest.bin")
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    with open(source, "rb") as f:
        start = time.perf_counter()
        await client.upload(target, f.read, overwrite=True, permissions=0o644)
        upload = size / (time.perf_counter() - start) / MiB
    count = [0]

    def discard(data: Any) -> None:
        count[0] += len(data)

    start = time.perf_counter()
    await client.download(target, discard)
    download = size / (time.perf_counter() - start) / MiB
    used = resource.getrusage(resource.RUSAGE_SELF)
    await client.stop()
    os.unlink(target)
    assert count[0] == size, count[0]
    ms = (used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime) * 1000 / (2 * size / MiB)
    return upload, download, ms


async def main(reactor: Any, args: argparse.Namespace) -> None:
    keep_packets_in_heap()  # as twistd vmtools does: this process stands for the tools
    size = args.size * MiB
    directory = tempfile.mkdtemp(prefix="hgfs-users-", dir="/tmp")
    os.chmod(directory, 0o1777)
    try:
        source = os.path.join(directory, "source.bin")
        with open(source, "wb") as f:
            for _ in range(args.size):
                f.write(os.urandom(MiB))
        server = HGFSServer(reactor, handlers=helper_handlers(reactor))
        users = UserHGFS(reactor, server)
        own = GuestUser.current()
        ways: list[tuple[str, Send]] = [
            ("server (the `f` path)", lambda packet: maybeDeferred(server.packet, packet)),
            ("own account (HGFS_SEND_PACKET, in process)", lambda packet: maybeDeferred(users.packet, packet, own)),
        ]
        if os.geteuid() == 0:
            nobody = GuestUser.from_passwd(pwd.getpwnam("nobody"))
            ways.append(("another account (its helper process)",
                         lambda packet: maybeDeferred(users.packet, packet, nobody)))
        print(f"{args.size} MiB, {args.packet:,}-byte packets, best of {args.repeat} "
              "(CPU: this process only; a helper's own is not counted)\n")
        print("| packets answered by | upload MB/s | download MB/s | CPU ms per MiB |")
        print("|---|---|---|---|")
        for name, send in ways:
            runs = [await transfer(send, directory, source, size, args.packet) for _ in range(args.repeat)]
            print(f"| {name} | {max(r[0] for r in runs):,.0f} | {max(r[1] for r in runs):,.0f} "
                  f"| {min(r[2] for r in runs):.2f} |")
        users.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="MiB to move each way")
    parser.add_argument("--packet", type=int, default=hgfs.LARGE_IO_MAX, help="data bytes per HGFS packet")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each way; the best is shown")
    arguments = parser.parse_args()
    react(lambda reactor: ensureDeferred(main(reactor, arguments)))
