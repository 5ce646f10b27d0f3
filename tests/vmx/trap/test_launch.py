"""The sandbox launcher used on its own: harden, stop, exec."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # processes: see pyproject.toml's markers


def test_standalone_launcher_stops_then_execs_sandboxed() -> None:
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "twisted_vmtools.vmx.trap.launch",
            "--",
            "grep",
            "-E",
            "^(Seccomp|NoNewPrivs):",
            "/proc/self/status",
        ],
        stdout=subprocess.PIPE,
    )
    pid, status = os.waitpid(launcher.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGSTOP  # a debugger may attach now
    os.kill(launcher.pid, signal.SIGCONT)
    assert launcher.stdout is not None
    output = launcher.stdout.read().decode()
    launcher.stdout.close()
    assert launcher.wait() == 0
    assert output.split() == ["NoNewPrivs:", "1", "Seccomp:", "2"]
