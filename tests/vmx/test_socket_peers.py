"""Against a real `vmtools-sim serve`: another user is kept off the control channel by the kernel's word."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from twisted_vmtools.codecs.stream import StreamKind

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user"),
]

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


def amp_box(**pairs: bytes) -> bytes:
    out = b""
    for key, value in pairs.items():
        out += struct.pack(">H", len(key)) + key.encode() + struct.pack(">H", len(value)) + value
    return out + b"\x00\x00"


STATUS = StreamKind.CONTROL.preamble + amp_box(_command=b"Status", _ask=b"1")


@pytest.fixture
def simulator() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="vmtools-sim-peers-"))
    os.chmod(directory, 0o755)  # everyone may reach the socket's directory; the socket decides
    path = directory / "vmx.sock"
    process = subprocess.Popen([sys.executable, "-m", "twisted_vmtools.vmx.cli", "serve", "--socket", str(path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        yield path
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(directory, ignore_errors=True)


def ask_status(path: Path, uid: int) -> tuple[str, bytes]:
    """Connect as ``uid`` (in a forked child), ask for the status; what came back."""
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - reports through the pipe only
        outcome, data = "error", b""
        try:
            if uid != os.geteuid():
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(10)
                sock.connect(str(path))
                sock.sendall(STATUS)
                data = sock.recv(65536)
                outcome = "answered" if data else "closed"
        except PermissionError:
            outcome = "permission"
        except BaseException as error:
            outcome, data = "error", repr(error).encode()
        finally:
            os.write(writer, outcome.encode() + b"\n" + data[:200])
            os._exit(0)
    os.close(writer)
    os.waitpid(child, 0)
    with os.fdopen(reader, "rb") as pipe:
        word, _, answer = pipe.read().partition(b"\n")
    return word.decode(), answer


def test_the_owner_is_answered_another_user_cannot_connect(simulator: Path) -> None:
    assert ask_status(simulator, os.geteuid())[0] == "answered"
    assert ask_status(simulator, NOBODY)[0] == "permission"


def test_even_on_a_world_writable_socket_another_user_gets_no_control(simulator: Path) -> None:
    os.chmod(simulator, 0o666)  # the file's mode undone: SO_PEERCRED still stands
    outcome, data = ask_status(simulator, NOBODY)
    assert outcome == "closed", (outcome, data)
    assert ask_status(simulator, os.geteuid())[0] == "answered"
