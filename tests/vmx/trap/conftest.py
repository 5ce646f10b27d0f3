"""Fixtures for the trap engine tests: compiled test programs and a fake VMX."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from zope.interface import implementer

from twisted_vmtools.codecs import registers as bd
from twisted_vmtools.vmx.trap.interfaces import IBackdoorHost

SOURCES = Path(__file__).resolve().parent / "programs"


@dataclass(frozen=True)
class Programs:
    trapped: str  # trapped.c: one scenario per argv[1]
    dlmain: str  # dlmain.c: no backdoor code, dlopens bdlib
    bdlib: str  # bdlib.c: backdoor code in a late-loaded library


@pytest.fixture(scope="session")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Programs:
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    out = tmp_path_factory.mktemp("trap_programs")

    def build(*args: str) -> None:
        subprocess.run([cc, "-O1", "-Wall", *args], check=True, cwd=SOURCES)

    build("-pthread", "-o", str(out / "trapped"), "trapped.c")
    build("-shared", "-fPIC", "-o", str(out / "libbd.so"), "bdlib.c")
    build("-o", str(out / "dlmain"), "dlmain.c", "-ldl")
    return Programs(str(out / "trapped"), str(out / "dlmain"), str(out / "libbd.so"))


@implementer(IBackdoorHost)
@dataclass
class FakeHost:
    """GETVERSION, and high-bandwidth transfers that echo the last one out."""

    stored: bytes = b""
    exited: list[int] = field(default_factory=list)
    owners: set[int] = field(default_factory=set)

    def low_bandwidth(self, owner: int, regs: bd.Registers) -> bd.Registers | None:
        self.owners.add(owner)
        if regs.command == bd.CMD_GETVERSION and regs.bx & bd.MASK32 == ~bd.BDOOR_MAGIC & bd.MASK32:
            return regs.with_(ax=bd.VERSION_MAGIC, bx=bd.BDOOR_MAGIC, cx=bd.VMX_TYPE_SCALABLE_SERVER)
        return None

    def high_bandwidth_out(self, owner: int, regs: bd.Registers, data: bytes) -> bd.Registers:
        self.owners.add(owner)
        self.stored = data
        return regs.with_(bx=bd.pack16(1, regs.bx))

    def high_bandwidth_in(self, owner: int, regs: bd.Registers) -> tuple[bd.Registers, bytes]:
        self.owners.add(owner)
        return regs.with_(bx=bd.pack16(1, regs.bx)), self.stored

    def owner_exited(self, owner: int) -> None:
        self.exited.append(owner)


@pytest.fixture
def host() -> FakeHost:
    return FakeHost()


@pytest.fixture
def output(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A file descriptor for the program's stdout, and the file's path."""
    path = tmp_path / "stdout"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        yield fd, path
    finally:
        os.close(fd)


def _children() -> set[int]:
    mine = os.getpid()
    children = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == mine:
                children.add(int(entry))
    return children


@pytest.fixture(autouse=True)
def no_leftover_children() -> Iterator[None]:
    """Every engine run must reap everything it started (other tests' children
    are not ours to judge)."""
    before = _children()
    yield
    left = _children() - before
    assert not left, f"child processes left behind: {sorted(left)}"
