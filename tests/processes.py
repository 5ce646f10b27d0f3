"""Real processes for the slow tests: the simulator, our guest under twistd, and waiting on them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

def sim(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SIM, *args],
        capture_output=True, text=True, timeout=60, check=check, cwd=REPO,
    )


TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
SIM = [sys.executable, "-m", "twisted_vmtools.vmx.cli"]


def start_simulator(path: Path, *trapped_guest: str, log: Path | None = None,
                    low_bandwidth: bool = False) -> subprocess.Popen[bytes]:
    trap = ["--trap", "--", *trapped_guest] if trapped_guest else []
    bandwidth = ["--low-bandwidth"] if low_bandwidth else []
    with open(log or os.devnull, "wb") as out:
        process = subprocess.Popen(
            [*SIM, "serve", "--socket", str(path), "--ping-interval", "0.5", *bandwidth, *trap],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
        )
    wait_for(lambda: path.exists(), "the simulator's socket")
    return process


def wait_for(condition: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def status(path: Path) -> dict[str, object]:
    return json.loads(sim("status", "--socket", str(path), "--json").stdout)  # type: ignore[no-any-return]


def running(path: Path) -> bool:
    return status(path)["guest.toolsRunningStatus"] == "guestToolsRunning"


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def simulated_guest(base: Path, *guest_options: str, log: Path | None = None) -> Iterator[Path]:
    """`vmtools-sim serve` and `twistd vmtools` on ``base/vmx.sock``, the tools running; the socket's path.

    The guest sends no periodic guest info (``--guestinfo-interval 0``): these tests are about
    what is asked of it, not what it reports.
    """
    path = base / "vmx.sock"
    simulator = start_simulator(path, log=log)
    with open(base / "guest.log", "wb") as out:
        guest = subprocess.Popen([*TWISTD, "vmtools", "--transport", f"unix:{path}", "--guestinfo-interval", "0",
                                  *guest_options], stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_for(lambda: running(path), "the tools to run", timeout=60)
        yield path
    finally:
        stop(guest)
        stop(simulator)
