"""`vmtools-sim` and `vmtools-rpctool` against a real `vmtools-sim serve` with no guest: arguments are
bytes (also when they are not UTF-8), and a command for a guest that is not there fails at once."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # processes: see pyproject.toml's markers

REPO = Path(__file__).resolve().parents[2]
SIM = [sys.executable, "-m", "twisted_vmtools.vmx.cli"]
RPCTOOL = [sys.executable, "-m", "twisted_vmtools.rpctool"]


def run(*argv: str | bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, capture_output=True, timeout=60, cwd=REPO)


@pytest.fixture
def sock(tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "vmx.sock"
    process = subprocess.Popen([*SIM, "serve", "--socket", str(path)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not path.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.exists(), "the simulator did not start"
        yield str(path)
    finally:
        process.terminate()
        process.wait(30)


def test_guestinfo_values_and_keys_that_are_not_utf8_go_through_as_bytes(sock: str) -> None:
    assert run(*SIM, "guestinfo", "--socket", sock, "set", "guestinfo.bin", b"caf\xe9").returncode == 0
    got = run(*SIM, "guestinfo", "--socket", sock, "get", "guestinfo.bin")
    assert (got.returncode, got.stdout, got.stderr) == (0, b"caf\xe9\n", b"")
    assert run(*SIM, "guestinfo", "--socket", sock, "set", b"guestinfo.k\xff", b"\xfe").returncode == 0
    assert run(*SIM, "guestinfo", "--socket", sock, "get", b"guestinfo.k\xff").stdout == b"\xfe\n"
    # The guest's side reads the very same bytes, and sets them the same way.
    assert run(*RPCTOOL, "-t", f"unix:{sock}", b"info-get guestinfo.k\xff").stdout == b"\xfe\n"
    assert run(*RPCTOOL, "-t", f"unix:{sock}", b"info-set guestinfo.rpc \xe9").returncode == 0
    assert run(*SIM, "guestinfo", "--socket", sock, "get", "guestinfo.rpc").stdout == b"\xe9\n"
    unset = run(*SIM, "guestinfo", "--socket", sock, "set", "guestinfo.bin")
    assert (unset.returncode, unset.stderr) == (2, b"vmtools-sim: guestinfo takes get KEY or set KEY VALUE\n")
    assert run(*RPCTOOL, "-t", f"unix:{sock}", b"info-set guestinfo.esc \x1b[2Jtwo\nlines").returncode == 0
    status = run(*SIM, "status", "--socket", sock)
    assert status.returncode == 0 and b"guestinfo.k\\xff" in status.stdout and b"Traceback" not in status.stderr
    assert b" \\x1b[2Jtwo\\nlines\n" in status.stdout and b"\x1b" not in status.stdout  # one line, no escape code


def test_tclo_without_a_guest_says_so_at_once(sock: str) -> None:
    started = time.monotonic()
    sent = run(*SIM, "tclo", "--socket", sock, b"ping \xe9")
    assert (sent.returncode, sent.stdout) == (1, b"")
    assert sent.stderr == b"vmtools-sim: no guest is connected to the simulator\n"
    assert time.monotonic() - started < 25  # not the 30 s timeout: nothing waits for a guest


def test_log_shows_text_with_escapes_and_numbers_guest_channels_only(sock: str) -> None:
    for _ in range(3):
        run(*SIM, "status", "--socket", sock)  # control connections: no channel number
    assert run(*RPCTOOL, "-t", f"unix:{sock}", b"info-set guestinfo.log a\tb\xff").returncode == 0
    log = run(*SIM, "log", "--socket", sock, "--last", "100").stdout.decode()
    request = next(line for line in log.splitlines() if "guestinfo.log" in line)
    assert request.endswith("guest→VMX RPCI rpci#1: info-set guestinfo.log a\\tb\\xff")
    assert "b'" not in log and {line.split()[3] for line in log.splitlines()} == {"rpci#1:"}
