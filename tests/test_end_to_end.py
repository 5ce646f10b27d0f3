"""`vmtools-sim serve` and `twistd -n vmtools` as real processes over a real Unix socket."""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import REPO, SIM, TWISTD, running, sim, start_simulator, status, stop, wait_for
from twisted_vmtools.codecs.datamap import VsockPacket, decode_packet
from twisted_vmtools.codecs.stream import StreamKind

pytestmark = pytest.mark.slow  # processes: see pyproject.toml's markers

GUEST_IP = "198.51.100.7"


def guest_command(transport: str) -> list[str]:
    return [*TWISTD, "vmtools", "--transport", transport, "--primary-ip", GUEST_IP, "--trace",
            "--guestinfo-interval", "1"]


def start_guest(path: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(guest_command(f"unix:{path}"), stdout=out, stderr=subprocess.STDOUT, cwd=REPO)


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "vmx.sock"


@pytest.fixture(params=["stream", "backdoor", "backdoor-low-bandwidth", "auto"])
def simulator_and_guest(request: pytest.FixtureRequest, socket_path: Path,
                        tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], ...]]:
    """The guest over the Unix socket, or trapped under the simulator using the real backdoor.

    ``auto`` under the trap engine also shows the fallback: the sandbox refuses
    AF_VSOCK, so the guest settles on the backdoor as open-vm-tools would.
    ``backdoor-low-bandwidth``: the VMX offers no ``rep insb/outsb`` transfers,
    so every message moves in 4-byte ``in`` calls.
    """
    if request.param == "stream":
        simulator = start_simulator(socket_path)
        guest = start_guest(socket_path, tmp_path / "guest.log")
    else:
        pytest.importorskip("twisted_vmtools._backdoor")
        transport, _, bandwidth = request.param.partition("-")
        simulator = start_simulator(socket_path, *guest_command(transport), log=tmp_path / "serve.log",
                                    low_bandwidth=bool(bandwidth))
        guest = simulator  # the simulator runs the guest under its trap engine
    try:
        yield simulator, guest
    finally:
        stop(guest)
        stop(simulator)


def raw_connection(path: Path, kind: bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    sock.sendall(kind)
    return sock


def read_packet(sock: socket.socket) -> VsockPacket:
    header = sock.recv(4, socket.MSG_WAITALL)
    (length,) = struct.unpack(">I", header)
    return decode_packet(header + sock.recv(length, socket.MSG_WAITALL))


def test_guest_and_simulator_processes(simulator_and_guest: tuple[subprocess.Popen[bytes], ...],
                                       socket_path: Path) -> None:
    simulator, guest = simulator_and_guest
    wait_for(lambda: running(socket_path), "the tools to run", timeout=60)
    wait_for(lambda: "guestinfo.vmtools.description" in status(socket_path), "the version announcement")
    assert sim("tclo", "--socket", str(socket_path), "Capabilities_Register").stdout == "OK \n"
    assert status(socket_path)["guest.toolsVersionStatus"] == "guestToolsUnmanaged"
    # Binary RPCI too: the guest's XDR NIC report (SetGuestInfo 10), decoded by the VMX.
    wait_for(lambda: bool(status(socket_path).get("guest.net")), "the guest's NIC report")
    assert status(socket_path)["guest.hostName"]

    assert sim("tclo", "--socket", str(socket_path), "Set_Option broadcastIP 1").stdout == "OK \n"
    assert status(socket_path)["guest.ipAddress"] == GUEST_IP
    # The guest reports every second (~16 records): the most records one answer holds, not a racy 20.
    log = sim("log", "--socket", str(socket_path), "--last", "100").stdout
    assert "VMX→guest TCLO" in log and f": info-set guestinfo.ip {GUEST_IP}" in log and "b'" not in log
    assert sim("tclo", "--socket", str(socket_path), "No_Such_Command").stdout == "ERROR Unknown Command\n"
    assert sim("tclo", "--socket", str(socket_path), "Set_Option broadcastIP").stdout.startswith("ERROR ")

    sim("guestinfo", "--socket", str(socket_path), "set", "guestinfo.e2e", "from the host")
    assert sim("guestinfo", "--socket", str(socket_path), "get", "guestinfo.e2e").stdout == "from the host\n"
    missing = sim("guestinfo", "--socket", str(socket_path), "get", "guestinfo.none", check=False)
    assert missing.returncode == 1 and "No value found" in missing.stderr

    # Garbage at the simulator: a bad preamble is dropped, a bad packet is answered.
    with raw_connection(socket_path, b"JUNK") as junk:
        assert junk.recv(1) == b""
    with raw_connection(socket_path, StreamKind.RPCI.preamble) as rpci:
        rpci.sendall(b"\x00\x00\x00\x04\xff\xff\xff\xff")
        assert read_packet(rpci).payload == b"0 malformed packet"
        rpci.sendall(VsockPacket.data(b"info-get guestinfo.e2e").encode())
        assert read_packet(rpci).payload == b"1 from the host"
        rpci.sendall(b"\x7f\xff\xff\xff")  # a length no sane packet has: the stream is lost
        assert rpci.recv(1) == b""

    # Garbage at the guest: binary junk as a TCLO command.
    junk_reply = sim("tclo", "--socket", str(socket_path), "\x01\x02 \x7f\x1b[0m").stdout
    assert junk_reply.startswith("ERROR ")

    assert simulator.poll() is None and guest.poll() is None
    assert sim("tclo", "--socket", str(socket_path), "ping").stdout == "OK \n"
    assert running(socket_path)


def test_guest_survives_the_simulator_restarting(socket_path: Path, tmp_path: Path) -> None:
    simulator = start_simulator(socket_path)
    guest = start_guest(socket_path, tmp_path / "guest.log")
    try:
        wait_for(lambda: running(socket_path), "the tools to run")
        stop(simulator)
        time.sleep(1.0)
        assert guest.poll() is None
        simulator = start_simulator(socket_path)
        wait_for(lambda: running(socket_path), "the tools to run again")
        assert sim("tclo", "--socket", str(socket_path), "ping").stdout == "OK \n"
    finally:
        stop(guest)
        stop(simulator)


def test_malformed_packets_from_a_vmx_do_not_kill_the_guest(socket_path: Path, tmp_path: Path) -> None:
    """A raw fake VMX sends the guest broken frames; the guest answers each and stays up."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.listen(4)
    listener.settimeout(20)
    guest = start_guest(socket_path, tmp_path / "guest.log")
    try:
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(10)
            preamble = connection.recv(4, socket.MSG_WAITALL)
            assert preamble == StreamKind.TCLO.preamble
            connection.sendall(b"\x00\x00\x00\x08\x00\x00\x00\x09\x00\x00\x00\x01")  # unknown field type
            assert read_packet(connection).payload == b"ERROR malformed packet"
            connection.sendall(b"\x00\x00\x00\x0c" + struct.pack(">III", 2, 2, 100))  # string runs past the end
            assert read_packet(connection).payload == b"ERROR malformed packet"
            connection.sendall(VsockPacket.data(b"ping").encode())
            assert read_packet(connection).payload == b"OK "
        assert guest.poll() is None
    finally:
        stop(guest)
        listener.close()
        os.unlink(socket_path)


def test_twistd_simulate_leaves_its_control_socket_up(socket_path: Path, tmp_path: Path) -> None:
    with open(tmp_path / "simulate.log", "wb") as out:
        process = subprocess.Popen(
            [*TWISTD, "vmtools", "--simulate", "--socket", str(socket_path), "--primary-ip", GUEST_IP],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
        )
    try:
        wait_for(lambda: socket_path.exists() and running(socket_path), "the embedded VMX to see the tools")
        assert sim("tclo", "--socket", str(socket_path), "Set_Option broadcastIP 1").stdout == "OK \n"
        assert status(socket_path)["guest.ipAddress"] == GUEST_IP
    finally:
        stop(process)


def test_over_tcp_on_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a free loopback port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    where = f"tcp:127.0.0.1:{port}"  # where clients connect, in clientFromString's words
    listen = f"tcp:port={port}:interface=127.0.0.1"  # the same place in serverFromString's
    # Over TCP the control channel needs the shared secret; serve and the CLI read the same file.
    secret = tmp_path / "secret"
    secret.write_text("correct horse battery staple\n")
    monkeypatch.setenv("VMTOOLS_SIM_SECRET_FILE", str(secret))
    simulator = subprocess.Popen([*SIM, "serve", "--socket", listen], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, cwd=REPO)
    with open(tmp_path / "guest.log", "wb") as out:
        guest = subprocess.Popen(guest_command(where), stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        def tcp_running() -> bool:
            done = sim("status", "--socket", where, "--json", check=False)
            return done.returncode == 0 and json.loads(done.stdout)["guest.toolsRunningStatus"] == "guestToolsRunning"

        wait_for(tcp_running, "the tools to run over TCP")
        assert sim("tclo", "--socket", where, "ping").stdout == "OK \n"
        secret.write_text("a wrong guess\n")
        refused = sim("status", "--socket", where, check=False)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        monkeypatch.delenv("VMTOOLS_SIM_SECRET_FILE")
        refused = sim("status", "--socket", where, check=False)
        assert refused.returncode != 0 and "shared secret" in refused.stderr
    finally:
        stop(guest)
        stop(simulator)


def test_serve_refuses_a_remote_address_without_allow_remote() -> None:
    done = sim("serve", "--socket", "tcp:0.0.0.0:1", check=False)
    assert done.returncode == 2 and "--allow-remote" in done.stderr and "Traceback" not in done.stderr


def test_the_socket_is_owner_only_even_under_umask_0(tmp_path: Path) -> None:
    path = tmp_path / "vmx.sock"
    old = os.umask(0)
    try:
        simulator = start_simulator(path)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert status(path)["guest.toolsRunningStatus"] == "guestToolsNotRunning"
    finally:
        stop(simulator)
    wait_for(lambda: not path.exists(), "the socket to be removed")


def test_rpctool_refuses_cleanly_outside_vmware() -> None:
    from twisted_vmtools.channels.detect import detected

    if detected().vmware:
        pytest.skip("this machine is a VMware VM")
    done = subprocess.run([sys.executable, "-m", "twisted_vmtools.rpctool", "info-get guestinfo.ip"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 3  # UNREACHABLE: not a VMware VM
    assert "Traceback" not in done.stderr and "--simulate" in done.stderr


def test_run_passes_the_exit_code_through_and_times_out() -> None:
    assert subprocess.run([*SIM, "run", "--", "sh", "-c", "exit 7"], timeout=60, cwd=REPO).returncode == 7
    started = time.monotonic()
    ended = subprocess.run([*SIM, "run", "--timeout", "1", "--", "sleep", "30"], timeout=60, cwd=REPO)
    assert ended.returncode == 143  # SIGTERM, as a shell reports it
    assert time.monotonic() - started < 20
