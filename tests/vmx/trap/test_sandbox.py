"""Attacks on the sandbox from a traced program (programs/attacks.py): none gets through.

docs/security.md lists what each wall is for; every item there has its
attempt here.  Each attack is harmless if it succeeded (see attacks.py), and
each test shows first that its target is reachable from outside, so that it
could fail.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from twisted_vmtools.vmx.trap.engine import TrapEngine

pytestmark = pytest.mark.slow  # processes: see pyproject.toml's markers

ATTACKS = str(Path(__file__).parent / "programs" / "attacks.py")


def attack(host, tmp_path: Path, *args: str, timeout: float = 30) -> tuple[int, dict[str, str]]:
    out = tmp_path / "attack.out"
    with out.open("wb") as stdout:
        engine = TrapEngine(host, timeout=timeout, stdout=stdout.fileno())
        status = engine.run([sys.executable, ATTACKS, *args])
    results = dict(line.split(" ", 1) for line in out.read_text().splitlines())
    assert results, "the attack program reported nothing"
    return status, results


def refused(results: dict[str, str]) -> dict[str, str]:
    assert not [name for name, result in results.items() if "ESCAPED" in result], results
    return {name: result.removeprefix("refused ") for name, result in results.items()}


@pytest.fixture
def victim() -> Iterator[int]:
    """An unsandboxed process of ours, outside the traced tree."""
    process = subprocess.Popen(["sleep", "60"])
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


def test_ptrace_escape(host, tmp_path, victim):
    # Reachable from outside: we could open its memory.
    os.close(os.open(f"/proc/{victim}/mem", os.O_RDWR))
    status, results = attack(host, tmp_path, "ptrace", str(victim))
    assert status == 0
    errors = refused(results)
    # The seccomp filter refuses the calls; the PID namespace hides the pid;
    # the private init is out of reach (Landlock domain, non-dumpable).
    assert errors["ptrace-seize-victim"] == errors["ptrace-seize-init"] == "EPERM"
    assert errors["process-vm-readv-victim"] == errors["process-vm-writev-victim"] == "EPERM"
    assert errors["proc-mem-victim"] == "ENOENT"
    assert errors["proc-mem-init"] in ("EACCES", "EPERM")
    assert "TracerPid:\t0" in Path(f"/proc/{victim}/status").read_text()


def test_vsock_mask_cannot_be_undone(host, tmp_path):
    status, results = attack(host, tmp_path, "vsock", str(tmp_path))
    assert status == 0
    errors = refused(results)
    assert errors["umount2-dev-vsock"] == "EPERM"
    assert errors["mknod-10-258"] == "EPERM"
    assert errors["socket-af-vsock"] == "EAFNOSUPPORT"
    assert not (tmp_path / "vsock-node").exists()


HIDDEN = ("/run/systemd", "/run/dbus")
WELL_KNOWN = (
    "/run/systemd/private",
    "/run/systemd/notify",
    "/run/dbus/system_bus_socket",
    "/var/run/dbus/system_bus_socket",
    "/run/initctl",
    "@/org/freedesktop/systemd1/private",
)


def _address(target: str) -> str:
    return "\0" + target[1:] if target.startswith("@") else target


@pytest.fixture
def fake_init() -> Iterator[list[str]]:
    """Listening sockets where an init or a bus listens: in the hidden
    directories that exist here, and abstract ones like systemd's."""
    tag = f"vmtools-sandbox-test-{os.getpid()}"
    paths = [os.path.join(directory, tag) for directory in HIDDEN if os.path.isdir(directory)]
    wanted = [(path, socket.SOCK_STREAM) for path in paths]
    abstract = f"@/org/freedesktop/{tag}"
    wanted += [(f"{abstract}-stream", socket.SOCK_STREAM), (f"{abstract}-dgram", socket.SOCK_DGRAM)]
    listeners: list[socket.socket] = []
    try:
        for target, kind in wanted:
            listener = socket.socket(socket.AF_UNIX, kind)
            listeners.append(listener)
            listener.bind(_address(target))
            if kind == socket.SOCK_STREAM:
                listener.listen()
            with socket.socket(socket.AF_UNIX, kind) as probe:  # reachable from outside the sandbox
                probe.connect(_address(target))
            if kind == socket.SOCK_STREAM:
                listener.accept()[0].close()
            listener.setblocking(False)
        yield [target for target, _kind in wanted]
        for listener in listeners:
            if listener.type == socket.SOCK_STREAM:
                with pytest.raises(BlockingIOError):
                    listener.accept()  # nobody inside got through
    finally:
        for listener in listeners:
            listener.close()
        for path in paths:
            if os.path.exists(path):
                os.unlink(path)


def test_host_init_and_dbus_are_unreachable(host, tmp_path, fake_init):
    status, results = attack(host, tmp_path, "init-sockets", *fake_init, *WELL_KNOWN)
    assert status == 0
    errors = refused(results)
    for name, error in errors.items():
        target = name.split("-", 2)[2]
        if target.startswith("@"):
            # Landlock's scope (EPERM), or an empty private network namespace.
            assert error in ("EPERM", "ECONNREFUSED"), (name, error)
        else:
            assert error == "ENOENT", (name, error)  # hidden by the mount namespace


def test_the_tracer_cannot_be_signalled(host, tmp_path):
    # The program tries to stop its tracer (this very process), then waits:
    # the engine's timeout still fires.
    status, results = attack(host, tmp_path, "signal-tracer", str(os.getpid()), timeout=2)
    assert status == 128 + signal.SIGTERM  # the timeout's SIGTERM ended it
    errors = refused(results)
    assert errors["kill-0-tracer"] in ("ESRCH", "EPERM")
    assert errors["sigstop-tracer"] == errors["kill-0-tracer"]


def test_power_and_kernel_files_are_read_only(host, tmp_path):
    status, results = attack(host, tmp_path, "machine-files")
    assert status == 0
    for name, error in refused(results).items():
        assert error in (errno.errorcode[errno.EROFS], "ENOENT", "EACCES"), (name, error)
    assert refused(results)["open-/sys/power/state"] in ("EROFS", "ENOENT")


def _running(executable: Path) -> bool:
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.readlink(f"/proc/{entry}/exe") == str(executable):
                return "\nState:\tZ" not in Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
    return False


def test_an_untraced_child_dies_with_the_namespace(host, tmp_path):
    # A clone with CLONE_UNTRACED escapes the tracer (not the sandbox); the
    # engine must neither hang on it nor leave it running.
    sleeper = tmp_path / "sleeper"
    sleeper.write_bytes(Path("/bin/sleep").read_bytes())
    sleeper.chmod(0o755)
    status, results = attack(host, tmp_path, "untraced-child", str(sleeper))
    assert status == 0
    assert results == {"clone-untraced": "ESCAPED"}  # it did start
    assert not _running(sleeper)
