"""Where a guest and `vmtools-sim` meet: the default socket, and a ``--socket`` value as a client endpoint.

Shared by both sides (``twistd vmtools --simulate``, ``vmtools-sim``), so
neither imports the other for it; nothing here loads Twisted's reactor,
psutil or either stack.
"""

from __future__ import annotations

import os
import stat
import tempfile


class UntrustedSocket(ValueError):
    """A socket (or its directory) that another user could have put there: nothing is sent to it."""


def default_simulator_socket() -> str:
    """``vmx.sock`` in a directory only this user can write: ``$XDG_RUNTIME_DIR/vmtools-sim``, else
    ``<tmp>/vmtools-sim-<uid>``.  The directory, not the file name, is what keeps another user from
    putting a socket of theirs at our path first; it is checked when used (`trusted_path`)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = os.path.join(runtime, "vmtools-sim") if runtime else os.path.join(
        tempfile.gettempdir(), f"vmtools-sim-{os.getuid()}")
    return os.path.join(base, "vmx.sock")


def private_directory(path: str) -> None:
    """Make ``path``'s directory ours and 0700 if missing; `UntrustedSocket` if it is anyone else's."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    _check_owned(directory, stat.S_ISDIR, "directory")


def trusted_path(path: str) -> None:
    """Refuse a socket at ``path`` that neither we nor root own, or one in a directory another user owns."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.exists(directory):
        _check_owned(directory, stat.S_ISDIR, "directory")
    if os.path.lexists(path):
        _check_owned(path, stat.S_ISSOCK, "socket")


def _check_owned(path: str, kind: object, what: str) -> None:
    info = os.lstat(path)
    if not kind(info.st_mode):  # type: ignore[operator]
        raise UntrustedSocket(f"{path} is not a {what}; refusing to use it")
    if info.st_uid not in (os.getuid(), 0):
        raise UntrustedSocket(f"{path} belongs to uid {info.st_uid}, not to us or root; refusing to use it")


def client_description(where: str) -> str:
    """A client endpoint description for ``where``: a bare path is shorthand for ``unix:PATH``.

    A Unix socket is checked first (`trusted_path`): a client must not hand its
    commands and secrets to a socket another user squatted at the path.
    """
    description = where if ":" in where else f"unix:{where}"
    if description.startswith("unix:"):
        path = description[len("unix:"):].split(":", 1)[0]
        trusted_path(path.removeprefix("path="))
    return description
