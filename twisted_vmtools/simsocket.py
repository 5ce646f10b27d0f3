"""Where a guest and `vmtools-sim` meet: the default socket, and a ``--socket`` value as a client endpoint.

Shared by both sides (``twistd vmtools --simulate``, ``vmtools-sim``), so
neither imports the other for it; nothing here loads Twisted's reactor,
psutil or either stack.
"""

from __future__ import annotations

import os
import stat
import tempfile
from typing import TYPE_CHECKING

from .endpoint_strings import EndpointStringError, parse_client
from .exit_codes import ExitCode, ToolError

if TYPE_CHECKING:
    from twisted.internet.interfaces import IStreamClientEndpoint


class UntrustedSocket(ToolError, ValueError):
    """A socket (or its directory) that another user could have put there: nothing is sent to it."""

    exit_code = ExitCode.UNREACHABLE


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
    """A client endpoint description for ``where`` (`parse_client`: a bare path is ``unix:PATH``).

    `EndpointStringError` if it cannot work.  A Unix socket is checked first
    (`trusted_path`): a client must not hand its commands and secrets to a
    socket another user squatted at the path.
    """
    address = parse_client(where)
    if address.path is not None:
        trusted_path(address.path)
    return address.description


def client_endpoint(reactor: object, where: str) -> IStreamClientEndpoint:
    """The endpoint to connect to at ``where``, checked (`client_description`) and built by clientFromString."""
    from twisted.internet.endpoints import clientFromString

    description = client_description(where)
    try:
        return clientFromString(reactor, description)
    except ValueError as error:  # Twisted's "Unknown endpoint type", a plugin's own sentence
        raise EndpointStringError(f"{where!r}: {error}") from None
    except Exception:  # arguments a parser does not take (TypeError, KeyError), a plugin's own failure
        raise EndpointStringError(f"{where!r} is not an endpoint string this client can use") from None
