"""Imports point down: the guest side and the simulated VMX never import each other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "twisted_vmtools"
GUEST_SIDE = ("guest", "service", "tap", "tap_power", "channels", "protocols", "rpctool")
# The one way up: `vmtools-sim demo` starts the demo application, imported only for that command.
ALLOWED = {("vmx/cli.py", "twisted_vmtools.demo")}


def imports(path: Path) -> set[str]:
    """The twisted_vmtools modules ``path`` imports, resolved to absolute names."""
    module = ".".join(("twisted_vmtools", *path.relative_to(PACKAGE).with_suffix("").parts))
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found |= {name} | {f"{name}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.startswith("twisted_vmtools")}


def allowed(file: str, name: str) -> bool:
    return any(file == f and (name == m or name.startswith(m + ".")) for f, m in ALLOWED)


def reaches(name: str, parts: tuple[str, ...]) -> bool:
    return any(name == f"twisted_vmtools.{p}" or name.startswith(f"twisted_vmtools.{p}.") for p in parts)


def test_the_vmx_never_imports_the_guest_side() -> None:
    wrong = sorted(
        (str(path.relative_to(PACKAGE)), name)
        for path in (PACKAGE / "vmx").rglob("*.py")
        for name in imports(path)
        if reaches(name, (*GUEST_SIDE, "demo")) and not allowed(str(path.relative_to(PACKAGE)), name)
    )
    assert wrong == []


def test_the_guest_side_never_imports_the_vmx() -> None:
    guest_files = [p for p in PACKAGE.rglob("*.py") if reaches(_module(p), GUEST_SIDE)]
    assert len(guest_files) > 10
    wrong = sorted((_module(p), name) for p in guest_files for name in imports(p) if reaches(name, ("vmx", "demo")))
    # --simulate runs an embedded simulator: tap.py may start one, like the demo does.
    assert [(m, n) for m, n in wrong if m != "twisted_vmtools.tap"] == []


def test_codecs_import_no_twisted_and_nothing_above() -> None:
    for path in (PACKAGE / "codecs").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
        assert not any(name.startswith(("twisted", "zope")) for name in names), path
        assert all(n.level <= 1 for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)), path


def _module(path: Path) -> str:
    return ".".join(("twisted_vmtools", *path.relative_to(PACKAGE).with_suffix("").parts))


STATUS_MODULES = """
import atexit, sys
atexit.register(lambda: print("MODULES", " ".join(sorted(sys.modules))))
from twisted_vmtools.vmx.cli import main
main(["status", "--socket", sys.argv[1]])
"""


def test_status_loads_neither_psutil_nor_the_guest_stack(tmp_path: Path) -> None:
    # No simulator at that path: status reports it and exits, having loaded all it needs.
    run = subprocess.run(
        [sys.executable, "-c", STATUS_MODULES, str(tmp_path / "nobody.sock")],
        capture_output=True, text=True, timeout=60,
    )
    loaded = run.stdout.split("MODULES", 1)[1].split()
    assert "twisted_vmtools.vmx.cli" in loaded
    assert "psutil" not in loaded
    assert [m for m in loaded if reaches(m, (*GUEST_SIDE, "demo"))] == []


def test_one_declared_backdoor_host_interface_for_every_caller() -> None:
    from zope.interface.verify import verifyObject

    from twisted_vmtools.backdoor_interface import IBackdoorHost
    from twisted_vmtools.vmx.backdoor_host import BackdoorHost
    from twisted_vmtools.vmx.trap import interfaces

    assert interfaces.IBackdoorHost is IBackdoorHost  # the trap engine's name for the same declaration
    assert verifyObject(IBackdoorHost, BackdoorHost(lambda protocol, owner: None))
