"""The simulator's Unix socket is private from its first instant, whatever the umask."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from twisted_vmtools.vmx import private_socket
from twisted_vmtools.vmx.private_socket import bind_private, unlink_if_ours
from twisted_vmtools.vmx.simulator import RemoteListenError, server_endpoint


@pytest.fixture
def wide_umask() -> Iterator[None]:
    old = os.umask(0)  # the worst case: bind() alone would make the socket 0777
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_owner_only_whatever_the_umask(tmp_path: Path, wide_umask: None) -> None:
    path = tmp_path / "vmx.sock"
    with bind_private(str(path)):
        assert stat.S_ISSOCK(os.lstat(path).st_mode) and mode(path) == 0o600
        assert os.listdir(tmp_path) == ["vmx.sock"]  # no staging directory left behind


def test_a_group_gets_0660(tmp_path: Path, wide_umask: None) -> None:
    path = tmp_path / "vmx.sock"
    with bind_private(str(path), group=os.getegid()):
        assert mode(path) == 0o660 and os.lstat(path).st_gid == os.getegid()


def test_never_visible_wider_than_its_final_mode(tmp_path: Path, wide_umask: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "vmx.sock"
    seen: list[tuple[int, int, bool]] = []
    real_link = os.link

    def watching_link(source: str, target: str) -> None:
        # The moment before the socket appears at its path: how it looks, and where it was made.
        seen.append((mode(Path(source)), mode(Path(source).parent), os.path.lexists(target)))
        real_link(source, target)

    monkeypatch.setattr(private_socket.os, "link", watching_link)
    with bind_private(str(path)):
        pass
    assert seen == [(0o600, 0o700, False)]


def test_an_existing_file_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "vmx.sock"
    path.write_text("not yours")
    with pytest.raises(FileExistsError):
        bind_private(str(path))
    assert path.read_text() == "not yours" and os.listdir(tmp_path) == ["vmx.sock"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_cannot_connect(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)  # the directory lets everyone through; only the socket's mode stops them
    path = tmp_path / "vmx.sock"
    with bind_private(str(path)):
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports by exit code only
            code = 1
            try:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                with socket.socket(socket.AF_UNIX) as stranger:
                    stranger.connect(str(path))
            except PermissionError:
                code = 13
            except BaseException:
                code = 2
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 13


def test_stopping_removes_only_our_own_socket(tmp_path: Path) -> None:
    path = tmp_path / "vmx.sock"
    with bind_private(str(path)):
        status = os.lstat(path)
        os.unlink(path)
        with socket.socket(socket.AF_UNIX) as successor:  # another simulator took the path meanwhile
            successor.bind(str(path))
            unlink_if_ours(str(path), (status.st_dev, status.st_ino))
            assert path.exists()
        os.unlink(path)
    with bind_private(str(path)):
        status = os.lstat(path)
        unlink_if_ours(str(path), (status.st_dev, status.st_ino))
        assert not path.exists()


@pytest.mark.parametrize("where", ["tcp:0.0.0.0:9999", "tcp:192.0.2.1:9999", "ssl:9999"])
def test_listening_beyond_loopback_needs_allow_remote(where: str) -> None:
    with pytest.raises(RemoteListenError, match="--allow-remote"):
        server_endpoint(object(), where)


def test_loopback_and_allowed_remote_are_fine() -> None:
    server_endpoint(object(), "tcp:127.0.0.1:9999")
    server_endpoint(object(), "tcp:0.0.0.0:9999", allow_remote=True)
