"""The default socket lives in a directory of ours; clients refuse a socket another user put in their way."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from twisted_vmtools.simsocket import (
    UntrustedSocket,
    client_description,
    default_simulator_socket,
    private_directory,
    trusted_path,
)
from twisted_vmtools.vmx.simulator import SocketInUseError, claim_socket


def test_default_socket_is_in_a_per_user_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_simulator_socket() == str(tmp_path / "vmtools-sim" / "vmx.sock")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_simulator_socket().endswith(f"vmtools-sim-{os.getuid()}/vmx.sock")


def test_claiming_makes_the_directory_private(tmp_path: Path) -> None:
    path = tmp_path / "vmtools-sim" / "vmx.sock"
    claim_socket(str(path))
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    private_directory(str(path))  # again: ours, accepted


def test_a_socket_of_ours_is_trusted(tmp_path: Path) -> None:
    path = tmp_path / "vmx.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        assert client_description(str(path)) == f"unix:{path}"
        assert client_description(f"unix:path={path}") == f"unix:path={path}"


def test_a_file_in_place_of_the_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vmx.sock"
    path.write_text("not a socket")
    with pytest.raises(UntrustedSocket, match="not a socket"):
        client_description(str(path))


@pytest.mark.skipif(os.getuid() != 0, reason="making another user's socket needs root")
def test_a_squatters_socket_is_refused_by_clients_and_the_server(tmp_path: Path) -> None:
    squatted = tmp_path / "squat"
    squatted.mkdir(mode=0o755)
    path = squatted / "vmx.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        os.chown(path, 65534, 65534)
        with pytest.raises(UntrustedSocket, match="uid 65534"):
            client_description(str(path))
        with pytest.raises(SocketInUseError):
            claim_socket(str(path))
        os.chown(path, 0, 0)
        os.chown(squatted, 65534, 65534)  # their directory: they could swap the socket at any time
        with pytest.raises(UntrustedSocket, match="uid 65534"):
            trusted_path(str(path))
