"""The simulator claims its socket path only from a dead simulator."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import cast

import pytest
import pytest_twisted
from twisted.internet.endpoints import TCP4ServerEndpoint

from twisted_vmtools.endpoint_strings import EndpointStringError
from twisted_vmtools.exit_codes import UsageError
from twisted_vmtools.vmx.private_socket import PrivateUNIXServerEndpoint
from twisted_vmtools.vmx.simulator import (
    RemoteListenError,
    SocketInUseError,
    claim_socket,
    server_endpoint,
    socket_path,
)


def test_a_regular_file_is_never_touched(tmp_path: Path) -> None:
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    with pytest.raises(SocketInUseError, match="not a socket"):
        claim_socket(str(precious))
    assert precious.read_text() == "keep me"


def test_a_live_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vmx.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen(1)
        with pytest.raises(SocketInUseError, match="already serving"):
            claim_socket(f"unix:{path}")
        assert path.exists()


def test_a_dead_simulators_socket_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "vmx.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # bound, never listening, then closed: what a killed process leaves
    claim_socket(str(path))
    assert not path.exists()
    claim_socket(str(path))  # nothing there: nothing to do


def test_socket_names() -> None:
    assert socket_path("/run/vmx.sock") == "/run/vmx.sock"
    assert socket_path("unix:/run/vmx.sock") == "/run/vmx.sock"
    assert socket_path("unix:path=/run/vmx.sock") == "/run/vmx.sock"
    assert socket_path("tcp:127.0.0.1:9999") is None
    with pytest.raises(EndpointStringError, match="the port must be a number"):
        server_endpoint(object(), "tcp:localhost")


def test_tcp_port_means_every_interface_as_in_twisted() -> None:
    """``tcp:PORT`` listens on every interface, as serverFromString has it: a remote listener."""
    with pytest.raises(RemoteListenError, match="--allow-remote"):
        server_endpoint(object(), "tcp:9999")
    endpoint = server_endpoint(object(), "tcp:9999", allow_remote=True)
    assert isinstance(endpoint, TCP4ServerEndpoint)
    assert (endpoint._port, endpoint._interface) == (9999, "")


@pytest.mark.parametrize("where", ["tcp:port=9999:interface=127.0.0.1", "tcp:127.0.0.1:9999", "tcp:9999:interface=::1"])
def test_loopback_tcp_needs_no_allow_remote(where: str) -> None:
    endpoint = server_endpoint(object(), where.replace("::1", "\\:\\:1"))
    assert isinstance(endpoint, TCP4ServerEndpoint) and endpoint._port == 9999


def test_a_unix_socket_always_goes_through_the_private_listener() -> None:
    for where in ("/run/x.sock", "unix:/run/x.sock", "unix:path=/run/x.sock", "unix:address=/run/x.sock:backlog=5"):
        endpoint = server_endpoint(object(), where, group=7)
        assert isinstance(endpoint, PrivateUNIXServerEndpoint)
        assert (endpoint.path, endpoint.group) == ("/run/x.sock", 7)
    with pytest.raises(EndpointStringError, match="0600"):
        server_endpoint(object(), "unix:/run/x.sock:mode=666")
    with pytest.raises(UsageError, match="--socket-group"):
        server_endpoint(object(), "tcp:port=9999:interface=127.0.0.1", group=7)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file another user's")
def test_another_users_socket_is_refused_not_removed(tmp_path: Path) -> None:
    path = tmp_path / "vmx.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as squatter:
        squatter.bind(str(path))  # bound, never listening: what a dead socket looks like
    os.chown(path, 65534, 65534)
    with pytest.raises(SocketInUseError, match="belongs to uid 65534"):
        claim_socket(str(path))
    assert path.exists()


def test_other_endpoint_types_fail_in_a_sentence(tmp_path: Path) -> None:
    with pytest.raises(EndpointStringError, match="Unknown endpoint type"):
        server_endpoint(object(), "carrier-pigeon:5000", allow_remote=True)
    with pytest.raises(EndpointStringError, match="No such file or directory"):
        server_endpoint(object(), f"ssl:5000:privateKey={tmp_path}/missing.pem", allow_remote=True)
    with pytest.raises(RemoteListenError):
        server_endpoint(object(), "ssl:5000")  # any other type counts as remote


@pytest.mark.parametrize("form", ["{path}", "unix:{path}", "unix:path={path}", "unix:address={path}:lockfile=1"])
@pytest_twisted.ensureDeferred
async def test_every_unix_form_listens_owner_only(tmp_path: Path, form: str) -> None:
    """serverFromString's spellings never reach Twisted's own (0666) Unix listener."""
    from twisted.internet import reactor

    from twisted_vmtools.vmx.simulator import SimulatorService

    path = tmp_path / "vmx.sock"
    old = os.umask(0)
    try:
        simulator = SimulatorService(reactor, form.format(path=path))  # type: ignore[arg-type]
        simulator.startService()
    finally:
        os.umask(old)
    try:
        assert stat.S_ISSOCK(os.lstat(path).st_mode) and stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert not (tmp_path / "vmx.sock.lock").exists()
    finally:
        await simulator.stopService()
    assert not path.exists()


@pytest_twisted.ensureDeferred
async def test_the_log_names_the_port_the_kernel_chose() -> None:
    """``tcp:port=0`` listens on a free port: the log says which, in the words a later run could use."""
    from twisted.internet import reactor
    from twisted.logger import ILogObserver, globalLogPublisher

    from twisted_vmtools.vmx.simulator import SimulatorService

    lines: list[str] = []

    def observe(event: dict[str, object]) -> None:
        if event.get("log_format") == "simulated VMX listening at {where}":
            lines.append(str(event["where"]))

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    simulator = SimulatorService(reactor, "tcp:port=0:interface=127.0.0.1")  # type: ignore[arg-type]
    try:
        simulator.startService()
        [where] = lines
        kind, port, interface = where.split(":")
        assert (kind, interface) == ("tcp", "interface=127.0.0.1")
        assert port.startswith("port=") and int(port[5:]) > 0
        with socket.create_connection(("127.0.0.1", int(port[5:]))):
            pass  # it is really there
    finally:
        globalLogPublisher.removeObserver(observer)
        await simulator.stopService()
