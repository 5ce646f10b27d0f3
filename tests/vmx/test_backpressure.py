"""A peer that sends requests and never reads the answers costs one buffer, not one answer per request."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_unread_replies_do_not_pile_up() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    probe = Path(__file__).with_name("backpressure_probe.py")
    done = subprocess.run([sys.executable, str(probe), "300"], capture_output=True, text=True, timeout=120,
                          env=env, cwd=REPO, check=True)
    held = int(done.stdout.split()[-1])
    # 300 answers of 1 MB were asked for; the VMX holds about one (reading paused until it drains).
    assert held < 3_000_000, held
