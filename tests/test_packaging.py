"""The wheel carries what `pip install .` promises: the twistd plugin, the extension, the commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
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


# What an editable install needs of the checkout (not tests/, docs/, or built files).
SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "LICENSE", "twisted", "twisted_vmtools")
INSTALL = ["--config-settings", "editable_mode=strict"]  # the README's and .ci/run's install


def test_the_readmes_editable_install_keeps_the_twistd_plugin_visible(tmp_path: Path) -> None:
    """setuptools' default editable mode hides twisted/plugins from twistd; strict mode links it in.

    Installed from a copy, into a venv of its own: never the machine's own install, and not
    this checkout's build/ (the link tree strict mode makes there).
    """
    assert " ".join(INSTALL) in (REPO / "README.md").read_text()
    assert " ".join(INSTALL) in (REPO / ".ci" / "run").read_text()
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            built = shutil.ignore_patterns("*.so", "__pycache__", "dropin.cache")
            shutil.copytree(REPO / name, source / name, ignore=built)
        else:
            shutil.copy2(REPO / name, source / name)
    pytest.importorskip("ensurepip", reason="this Python makes no venv with pip (Debian: apt-get install python3-venv)")
    venv.create(tmp_path / "venv", with_pip=True)  # without this machine's site-packages: nothing leaks in
    python = tmp_path / "venv" / "bin" / "python"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    subprocess.run([python, "-m", "pip", "install", "-q", "-e", str(source), *INSTALL],
                   check=True, capture_output=True, timeout=600, env=env)
    elsewhere = tmp_path / "elsewhere"  # not the checkout: only the install can show the plugin
    elsewhere.mkdir()
    listed = subprocess.run([tmp_path / "venv" / "bin" / "twistd", "--help"], cwd=elsewhere, env=env,
                            check=True, capture_output=True, text=True, timeout=120).stdout
    assert any(line.split()[:1] == ["vmtools"] for line in listed.splitlines()), listed
    where = subprocess.run([python, "-c", "import twisted_vmtools._backdoor as b; print(b.__file__)"], cwd=elsewhere,
                           env=env, check=True, capture_output=True, text=True, timeout=60).stdout
    assert where.startswith(str(source / "build"))  # the extension was built, into strict mode's link tree
