"""The wheel carries what `pip install .` promises: the twistd plugin, the extension, the commands."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # processes: see pyproject.toml's markers

REPO = Path(__file__).resolve().parent.parent


def test_wheel_ships_the_plugin_the_extension_and_the_commands(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
         str(REPO)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("twisted_vmtools-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/vmtools.py" in names
    assert "twisted/plugins/vmtools_vsock.py" in names  # the vsock: endpoint parser
    assert "twisted/plugins/__init__.py" not in names  # it would hide every other plugin
    assert "twisted/__init__.py" not in names
    assert any(n.startswith("twisted_vmtools/_backdoor") and n.endswith(".so") for n in names)
    assert "twisted_vmtools/vmx/trap/engine.py" in names
    assert "twisted_vmtools/py.typed" in names  # type checkers read our hints
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    assert not any(n.startswith("tests/") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "vmtools-sim = twisted_vmtools.vmx.cli:main" in text
