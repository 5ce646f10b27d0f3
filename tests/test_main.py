"""``python -m twisted_vmtools``: ``twistd -n --pidfile= vmtools`` without looking for the plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from twisted_vmtools import __version__
from twisted_vmtools.__main__ import _VMToolsOnly

REPO = Path(__file__).resolve().parent.parent


def test_options_are_twistds_in_the_foreground_with_vmtools_as_the_only_command() -> None:
    config = _VMToolsOnly()
    config.parseOptions(["--nodaemon", "--pidfile=", "vmtools", "--transport", "unix:/tmp/x.sock"])
    assert config["nodaemon"] and config["pidfile"] == ""
    assert list(config.loadedPlugins) == ["vmtools"] and config.subOptions["transport"] == "unix:/tmp/x.sock"
    assert config.subOptions.getSynopsis() == "Usage: python -m twisted_vmtools [options]"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    config = _VMToolsOnly()
    with pytest.raises(SystemExit) as exited:
        config.parseOptions(["--nodaemon", "--pidfile=", "vmtools", "--version"])  # as `twistd vmtools --version`
    assert exited.value.code == 0 and capsys.readouterr().out == f"twisted_vmtools {__version__}\n"


@pytest.mark.slow
def test_runs_the_guest_tools_against_a_simulator(tmp_path: Path) -> None:
    sock = tmp_path / "vmx.sock"
    sim = [sys.executable, "-m", "twisted_vmtools.vmx.cli"]
    serve = subprocess.Popen([*sim, "serve", "--socket", str(sock)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    guest = None
    try:
        while not sock.exists() and serve.poll() is None:
            time.sleep(0.05)
        # Run where twistd would leave its twistd.pid: none is written.
        guest = subprocess.Popen([sys.executable, "-m", "twisted_vmtools", "--transport", f"unix:{sock}"],
                                 cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = subprocess.run([*sim, "status", "--json", "--socket", str(sock)], cwd=REPO,
                                    capture_output=True, text=True, timeout=60)
            if json.loads(status.stdout or "{}").get("guest.toolsRunningStatus") == "guestToolsRunning":
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the guest tools never ran")
        assert guest.poll() is None and not (tmp_path / "twistd.pid").exists()
    finally:
        for process in (guest, serve):
            if process is not None:
                process.terminate()
                process.wait(30)
