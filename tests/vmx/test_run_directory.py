"""`vmtools-sim run`'s temporary directories: none survives a killed run past the next start."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from twisted_vmtools.vmx.run_directory import LOCK, PREFIX, remove_abandoned, run_directory


def _dirs(base: Path) -> list[Path]:
    return sorted(path for path in base.iterdir() if path.name.startswith(PREFIX))


def test_a_run_directory_is_private_locked_and_removed(tmp_path):
    with run_directory(str(tmp_path)) as directory:
        assert (os.stat(directory).st_mode & 0o777) == 0o700
        assert remove_abandoned(str(tmp_path)) == []  # its owner (we) is alive
        assert os.path.isdir(directory)
    assert _dirs(tmp_path) == []


def test_abandoned_directories_are_removed_live_and_foreign_ones_kept(tmp_path):
    dead = tmp_path / f"{PREFIX}dead"
    dead.mkdir()
    (dead / LOCK).touch()
    (dead / "vmx.sock").touch()
    live = tmp_path / f"{PREFIX}live"
    live.mkdir()
    (live / LOCK).touch()
    holder = os.open(live / LOCK, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another open file: as another process would
    foreign = tmp_path / f"{PREFIX}foreign"
    foreign.mkdir()
    (foreign / LOCK).touch()
    if os.geteuid() == 0:
        os.chown(foreign, 65534, 65534)
    link = tmp_path / f"{PREFIX}link"
    link.symlink_to(dead)
    other = tmp_path / "unrelated"
    other.mkdir()
    try:
        removed = remove_abandoned(str(tmp_path))
    finally:
        os.close(holder)
    assert removed == [str(dead)]
    expected = [foreign, link, live] if os.geteuid() == 0 else [link, live]
    assert _dirs(tmp_path) == sorted(expected)
    assert other.exists()


def test_directories_of_older_versions_go_only_with_a_dead_socket(tmp_path):
    old_dead = tmp_path / f"{PREFIX}old"
    old_dead.mkdir()
    with socket.socket(socket.AF_UNIX) as gone:
        gone.bind(str(old_dead / "vmx.sock"))  # bound, never listening: refused
    old_live = tmp_path / f"{PREFIX}served"
    old_live.mkdir()
    with socket.socket(socket.AF_UNIX) as serving:
        serving.bind(str(old_live / "vmx.sock"))
        serving.listen()
        empty = tmp_path / f"{PREFIX}starting"
        empty.mkdir()
        assert remove_abandoned(str(tmp_path)) == [str(old_dead)]
    assert _dirs(tmp_path) == sorted([old_live, empty])


@pytest.mark.slow
def test_a_killed_run_leaves_nothing_after_the_next_start(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    command = [sys.executable, "-m", "twisted_vmtools.vmx.cli", "run", "--"]
    killed = subprocess.Popen([*command, "sleep", "60"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not any((path / LOCK).exists() and (path / "vmx.sock").exists() for path in _dirs(tmp_path)):
        assert time.monotonic() < deadline and killed.poll() is None, "vmtools-sim run did not start"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (left,) = _dirs(tmp_path)  # SIGKILL: nothing could clean up
    subprocess.run([*command, "true"], env=env, check=True, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _dirs(tmp_path) == []
    assert not left.exists()
