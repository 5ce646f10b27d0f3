"""Conformance: our guest tools against open-vm-tools' own, under the trap engine."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from twisted_vmtools.vmx.conformance import (
    DELIBERATE,
    SCENARIOS,
    Comparison,
    Observation,
    compare,
    markdown,
    normalise,
)

pytestmark = pytest.mark.slow  # processes: see pyproject.toml's markers

REPO = Path(__file__).resolve().parents[2]


def test_normalise_masks_what_differs_by_build_and_time() -> None:
    assert normalise(b"SetGuestInfo  7 95773\x00") == "SetGuestInfo  7 <uptime>"
    assert normalise(b"log toolbox: Version: 12.2.0.41219 (build-21223074)\x00") == "log toolbox: Version: <version>"
    assert normalise(b"tools.capability.statechange ") == "tools.capability.statechange"


def test_verdicts() -> None:
    ping = next(s for s in SCENARIOS if s.name == "ping")
    assert Comparison(ping, Observation("'OK '"), Observation("'OK '")).verdict == "same"
    assert Comparison(ping, Observation("'OK '"), Observation("'ERROR '")).verdict == "DIFFERENT (unexplained)"
    explained = next(s for s in SCENARIOS if s.name in DELIBERATE)
    expected = DELIBERATE[explained.name].ours
    assert Comparison(explained, Observation("a"), expected).verdict == "deliberately different"
    # An explained scenario still fails when ours does anything but the explained thing.
    assert Comparison(explained, Observation("a"), Observation("'ERROR boom'")).verdict == "DIFFERENT (unexplained)"
    missing = compare({}, {"ping": Observation("'OK '")})
    assert {c.scenario.name for c in missing} == {s.name for s in SCENARIOS}
    assert "| TCLO `ping` | not run | 'OK ' | DIFFERENT (unexplained) |" in markdown(missing, "stream")


@pytest.mark.skipif(not shutil.which("vmtoolsd"), reason="open-vm-tools is not installed")
def test_ours_conforms_to_vmtoolsd(tmp_path: Path) -> None:
    pytest.importorskip("twisted_vmtools._backdoor")
    output = tmp_path / "conformance.md"
    run = subprocess.run(
        [sys.executable, "-m", "twisted_vmtools.vmx.cli", "conformance", "--output", str(output)],
        capture_output=True, text=True, timeout=240, cwd=REPO,
    )
    table = output.read_text()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "DIFFERENT" not in table
    for scenario in SCENARIOS:
        assert scenario.what in table
    # The scenarios that must simply agree do (the rest are explained in DELIBERATE).
    for name in ("rpctool-info-get", "rpctool-info-get-missing", "reset", "ping", "set-option-broadcastip",
                 "unknown-command", "guest-nics"):
        what = next(s.what for s in SCENARIOS if s.name == name)
        row = next(line for line in table.splitlines() if line.startswith(f"| {what} |"))
        assert row.endswith("| same |"), row
