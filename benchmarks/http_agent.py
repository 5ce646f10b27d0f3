"""HTTP through guest operations (`GuestAgent`) beside treq straight to the server (the ceiling).

``vmtools-sim serve`` and ``twistd -n vmtools --auth none`` run as subprocesses
on a Unix socket in a temporary directory (the stream transport); this process
runs a twisted.web server on 127.0.0.1 and makes the requests, through the
guest's ``http.RoundTrip`` (every byte over the simulator's control channel,
TCLO and HGFS) and directly.  Small GETs are made one after the other.

    python benchmarks/http_agent.py                    # 200 small GETs, a 50 MiB download
    python benchmarks/http_agent.py --requests 50 --size 10
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater, react
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from twisted_vmtools.web import GuestAgent, connect_guest_operations

MiB = 1 << 20
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIM = [sys.executable, "-m", "twisted_vmtools.vmx.cli"]
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]


def start_pair(base: str) -> tuple[str, list[subprocess.Popen[bytes]]]:
    path = os.path.join(base, "vmx.sock")
    simulator = subprocess.Popen([*SIM, "serve", "--socket", path], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.STDOUT, cwd=REPO)
    _wait(lambda: os.path.exists(path))
    guest = subprocess.Popen([*TWISTD, "vmtools", "--transport", f"unix:{path}", "--guestinfo-interval", "0",
                              "--auth", "none"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=REPO)
    _wait(lambda: b"guestToolsRunning" in subprocess.run([*SIM, "status", "--socket", path], capture_output=True,
                                                         cwd=REPO).stdout)
    return path, [guest, simulator]


def _wait(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("the simulator or the guest did not start")
        time.sleep(0.1)


async def timed(run: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await run()
    return time.perf_counter() - start


async def measure(client: HTTPClient, base: str, requests: int, size: int) -> tuple[float, float]:
    async def small() -> None:
        for _ in range(requests):
            response = await client.get(base + "/small")
            assert await response.content() == b"hello, guest!"

    async def big() -> None:
        response = await client.get(base + "/big")
        received = 0

        def count(data: bytes) -> None:
            nonlocal received
            received += len(data)

        await response.collect(count)
        assert received == size, (received, size)

    return requests / await timed(small), size / MiB / await timed(big)


async def main(reactor: Any, args: argparse.Namespace) -> None:
    size = args.size * MiB
    root = Resource()
    root.putChild(b"small", Data(b"hello, guest!", "text/plain"))
    root.putChild(b"big", Data(os.urandom(size), "application/octet-stream"))
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}"
    with tempfile.TemporaryDirectory(prefix="http-bench-") as tmp:
        path, processes = start_pair(tmp)
        try:
            ops = await connect_guest_operations(reactor, path, login=("bench", "bench"))
            await deferLater(reactor, 0.5)
            through = await measure(HTTPClient(GuestAgent(reactor, ops, timeout=600)), base, args.requests, size)
            direct = await measure(HTTPClient(Agent(reactor)), base, args.requests, size)
        finally:
            for process in processes:
                process.terminate()
                process.wait(30)
    print(f"| path | small GETs (requests/s) | {args.size} MiB download (MB/s) |")
    print("|---|---:|---:|")
    print(f"| GuestAgent over the Unix stream transport | {through[0]:.1f} | {through[1]:.1f} |")
    print(f"| treq direct (ceiling) | {direct[0]:.1f} | {direct[1]:.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="small GETs, one after the other")
    parser.add_argument("--size", type=int, default=50, help="MiB of the download")
    arguments = parser.parse_args()
    react(lambda reactor: ensureDeferred(main(reactor, arguments)))
