"""A user's mistakes with sockets, endpoints and options: one sentence on stderr, the table's exit code, no hang."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from tests.support import Harness, PumpEndpoint, failure_of, result_of
from twisted_vmtools import rpctool
from twisted_vmtools.exit_codes import MEANINGS, CannotListen, ExitCode, UsageError
from twisted_vmtools.tap import Options
from twisted_vmtools.vmx import cli

REPO = Path(__file__).resolve().parent.parent
LONG = "/tmp/" + "x" * 110 + ".sock"  # over sun_path's 108 bytes
SIM = [sys.executable, "-m", "twisted_vmtools.vmx.cli"]
RPCTOOL = [sys.executable, "-m", "twisted_vmtools.rpctool"]
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback TCP port something already listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        yield taken.getsockname()[1]


def vmtools_sim(*argv: str) -> int:
    """``vmtools-sim ARGV`` in this process, on a memory reactor: its exit code."""
    try:
        return result_of(ensureDeferred(cli._main(MemoryReactorClock(), list(argv))))
    except SystemExit as exit:  # argparse
        return int(exit.code or 0)


def one_sentence(stderr: str, prog: str) -> str:
    lines = [line for line in stderr.splitlines() if not line.startswith(("usage:", " "))]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(prog) and "Traceback" not in stderr and "__init__" not in stderr, stderr
    return lines[0]


# -- vmtools-sim, in this process


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["serve", "--", "true"], "only with --trap"),
        (["serve", "--trap"], "needs the program"),
        (["serve", "--socket", "tcp:localhost"], "port must be a number"),
        (["serve", "--socket", LONG], "at most 107"),
        (["serve", "--socket", "unix:"], "names no socket path"),
        (["serve", "--socket", "tcp:port=1:interface=0.0.0.0"], "--allow-remote"),
        (["serve", "--socket", "/tmp/x.sock", "--socket-group", "no-such-group-here"], "no group named"),
        (["demo", "--socket", LONG], "at most 107"),
        (["status", "--socket", LONG], "at most 107"),
        (["tclo", "--socket", LONG, "ping"], "at most 107"),
        (["guestinfo", "--socket", LONG, "get", "guestinfo.x"], "at most 107"),
        (["log", "--socket", LONG], "at most 107"),
        (["power", "reboot", "--socket", LONG], "at most 107"),
        (["guest", "ls", "--socket", LONG, "/"], "at most 107"),
        (["status", "--socket", "tcp::1234"], "names no host"),
        (["status", "--socket", "tcp:localhost:99999"], "from 1 to 65535"),
        (["status", "--socket", "tcp:8000"], "names only a port"),
        (["guestinfo", "set", "guestinfo.x"], "set KEY VALUE"),
        (["guestinfo", "get", "guestinfo.x", "extra"], "get KEY"),
        (["run"], "give the program to run"),
    ],
)
def test_usage_mistakes_exit_2(argv: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert vmtools_sim(*argv) == ExitCode.USAGE
    assert said in one_sentence(capsys.readouterr().err, "vmtools-sim")


def test_a_missing_directory_cannot_be_listened_in(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    where = str(tmp_path / "missing" / "dir" / "vmx.sock")
    for command in ("serve", "demo"):
        assert vmtools_sim(command, "--socket", where) == ExitCode.CANNOT_LISTEN
        said = one_sentence(capsys.readouterr().err, "vmtools-sim")
        assert f"cannot listen at {where}: No such file or directory" in said


@pytest_twisted.ensureDeferred
async def test_nothing_at_the_address_is_unreachable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from twisted.internet import reactor

    done = await cli._main(reactor, ["status", "--socket", str(tmp_path / "none.sock")])
    assert done == ExitCode.UNREACHABLE
    assert "no simulator at" in one_sentence(capsys.readouterr().err, "vmtools-sim")


def test_a_tcp_port_in_use_fails_at_once(busy_port: int) -> None:
    """The simulator raises CannotListen from startService: nobody is told it listens."""
    from twisted.internet import reactor

    from twisted_vmtools.vmx.simulator import SimulatorService

    for where in (f"tcp:port={busy_port}:interface=127.0.0.1", f"tcp:127.0.0.1:{busy_port}"):
        simulator = SimulatorService(reactor, where)  # type: ignore[arg-type]
        with pytest.raises(CannotListen, match="Address already in use"):
            simulator.startService()
        assert not simulator.running


def test_guest_verbs_usage_mistakes_are_usage_errors() -> None:
    from twisted_vmtools.vmx.guest_verbs import parse_login

    for login, said in ((None, "no guest login"), ("nocolon", "user:password"), (":pw", "user:password")):
        with pytest.raises(UsageError, match=said) as refused:
            parse_login(login)
        assert refused.value.exit_code == ExitCode.USAGE


def test_a_socket_where_no_simulator_answers_fails_in_time() -> None:
    """Something listens but says nothing (not a simulator): the client gives up, it does not hang."""
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.task import Clock

    from twisted_vmtools.vmx.control import ANSWER_TIMEOUT, NoAnswer, connect_control

    clock = Clock()
    mute = PumpEndpoint(Factory.forProtocol(Protocol))
    connecting = ensureDeferred(connect_control(mute, clock=clock))
    mute.flush()
    assert not connecting.called
    clock.advance(ANSWER_TIMEOUT)
    failure = failure_of(connecting)
    assert failure.check(NoAnswer) and "nothing answered within 10 s" in str(failure.value)
    mute.flush()
    assert mute.pumps == []  # the connection was dropped


def test_a_simulator_answers_at_once() -> None:
    from twisted_vmtools.vmx.control import ControlClient, connect_control

    harness = Harness()
    connecting = ensureDeferred(connect_control(harness.endpoint, clock=harness.clock))
    harness.endpoint.flush()
    assert isinstance(result_of(connecting), ControlClient)
    harness.clock.advance(60)  # the timeout was cancelled: nothing fires later


# -- vmtools-rpctool and twistd vmtools' options, in this process


@pytest.mark.parametrize(
    ("transport", "said"),
    [("unix:", "names no socket path"), ("tcp::1234", "names no host"), ("tcp:localhost:99999", "from 1 to 65535"),
     ("tcp:nonsense", "names no port"), (f"unix:{LONG}", "at most 107"), ("carrier-pigeon", "unknown transport")],
)
def test_rpctool_refuses_a_transport_at_parse_time(
    transport: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit:
        rpctool.build_parser().parse_args(["--transport", transport, "info-get x"])
    assert exit.value.code == ExitCode.USAGE
    assert said in one_sentence(capsys.readouterr().err, "vmtools-rpctool")


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--socket", "/tmp/x.sock"], "use it with --simulate"),
        (["--simulate", "--transport", "unix:/tmp/x.sock"], "exclude each other"),
        (["--primary-ip", "notanip", "--transport", "unix:/tmp/x.sock"], "not an IP address"),
        (["--transport", "unix:"], "names no socket path"),
        (["--transport", "tcp::1234"], "names no host"),
        (["--transport", "tcp:localhost:99999"], "from 1 to 65535"),
        (["--transport", f"unix:{LONG}"], "at most 107"),
        (["--simulate", "--socket", LONG], "at most 107"),
        (["--simulate", "--socket", "tcp:localhost"], "port must be a number"),
        (["--simulate", "--socket", "tcp:0"], "other than 0"),
        (["--guestinfo-interval", "nan"], "not a number of seconds"),
        (["--guestinfo-interval", "-1"], "not a number of seconds"),
        (["--guestinfo-interval", "inf"], "not a number of seconds"),
    ],
)
def test_twistd_options_refused(argv: list[str], said: str) -> None:
    with pytest.raises(usage.UsageError, match=re.escape(said)):
        Options().parseOptions(argv)


def test_twistd_options_kept() -> None:
    options = Options()
    options.parseOptions(["--primary-ip", "2001:db8::0001", "--transport", "tcp:127.0.0.1:5000"])
    assert options["primary-ip"] == "2001:db8::1"
    simulate = Options()
    simulate.parseOptions(["--simulate", "--socket", "tcp:port=5000:interface=127.0.0.1"])
    assert simulate["transport"] is None


def test_under_twistd_a_usage_error_is_one_sentence_and_exit_2(capfd: pytest.CaptureFixture[str]) -> None:
    options = Options()
    options.parent = usage.Options()  # type: ignore[attr-defined]  # what twistd's ServerOptions sets
    with pytest.raises(SystemExit) as exit:
        options.parseOptions(["--primary-ip", "notanip"])
    assert exit.value.code == ExitCode.USAGE
    assert capfd.readouterr().err == "twistd vmtools: --primary-ip 'notanip' is not an IP address\n"


def test_twistd_simulate_where_it_cannot_listen(tmp_path: Path, busy_port: int, capfd: pytest.CaptureFixture[str]
                                                 ) -> None:
    from twisted.internet import reactor

    from twisted_vmtools.tap import makeService

    missing = Options()
    missing.parseOptions(["--simulate", "--socket", str(tmp_path / "missing" / "dir" / "vmx.sock")])
    with pytest.raises(SystemExit) as exit:
        makeService(missing, MemoryReactorClock())
    assert exit.value.code == ExitCode.CANNOT_LISTEN
    assert "cannot listen at" in one_sentence(capfd.readouterr().err, "twistd vmtools")

    busy = Options()
    busy.parseOptions(["--simulate", "--socket", f"tcp:port={busy_port}:interface=127.0.0.1"])
    pidfile = tmp_path / "twistd.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    busy.parent = {"nodaemon": True, "pidfile": str(pidfile)}  # type: ignore[assignment]  # twistd's config
    service = makeService(busy, reactor)
    with pytest.raises(SystemExit) as exit:
        service.privilegedStartService()  # where twistd listens
    assert exit.value.code == ExitCode.CANNOT_LISTEN
    assert "Address already in use" in one_sentence(capfd.readouterr().err, "twistd vmtools")
    assert not pidfile.exists()  # twistd removes it only after an Exception; we exit


def test_python_m_says_its_own_name(capfd: pytest.CaptureFixture[str]) -> None:
    from twisted_vmtools.__main__ import VMTOOLS

    options = VMTOOLS.options()
    options.parent = usage.Options()  # type: ignore[attr-defined]
    with pytest.raises(SystemExit) as exit:
        options.parseOptions(["--simulate", "--transport", "backdoor"])
    assert exit.value.code == ExitCode.USAGE
    assert capfd.readouterr().err.startswith("python -m twisted_vmtools: --transport and --simulate exclude")


# -- the table


def test_the_readme_has_the_one_table_of_exit_codes() -> None:
    readme = (REPO / "README.md").read_text()
    for code in ExitCode:
        assert re.search(rf"^\| {int(code)} \| `{code.name}` \|", readme, re.MULTILINE), code
    assert set(MEANINGS) == set(ExitCode)


# -- as real processes: each must end at once, one sentence


def run(argv: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=cwd)


@pytest.mark.slow
def test_serve_and_twistd_on_a_port_in_use(busy_port: int, tmp_path: Path) -> None:
    where = f"tcp:port={busy_port}:interface=127.0.0.1"
    served = run([*SIM, "serve", "--socket", where])
    assert served.returncode == ExitCode.CANNOT_LISTEN
    said = one_sentence(served.stderr, "vmtools-sim")
    assert said == f"vmtools-sim: cannot listen at {where}: Address already in use"
    twistd = run([*TWISTD, "vmtools", "--simulate", "--socket", where], cwd=tmp_path)
    assert twistd.returncode == ExitCode.CANNOT_LISTEN
    assert f"twistd vmtools: cannot listen at {where}: Address already in use" in twistd.stderr
    assert "Traceback" not in twistd.stderr + twistd.stdout and "listening" not in twistd.stderr + twistd.stdout
    assert list(tmp_path.iterdir()) == []  # no twistd.pid left behind


@pytest.mark.slow
def test_clients_with_a_socket_path_too_long_end_at_once() -> None:
    status = run([*SIM, "status", "--socket", LONG])
    assert status.returncode == ExitCode.USAGE and "at most 107" in one_sentence(status.stderr, "vmtools-sim")
    tool = run([*RPCTOOL, "-t", f"unix:{LONG}", "info-get guestinfo.ip"])
    assert tool.returncode == ExitCode.USAGE and "at most 107" in one_sentence(tool.stderr, "vmtools-rpctool")
    twistd = run([*TWISTD, "vmtools", "--transport", f"unix:{LONG}"])
    assert twistd.returncode == ExitCode.USAGE
    assert "at most 107" in one_sentence(twistd.stderr, "twistd vmtools")
