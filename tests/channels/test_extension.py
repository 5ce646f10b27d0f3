"""The C extension builds and answers CPUID; no backdoor instruction is executed here."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from twisted_vmtools.codecs.message import ExchangeWords

_backdoor = pytest.importorskip(
    "twisted_vmtools._backdoor", reason="build it first: python setup.py build_ext --inplace"
)

ROOT = Path(__file__).resolve().parents[2]


def test_api() -> None:
    for name in ("lb", "hb_out", "hb_in", "exchange", "cpuid", "vmware"):
        assert callable(getattr(_backdoor, name))
    assert (_backdoor.MODE_PORT, _backdoor.MODE_VMCALL, _backdoor.MODE_VMMCALL) == (0, 1, 2)


@pytest.mark.skipif(not getattr(_backdoor, "SUPPORTED", 0), reason="x86-64 Linux only")
def test_cpuid_vendor() -> None:
    _, ebx, ecx, edx = _backdoor.cpuid(0)
    vendor = b"".join(v.to_bytes(4, "little") for v in (ebx, edx, ecx))
    assert vendor in (b"GenuineIntel", b"AuthenticAMD", b"HygonGenuine", b"CentaurHauls")


def test_arguments_checked_before_anything_runs() -> None:
    # These fail in argument checking, ahead of the CPUID guard and the instruction.
    magic = 0x564D5868
    with pytest.raises(ValueError, match="magic"):
        _backdoor.lb(0, 0, 10, 0x5658, 0, 0)  # not a backdoor call without the magic
    with pytest.raises(ValueError, match="mode"):
        _backdoor.lb(magic, 0, 0, 0, 0, 0, 7)
    with pytest.raises(ValueError):
        _backdoor.hb_in(0, 0, 0, 0, 0, -1)
    with pytest.raises(TypeError):
        _backdoor.hb_out(0, 0, 0, 0, 0, "not bytes")


def test_exchange_arguments_checked_before_anything_runs() -> None:
    words = open_channel_words()
    with pytest.raises(TypeError, match="two arguments"):
        _backdoor.exchange(b"")
    with pytest.raises(TypeError, match="tuple of 12"):
        _backdoor.exchange(b"", words[:-1])
    with pytest.raises(TypeError, match="tuple of 12"):
        _backdoor.exchange(b"", list(words))
    with pytest.raises(OverflowError):
        _backdoor.exchange(b"", words._replace(dx=-1))
    with pytest.raises(TypeError):
        _backdoor.exchange(b"", (*words[:-1], "1"))
    with pytest.raises(TypeError):
        _backdoor.exchange("not bytes", words)


@pytest.mark.skipif(_backdoor.vmware(), reason="this machine reports VMware: the instruction would run")
def test_exchange_refuses_outside_vmware() -> None:
    # The CPUID guard, as for the single calls: OSError, and no instruction executed (else SIGSEGV).
    with pytest.raises(OSError, match="VMware"):
        _backdoor.exchange(b"OK ", open_channel_words())


def open_channel_words() -> ExchangeWords:
    """What an open TCLO channel passes (channel 0, cookies 1 and 2)."""
    from twisted_vmtools.codecs.message import BDOOR_PORT, BDOORHB_PORT, Status
    from twisted_vmtools.codecs.registers import BDOORHB_CMD_MESSAGE, CMD_MESSAGE, pack16

    return ExchangeWords(
        BDOOR_PORT, BDOORHB_PORT, 1, 2, pack16(1, CMD_MESSAGE), pack16(3, CMD_MESSAGE), pack16(5, CMD_MESSAGE),
        pack16(1, BDOORHB_CMD_MESSAGE), Status.SUCCESS, Status.DORECV, Status.HB, 1,
    )


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
@pytest.mark.slow
def test_extension_builds(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "setup.py",
            "-q",
            "build_ext",
            "--build-lib",
            str(tmp_path / "lib"),
            "--build-temp",
            str(tmp_path / "tmp"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "lib" / "twisted_vmtools").glob("_backdoor*.so"))
