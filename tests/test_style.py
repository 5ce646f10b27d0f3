"""The house style is part of the build: ruff and mypy stay clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # processes: see pyproject.toml's markers

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not shutil.which("ruff"), reason="ruff is not installed (pip install -e '.[dev]')")
def test_ruff_is_clean() -> None:
    run = subprocess.run(["ruff", "check", "."], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout


def test_mypy_is_clean() -> None:
    pytest.importorskip("mypy")
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "twisted_vmtools", "tests", "benchmarks"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout
