"""Our guest, with the real C extension, under the ptrace trap engine (the only place it may run here).

The trap engine fakes CPUID for its tracee and emulates the trapped
backdoor instructions against a simulated VMX, so detection says VMware
there and the instructions really execute (and fault, and are emulated).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

_backdoor = pytest.importorskip(
    "twisted_vmtools._backdoor", reason="build it first: python setup.py build_ext --inplace"
)
pytestmark = pytest.mark.skipif(
    not (_backdoor.SUPPORTED and sys.platform == "linux" and platform.machine() == "x86_64"),
    reason="the trap engine and the backdoor are x86-64 Linux only",
)

REPO = Path(__file__).resolve().parents[2]
SIM = [sys.executable, "-m", "twisted_vmtools.vmx.cli"]


def test_extension_under_trap_engine() -> None:
    result = subprocess.run(
        [*SIM, "run", "--", sys.executable, str(Path(__file__).with_name("trapped_guest.py"))],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stdout


def _status(socket: Path) -> dict[str, object]:
    done = subprocess.run(
        [*SIM, "status", "--socket", str(socket), "--json"], capture_output=True, text=True, timeout=30, cwd=REPO
    )
    return json.loads(done.stdout) if done.returncode == 0 else {}  # type: ignore[no-any-return]


@pytest.mark.parametrize("transport", ["backdoor", "auto"])
def test_twistd_vmtools_under_trap_engine(tmp_path: Path, transport: str) -> None:
    # auto: the trap sandbox refuses AF_VSOCK sockets, so this also shows the fallback to the backdoor.
    socket = tmp_path / "vmx.sock"
    log = tmp_path / "serve.log"
    twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
    with open(log, "wb") as out:
        serve = subprocess.Popen(
            [*SIM, "serve", "--socket", str(socket), "--trap", "--", *twistd, "vmtools", "--transport", transport],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        deadline = time.monotonic() + 60
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            if serve.poll() is not None:
                break
            if socket.exists():
                status = _status(socket)
                if status.get("guest.toolsRunningStatus") == "guestToolsRunning" and status.get(
                    "guestinfo.vmtools.description"
                ):
                    break
            time.sleep(0.2)
        assert status.get("guest.toolsRunningStatus") == "guestToolsRunning", log.read_text()
        assert any(str(name).startswith("backdoor-tclo") for name in status["vmx.tcloChannels"])  # type: ignore[attr-defined]
        ping = subprocess.run(
            [*SIM, "tclo", "--socket", str(socket), "ping"], capture_output=True, text=True, timeout=30, cwd=REPO
        )
        assert ping.stdout.strip() == "OK", log.read_text()
    finally:
        serve.terminate()
        try:
            serve.wait(timeout=20)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
