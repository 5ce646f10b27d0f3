"""Our guest, with the real C extension, under the ptrace trap engine (the only place it may run here).

The trap engine fakes CPUID for its tracee and emulates the trapped
backdoor instructions against a simulated VMX, so detection says VMware
there and the instructions really execute (and fault, and are emulated).
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

_backdoor = pytest.importorskip(
    "twisted_vmtools._backdoor", reason="build it first: python setup.py build_ext --inplace"
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (_backdoor.SUPPORTED and sys.platform == "linux" and platform.machine() == "x86_64"),
        reason="the trap engine and the backdoor are x86-64 Linux only",
    ),
]

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
