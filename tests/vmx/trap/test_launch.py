"""The sandbox launcher used on its own: the same three processes, then CMD untraced."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow  # processes: see pyproject.toml's markers

LAUNCH = [sys.executable, "-m", "twisted_vmtools.vmx.trap.launch"]


def launch(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAUNCH, *args], capture_output=True, text=True, timeout=timeout)


def test_standalone_launcher_execs_sandboxed() -> None:
    result = launch("--", "grep", "-E", "^(Seccomp|NoNewPrivs|CapBnd):", "/proc/self/status")
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(":\t") for line in result.stdout.splitlines())
    assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2"
    bounding = int(fields["CapBnd"], 16)
    assert bounding & ~0x200004FF == 0  # the allow-list, at most (capabilities.KEPT_CAPABILITIES)


def test_the_program_is_pid_2_under_a_private_init() -> None:
    result = launch("--", "sh", "-c", 'echo $$ $PPID; ls /proc | grep -c "^[0-9]"')
    assert result.returncode == 0, result.stderr
    pids, count = result.stdout.splitlines()
    assert pids == "2 1"
    assert int(count) <= 4  # init, sh, ls, grep: nothing of the host


def test_exit_status_passes_through() -> None:
    assert launch("--", "sh", "-c", "exit 7").returncode == 7
    assert launch("--", "sh", "-c", "kill -USR1 $$").returncode == 128 + 10
    missing = launch("--", "/nonexistent/program")
    assert missing.returncode == 127 and "No such file" in missing.stderr


def test_bad_options_are_refused() -> None:
    assert launch("--network", "bogus", "--", "true").returncode == 2
    assert launch("--").returncode == 2


def test_private_network_has_only_loopback_up() -> None:
    result = launch("--network", "private", "--", "cat", "/proc/net/dev")
    assert result.returncode == 0, result.stderr
    interfaces = [line.split(":")[0].strip() for line in result.stdout.splitlines()[2:]]
    assert interfaces == ["lo"]
    up = launch("--network", "private", "--", "cat", "/sys/class/net/lo/operstate", "/sys/class/net/lo/flags")
    assert int(up.stdout.split()[1], 16) & 1  # IFF_UP


def test_killing_the_launcher_ends_the_namespace(tmp_path) -> None:
    marker = tmp_path / "started"
    launcher = subprocess.Popen([*LAUNCH, "--", "sh", "-c", f"sleep 60 & touch {marker}; wait"])
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists()
    sleepers = _children_of_tree(launcher.pid)
    assert len(sleepers) == 4  # the launcher, the init, sh, sleep
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in sleepers) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(_alive(pid) for pid in sleepers)


def _children_of_tree(root: int) -> list[int]:
    tree, queue = [root], [root]
    while queue:
        pid = queue.pop()
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                children = [int(child) for child in f.read().split()]
        except OSError:
            continue
        tree += children
        queue += children
    return tree


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_unprivileged_user_gets_the_same_walls_through_a_user_namespace() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to become an unprivileged user")
    if shutil.which("setpriv") is None:
        pytest.skip("no setpriv (util-linux)")
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]
    if subprocess.run([*drop, *LAUNCH[:-2], "-c", "import twisted_vmtools"], capture_output=True).returncode:
        pytest.skip("the interpreter or the package is not readable by nobody here")
    script = 'echo $$; grep -E "^(Seccomp|NoNewPrivs):" /proc/self/status; ls -A /run/dbus | wc -l'
    result = subprocess.run([*drop, *LAUNCH, "--", "sh", "-c", script], capture_output=True, text=True, timeout=20)
    if "user namespace" in result.stderr:
        assert result.returncode == 126  # refused, nothing run
        pytest.skip("this kernel refuses unprivileged user namespaces")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "NoNewPrivs:", "1", "Seccomp:", "2", "0"]
