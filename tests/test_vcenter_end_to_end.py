"""What vCenter would show and do, with real processes over a real Unix socket.

The guest runs with ``--power-hook`` (tests/power_hook.py, which only
writes a line) and ``/bin/true`` as its halt and reboot commands: no power
operation here can shut anything down.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.processes import REPO, TWISTD, sim, start_simulator, status, stop, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A simulator and our guest with its default 30 s poll interval; (socket, power log)."""
    path, power_log = tmp_path / "vmx.sock", tmp_path / "power.log"
    simulator = start_simulator(path)
    env = {**os.environ, "VMTOOLS_TEST_POWER_LOG": str(power_log)}
    with open(tmp_path / "guest.log", "wb") as out:
        guest = subprocess.Popen(
            [*TWISTD, "vmtools", "--transport", f"unix:{path}", "--power-hook", "tests.power_hook:record",
             "--halt-command", "/bin/true", "--reboot-command", "/bin/true"],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env,
        )
    try:
        yield path, power_log
    finally:
        stop(guest)
        stop(simulator)


def this_machines_macs() -> set[str]:
    return {a.address.lower() for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family == psutil.AF_LINK and a.address not in ("", "00:00:00:00:00:00")}


def test_status_shows_this_machine_right_after_the_guest_starts(vm: tuple[Path, Path]) -> None:
    path, _ = vm

    def reported() -> bool:
        seen = status(path)
        return bool(seen.get("guest.net") and seen.get("guest.disk") and seen.get("guest.hostName"))

    # Long before the 30 s poll interval: the first report follows Capabilities_Register.
    wait_for(reported, "the first guest-info report", timeout=25)
    seen: dict[str, Any] = status(path)
    assert seen["guest.toolsRunningStatus"] == "guestToolsRunning"
    assert seen["guest.hostName"] == socket.gethostname()
    assert {nic["macAddress"] for nic in seen["guest.net"]} <= this_machines_macs()
    assert all(nic["connected"] for nic in seen["guest.net"])
    disks = {disk["diskPath"]: disk for disk in seen["guest.disk"]}
    root = os.statvfs("/")
    if "/" in disks:
        assert disks["/"]["capacity"] == root.f_blocks * root.f_bsize
    assert seen["guest.guestId"] and seen["guest.guestFamily"] == "linuxGuest"
    stack = seen["guest.ipStack"]
    assert isinstance(stack, list) and "ipRouteConfig" in stack[0]


def test_power_buttons_report_what_the_guest_did(vm: tuple[Path, Path]) -> None:
    path, power_log = vm
    wait_for(lambda: status(path)["guest.toolsRunningStatus"] == "guestToolsRunning", "the guest")
    standby = sim("power", "standby", "--socket", str(path), "--timeout", "30")
    assert standby.stdout.splitlines() == [
        "OS_Suspend: OK ", "tools.os.statechange.status 1 5: the state change succeeded"]
    shutdown = sim("power", "shutdown", "--socket", str(path), "--timeout", "30")
    assert "tools.os.statechange.status 1 1" in shutdown.stdout
    assert power_log.read_text().split() == ["suspend", "halt"]
    unknown = sim("power", "explode", "--socket", str(path), check=False)
    assert unknown.returncode != 0 and "invalid choice" in unknown.stderr
