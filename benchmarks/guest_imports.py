"""What an idle guest imports, and what it costs in resident memory, beside a bare Twisted reactor.

``twistd -n vmtools --transport unix:PATH`` runs under ``python -X importtime``
against a simulated VMX in this process; once the VMX has seen the start
sequence and the first guest info report (everything an idle guest does),
the guest's resident set is read beside that of a bare reactor process
(``python -c 'from twisted.internet import reactor; reactor.run()'``) started
alongside, and the guest's import log is summed up: the modules with the
largest cumulative import time, and the total.

    python benchmarks/guest_imports.py                    # this checkout
    python benchmarks/guest_imports.py --tree /path/to/other/checkout --top 20

``--tree`` runs the guest from another checkout of the project (e.g. a
``git worktree`` of an older commit), to compare before and after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater, react

from twisted_vmtools.codecs.guestinfo import GuestInfoKey
from twisted_vmtools.vmx.model import VMX
from twisted_vmtools.vmx.simulator import SimulatorService

BARE_REACTOR = [sys.executable, "-c", "from twisted.internet import reactor; reactor.run()"]
HERE = Path(__file__).resolve().parent.parent


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def import_times(log: str) -> list[tuple[int, int, str]]:
    """(self µs, cumulative µs, module) per line of ``-X importtime`` output."""
    rows = []
    for line in log.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = line[len("import time:"):].split("|")
        rows.append((int(own), int(cumulative), name.rstrip()))
    return rows


async def wait_until(reactor: object, condition: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"guest_imports: timed out waiting for {what}")
        await deferLater(reactor, 0.05, lambda: None)  # type: ignore[arg-type]


async def measure(reactor: object, args: argparse.Namespace) -> None:
    directory = tempfile.mkdtemp(prefix="guest-imports-")
    where = os.path.join(directory, "vmx.sock")
    vmx = VMX(reactor)  # type: ignore[arg-type]
    simulator = SimulatorService(reactor, where, vmx=vmx)  # type: ignore[arg-type]
    simulator.startService()
    tree = Path(args.tree).resolve() if args.tree else HERE
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    twistd = shutil.which("twistd") or "twistd"
    command = [sys.executable, "-X", "importtime", twistd, "-n", "--pidfile=",
               f"--logfile={os.path.join(directory, 'guest.log')}", "vmtools", "--transport", f"unix:{where}",
               "--transfer-state", os.path.join(directory, "hgfs")]
    errors = open(os.path.join(directory, "imports.txt"), "wb")  # noqa: SIM115 - closed below
    bare = subprocess.Popen(BARE_REACTOR, cwd=directory)
    guest = subprocess.Popen(command, stderr=errors, cwd=tree, env=environment)
    try:
        await wait_until(reactor, lambda: vmx.running, "the guest to answer reset and Capabilities_Register")
        await wait_until(reactor, lambda: GuestInfoKey.UPTIME in vmx.tools.guest_info, "the guest info report")
        await deferLater(reactor, args.idle, lambda: None)  # type: ignore[arg-type]
        guest_rss, bare_rss = rss_mib(guest.pid), rss_mib(bare.pid)
    finally:
        for process in (guest, bare):
            process.terminate()
            process.wait(30)
        errors.close()
        await simulator.stopService()
    log = Path(directory, "imports.txt").read_text()
    shutil.rmtree(directory, ignore_errors=True)
    if args.save:
        Path(args.save).write_text(log)
    rows = import_times(log)
    print(f"guest (twistd -n vmtools --transport unix:…) RSS  {guest_rss:6.1f} MiB")
    print(f"bare Twisted reactor RSS                         {bare_rss:6.1f} MiB")
    print(f"ratio                                            {guest_rss / bare_rss:6.2f}")
    print(f"modules imported                                 {len(rows):6d}")
    top_level = sum(cumulative for own, cumulative, name in rows if not name[1:].startswith(" "))
    print(f"import time, all top-level imports               {top_level / 1000:6.0f} ms")
    print()
    print("| module | cumulative ms | self ms |")
    print("|---|---:|---:|")
    for own, cumulative, name in sorted(rows, key=lambda r: -r[1])[: args.top]:
        print(f"| `{name.strip()}` | {cumulative / 1000:.1f} | {own / 1000:.1f} |")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", help="run the guest from this checkout (default: this one)")
    parser.add_argument("--top", type=int, default=15, help="how many import entries to list")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idling before the reading")
    parser.add_argument("--save", help="also write the guest's whole -X importtime log to this file")
    args = parser.parse_args(argv)
    react(lambda reactor: ensureDeferred(measure(reactor, args)))


if __name__ == "__main__":
    main(sys.argv[1:])
