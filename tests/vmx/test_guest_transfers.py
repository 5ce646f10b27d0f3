"""`vmtools-sim guest upload|download` against `twistd vmtools`, two real processes over a Unix socket."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import REPO, SIM, TWISTD, running, simulated_guest, start_simulator, stop, wait_for
from tests.test_archive import make_tree, snapshot

pytestmark = pytest.mark.slow
LOGIN = "anyone:anything"  # the guests accept any login (--auth none) and act as the user running the tests

@pytest.fixture(scope="module")
def vmx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One simulator and one guest for the module: transfers are what is tested, not start-up."""
    base = tmp_path_factory.mktemp("transfers")
    with simulated_guest(base, "--transfer-state", str(base / "state"), "--auth", "none") as path:
        yield path


def guest(
    socket_path: Path, verb: str, *args: str, check: bool = True, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*SIM, "guest", verb, "--socket", str(socket_path), "-l", LOGIN, *args],
                          capture_output=True, timeout=300, check=check, cwd=REPO, input=stdin)


def digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


@pytest.mark.parametrize("size", [0, 1, 520_192 - 1, 520_192 + 1, 100 << 20])
def test_random_file_round_trip(vmx: Path, tmp_path: Path, size: int) -> None:
    src = tmp_path / "src.bin"
    with open(src, "wb") as f:
        remaining = size
        while remaining:
            f.write(os.urandom(min(remaining, 1 << 20)))
            remaining -= min(remaining, 1 << 20)
    inside = tmp_path / "in-guest.bin"
    guest(vmx, "upload", str(src), str(inside))
    assert digest(inside) == digest(src)
    back = tmp_path / "back.bin"
    guest(vmx, "download", str(inside), str(back))
    assert digest(back) == digest(src)


def test_overwrite_needs_force(vmx: Path, tmp_path: Path) -> None:
    (tmp_path / "new").write_bytes(b"new")
    (tmp_path / "old").write_bytes(b"old")
    refused = guest(vmx, "upload", str(tmp_path / "new"), str(tmp_path / "old"), check=False)
    assert refused.returncode == 1 and refused.stderr.count(b"\n") == 1
    assert b"exists in the guest (-f to overwrite)" in refused.stderr
    assert (tmp_path / "old").read_bytes() == b"old"
    guest(vmx, "upload", "-f", str(tmp_path / "new"), str(tmp_path / "old"))
    assert (tmp_path / "old").read_bytes() == b"new"
    refused = guest(vmx, "download", str(tmp_path / "new"), str(tmp_path / "old"), check=False)
    assert refused.returncode == 1 and b"-f to overwrite" in refused.stderr


def test_directory_round_trip_and_pipes(vmx: Path, tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    guest(vmx, "upload", str(tmp_path / "src"), str(tmp_path / "in-guest"))
    assert snapshot(tmp_path / "in-guest") == snapshot(tmp_path / "src")
    guest(vmx, "download", str(tmp_path / "in-guest"), str(tmp_path / "back"))
    assert snapshot(tmp_path / "back") == snapshot(tmp_path / "src")
    piped = guest(vmx, "download", str(tmp_path / "src" / "a.txt"), "-")
    assert piped.stdout == b"alpha" and not piped.stderr  # no progress bar when piped
    guest(vmx, "upload", "-", str(tmp_path / "from-stdin"), stdin=b"through a pipe")
    assert (tmp_path / "from-stdin").read_bytes() == b"through a pipe"


def test_upload_cut_off_by_a_crash_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    """SIGKILL the guest in the middle of an upload; its restart removes the temporary."""
    socket_path, state = tmp_path / "vmx.sock", tmp_path / "state"
    target = tmp_path / "target.bin"
    target.write_bytes(b"the old file")
    source = tmp_path / "source.bin"
    with open(source, "wb") as f:
        for _ in range(200):
            f.write(os.urandom(1 << 20))

    def start_guest() -> subprocess.Popen[bytes]:
        with open(tmp_path / "guest.log", "ab") as out:
            return subprocess.Popen(
                [*TWISTD, "vmtools", "--transport", f"unix:{socket_path}", "--guestinfo-interval", "0",
                 "--transfer-state", str(state), "--auth", "none"],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            )

    def temporaries() -> list[Path]:
        return [p for p in tmp_path.iterdir() if p.name.startswith(".target.bin.vmtools-upload-")]

    simulator = start_simulator(socket_path)
    guest_process = start_guest()
    try:
        wait_for(lambda: running(socket_path), "the guest tools running")
        upload = subprocess.Popen([*SIM, "guest", "upload", "--socket", str(socket_path), "-l", LOGIN, "-f",
                                   str(source), str(target)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
        wait_for(lambda: temporaries() and temporaries()[0].stat().st_size > (8 << 20), "the upload under way")
        guest_process.kill()
        guest_process.wait()
        assert upload.wait(60) == 1
        assert temporaries() and target.read_bytes() == b"the old file"  # the crash left its temporary
        guest_process = start_guest()
        wait_for(lambda: not temporaries(), "the restarted guest removing the temporary")
        assert target.read_bytes() == b"the old file"
    finally:
        stop(guest_process)
        stop(simulator)
