"""`vmtools-sim run`'s private directory, and the ones killed runs left behind.

Each run holds an exclusive flock on `owner.lock` inside its directory for
as long as it lives; the kernel drops the lock when the process dies, however
it dies (SIGKILL included), and a lock cannot be inherited by a reused pid.
So at the next start, a directory of ours whose lock can be taken belongs to
nobody, and is removed.  Directories of other users, symbolic links, and
anything whose owner is alive are never touched.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

PREFIX = "vmtools-sim-"
LOCK = "owner.lock"
SOCKET = "vmx.sock"


@contextmanager
def run_directory(base: str | None = None) -> Iterator[str]:
    """A fresh 0700 directory under `base` (the temporary directory),
    removed on exit; abandoned ones are removed first."""
    base = base or tempfile.gettempdir()
    remove_abandoned(base)
    directory = tempfile.mkdtemp(prefix=PREFIX, dir=base)
    lock = os.open(os.path.join(directory, LOCK), os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        os.close(lock)


def remove_abandoned(base: str) -> list[str]:
    """Remove the run directories under `base` whose owner process is dead."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(PREFIX):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            continue
        if _abandoned(entry.path):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    return removed


def _abandoned(directory: str) -> bool:
    try:
        lock = os.open(os.path.join(directory, LOCK), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return _abandoned_without_lock(directory)
    except OSError:
        return False
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: its run is alive
    finally:
        os.close(lock)
    return True


def _abandoned_without_lock(directory: str) -> bool:
    """A directory from a version without the lock: abandoned if it holds
    only the simulator's socket and nobody listens on it.  (An empty one may
    be a run between mkdtemp and its lock: left alone.)"""
    try:
        names = os.listdir(directory)
    except OSError:
        return False
    if names != [SOCKET]:
        return False
    path = os.path.join(directory, SOCKET)
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError as exc:
            return exc.errno == errno.ECONNREFUSED
    return False
