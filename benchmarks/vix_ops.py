"""Vix guest operations: vmtoolsd against ours, both under the trap engine, as a real unprivileged account.

Each guest runs trapped against an in-process simulated VMX (vmtoolsd with
``useVGAuth = false``, so it checks the login through PAM as ours does; ours
over the real backdoor through the C extension).  Through `GuestOperations`
and the VMX's TCLO queue, as the test account made for the run:

- StartProgram → pid: the latency of N sequential ``StartProgram /bin/true``;
- ListFiles of a 5,000-entry directory, every page (64 KiB replies);
- ListProcessesEx with 500 extra processes (``sleep``s this script starts);
- the guest's CPU per operation: user+system time of the daemon and its reaped
  children (psutil), over the operations above, divided by their count; the
  tracer's own CPU (this process) is not included.

Needs root (to create and remove the account).  Run:
``python benchmarks/vix_ops.py [--count N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import psutil
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater, react

from twisted_vmtools.vmx.conformance import VMTOOLSD_CONF
from twisted_vmtools.vmx.conformance_vix import Account, temporary_account
from twisted_vmtools.vmx.guest_operations import GuestOperations, ProgramSpec
from twisted_vmtools.vmx.model import VMX
from twisted_vmtools.vmx.trapped import spawn_guest

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "--logfile",
          os.devnull, "vmtools", "--transport", "backdoor", "--guestinfo-interval", "0"]
ENTRIES = 5000
EXTRA_PROCESSES = 500


def daemon_cpu(marker: str) -> float:
    """User+system seconds of the traced daemon (and its reaped children), found by its command line."""
    for proc in psutil.Process().children(recursive=True):
        try:
            if marker in " ".join(proc.cmdline()):
                times = proc.cpu_times()
                return times.user + times.system + times.children_user + times.children_system
        except psutil.Error:
            continue
    raise RuntimeError(f"no {marker} process")


async def measure(reactor: Any, name: str, argv: list[str], marker: str, account: Account, tree: str,
                  count: int) -> dict[str, str]:
    vmx = VMX(reactor, ping_interval=3600)
    devnull = os.open(os.devnull, os.O_WRONLY)
    program = spawn_guest(reactor, vmx, argv, stdout=devnull, stderr=devnull)
    ops = GuestOperations(lambda command: vmx.send(command, timeout=120))
    login = account.login
    try:
        for _ in range(600):
            if vmx.running:
                break
            await deferLater(reactor, 0.05, lambda: None)
        await deferLater(reactor, 2.0, lambda: None)  # let start-up traffic finish
        results = {}

        cpu = daemon_cpu(marker)
        latencies = []
        for _ in range(count):
            started = time.perf_counter()
            await ops.start_program(login, ProgramSpec("/bin/true", "", "/"))
            latencies.append(time.perf_counter() - started)
        per_op = (daemon_cpu(marker) - cpu) / count
        results["StartProgram → pid"] = (f"{statistics.median(latencies) * 1000:.1f} ms median, "
                                         f"guest CPU {per_op * 1000:.1f} ms/op")

        cpu = daemon_cpu(marker)
        started = time.perf_counter()
        pages = seen = index = 0
        while True:
            page = await ops.list_files(login, tree, index=index, max_results=ENTRIES + 2)
            pages += 1
            seen += len(page.files)
            index += len(page.files)
            if not page.remaining or not page.files:
                break
        elapsed = time.perf_counter() - started
        per_op = (daemon_cpu(marker) - cpu) / pages
        results[f"ListFiles {ENTRIES:,} entries"] = (f"{elapsed * 1000:.0f} ms for {seen:,} entries in {pages} pages, "
                                                     f"guest CPU {per_op * 1000:.1f} ms/page")

        cpu = daemon_cpu(marker)
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            listed = await ops.list_processes(login)
            timings.append(time.perf_counter() - started)
        per_op = (daemon_cpu(marker) - cpu) / 3
        results["ListProcessesEx"] = (f"{statistics.median(timings) * 1000:.0f} ms for {len(listed)} processes, "
                                      f"guest CPU {per_op * 1000:.1f} ms/op")
        return results
    finally:
        program.terminate()
        await program.ended
        os.close(devnull)


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=50, help="StartProgram calls")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vix-bench-") as work, temporary_account() as account:
        if account is None:
            raise SystemExit("vix_ops.py: needs root (it makes a test account for the run)")
        os.chmod(work, 0o755)
        tree = os.path.join(work, "tree")
        os.mkdir(tree)
        for i in range(ENTRIES):
            open(os.path.join(tree, f"entry-{i:05d}"), "wb").close()
        conf = os.path.join(work, "tools.conf")
        with open(conf, "w") as f:
            f.write(VMTOOLSD_CONF)
        sleepers = [subprocess.Popen(["sleep", "600"]) for _ in range(EXTRA_PROCESSES)]
        try:
            guests = [("twistd vmtools", TWISTD, "twisted.scripts.twistd")]
            if shutil.which("vmtoolsd"):
                guests.insert(0, ("vmtoolsd 12.2", ["vmtoolsd", "-n", "vmsvc", "-c", conf], "vmtoolsd"))
            for name, command, marker in guests:
                results = await measure(reactor, name, command, marker, account, tree, args.count)
                for what, figure in results.items():
                    print(f"{name:16} {what:26} {figure}")
        finally:
            for sleeper in sleepers:
                sleeper.kill()
            for sleeper in sleepers:
                sleeper.wait()


if __name__ == "__main__":
    react(lambda reactor: ensureDeferred(main(reactor, sys.argv[1:])))
