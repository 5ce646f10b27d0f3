"""The simulator claims its socket path only from a dead simulator."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from twisted_vmtools.vmx.simulator import SocketInUseError, claim_socket, server_endpoint, socket_path


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
    assert socket_path("tcp:127.0.0.1:9999") is None
    with pytest.raises(ValueError, match="tcp:HOST:PORT"):
        server_endpoint(object(), "tcp:9999")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file another user's")
def test_another_users_socket_is_refused_not_removed(tmp_path: Path) -> None:
    path = tmp_path / "vmx.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as squatter:
        squatter.bind(str(path))  # bound, never listening: what a dead socket looks like
    os.chown(path, 65534, 65534)
    with pytest.raises(SocketInUseError, match="belongs to uid 65534"):
        claim_socket(str(path))
    assert path.exists()
