"""Endpoint strings as Twisted has them, checked before anything listens or connects.

Every ``--socket`` and stream ``--transport`` value goes through here, so
``vmtools-sim``, ``vmtools-rpctool`` and ``twistd vmtools`` accept the same
words and refuse the same mistakes with one sentence (`EndpointStringError`,
exit code 2) instead of a traceback from deep inside Twisted.

- Where the simulator listens: `serverFromString`'s grammar (``unix:PATH``,
  ``unix:path=PATH``, ``tcp:PORT``, ``tcp:port=PORT:interface=HOST``, ...).
  A bare path is shorthand for ``unix:PATH``.  The old ``tcp:HOST:PORT``,
  which Twisted's server grammar cannot mean (its port would be HOST), is
  still taken as ``tcp:port=PORT:interface=HOST``, with a deprecation note.
- Where a client connects: `clientFromString`'s grammar (``unix:PATH``,
  ``tcp:HOST:PORT``, ``tcp:host=HOST:port=PORT``, ``vsock:PORT``, ...), a
  bare path again shorthand for ``unix:PATH``.

Parsing here is pure (no reactor, nothing opened), so option parsers can call
it; the simulator builds its listening port from a `ServerAddress` through its
own secure path (`vmx.simulator.server_endpoint`), never from Twisted's
default Unix listener.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from .exit_codes import ExitCode, ToolError

UNIX_PATH_MAX = 107  # sun_path is 108 bytes on Linux, one of them the terminating NUL
SERVER_FORMS = "a socket path, unix:PATH, unix:path=PATH, tcp:PORT or tcp:port=PORT:interface=HOST"
CLIENT_FORMS = "a socket path, unix:PATH, unix:path=PATH, tcp:HOST:PORT or tcp:host=HOST:port=PORT"
TCP_KINDS = ("tcp", "tcp6")


def _parse(text: str) -> tuple[list[str], dict[str, str]]:
    # Twisted's own tokenizer, so that quoting (``\:``) and ``key=value`` mean here what they mean to
    # serverFromString and clientFromString; private, so tests/test_endpoint_strings.py pins its behaviour.
    # Imported when used: twisted.internet.endpoints loads pyOpenSSL where it is installed (12 MB),
    # which twistd vmtools keeps out of the guest until the reactor is imported (no_tls.py).
    from twisted.internet.endpoints import _parse as parse

    return parse(text)  # type: ignore[no-any-return]


def quoteStringArgument(text: str) -> str:  # noqa: N802 - Twisted's name, for the same function
    from twisted.internet.endpoints import quoteStringArgument as quote

    return quote(text)


class EndpointStringError(ToolError, ValueError, argparse.ArgumentTypeError):
    """An endpoint string that cannot work; the message is one sentence for the user.

    Also a ValueError (what twistd's option coercers catch) and an ArgumentTypeError
    (what argparse prints as it is), so option parsers can raise it as it is.
    """

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class ServerAddress:
    """Where to listen: a Unix socket ``path``, TCP ``port`` on ``interface``, or another ``kind``."""

    text: str
    kind: str
    description: str  # the same place as serverFromString spells it
    path: str | None = None
    port: int | None = None
    interface: str = ""  # TCP: "" is every interface
    backlog: int | None = None
    deprecated: str | None = None  # a sentence, if ``text`` used a form on its way out


@dataclass(frozen=True)
class ClientAddress:
    """Where to connect: a Unix socket ``path``, TCP ``host`` and ``port``, or another ``kind``."""

    text: str
    kind: str
    description: str  # what clientFromString is given
    path: str | None = None
    host: str | None = None
    port: int | None = None


def is_bare_path(text: str) -> bool:
    """A path rather than an endpoint string: no colon, or a ``/`` before the first one."""
    kind, colon, _ = text.partition(":")
    return not colon or "/" in kind


def parse_server(text: str) -> ServerAddress:
    """``text`` as a place to listen, checked; `EndpointStringError` if it cannot work."""
    if is_bare_path(text):
        return _unix_server(text, [text], {})
    args, kwargs = _split(text, SERVER_FORMS)
    kind = args[0]
    if kind == "unix":
        return _unix_server(text, args[1:], kwargs)
    if kind in TCP_KINDS:
        return _tcp_server(text, kind, args[1:], kwargs)
    if not kind:
        raise EndpointStringError(f"{text!r} names no endpoint type: expected {SERVER_FORMS}")
    return ServerAddress(text, kind, text)


def parse_client(text: str) -> ClientAddress:
    """``text`` as a place to connect to, checked; `EndpointStringError` if it cannot work."""
    if is_bare_path(text):
        path = _unix_path(text, text)
        return ClientAddress(text, "unix", f"unix:{quoteStringArgument(path)}", path=path)
    args, kwargs = _split(text, CLIENT_FORMS)
    kind = args[0]
    if kind == "unix":
        _known(text, kwargs, {"path", "timeout", "checkPID"})
        path = _unix_path(text, _one(text, args[1:], kwargs, "path", "socket path"))
        return ClientAddress(text, "unix", text, path=path)
    if kind == "tcp":  # clientFromString has no tcp6: (tcp: connects to IPv6 addresses too)
        return _tcp_client(text, kind, args[1:], kwargs)
    if not kind:
        raise EndpointStringError(f"{text!r} names no endpoint type: expected {CLIENT_FORMS}")
    return ClientAddress(text, kind, text)


def _split(text: str, forms: str) -> tuple[list[str], dict[str, str]]:
    try:
        args, kwargs = _parse(text)
    except Exception:  # an unfinished escape, say: whatever the tokenizer chokes on
        raise EndpointStringError(f"{text!r} is not an endpoint string: expected {forms}") from None
    if not args:  # only key=value pieces: no type first
        raise EndpointStringError(f"{text!r} names no endpoint type: expected {forms}")
    return list(args), dict(kwargs)


def _one(text: str, positional: list[str], kwargs: dict[str, str], *keys_and_what: str) -> str:
    """The one value given either positionally or as one of the keys (the last argument says what it is)."""
    *keys, what = keys_and_what
    given = [kwargs[key] for key in keys if key in kwargs] + positional
    if len(given) > 1:
        raise EndpointStringError(f"{text!r} gives more than one {what}")
    if not given or not given[0]:
        raise EndpointStringError(f"{text!r} names no {what}")
    return given[0]


def _known(text: str, kwargs: dict[str, str], keys: set[str]) -> None:
    unknown = sorted(set(kwargs) - keys)
    if unknown:
        raise EndpointStringError(
            f"{text!r}: this endpoint takes {', '.join(k + '=' for k in sorted(keys))}, not {unknown[0]}="
        )


def _unix_path(text: str, path: str) -> str:
    if not path:
        raise EndpointStringError(f"{text!r} names no socket path")
    if "\0" in path:
        raise EndpointStringError(f"the socket path {path!r} contains a NUL byte")
    size = len(os.fsencode(path))
    if size > UNIX_PATH_MAX:
        raise EndpointStringError(
            f"the socket path is {size} bytes long, and a Unix socket path can have at most {UNIX_PATH_MAX}: "
            "choose a shorter one"
        )
    return path


def _unix_server(text: str, positional: list[str], kwargs: dict[str, str]) -> ServerAddress:
    if "mode" in kwargs:
        # The socket's privacy is not negotiable per string: 0600, or 0660 for --socket-group.
        raise EndpointStringError(
            f"{text!r}: the simulator's socket is always created 0600; use --socket-group GROUP for 0660, not mode="
        )
    _known(text, kwargs, {"address", "path", "backlog", "lockfile"})
    path = _unix_path(text, _one(text, positional, kwargs, "address", "path", "socket path"))
    backlog = _number(text, kwargs["backlog"], "backlog", 1, 65535) if "backlog" in kwargs else None
    return ServerAddress(text, "unix", f"unix:{quoteStringArgument(path)}", path=path, backlog=backlog)


def _tcp_server(text: str, kind: str, positional: list[str], kwargs: dict[str, str]) -> ServerAddress:
    _known(text, kwargs, {"port", "interface", "backlog"})
    deprecated = None
    if len(positional) == 2 and not kwargs and not positional[0]:
        raise EndpointStringError(
            f"{text!r} names no interface: {kind}:PORT listens on every interface, "
            f"{kind}:port=PORT:interface=HOST on one"
        )
    if len(positional) == 2 and not kwargs and not positional[0].isdigit():
        # The old tcp:HOST:PORT, shared with the client side: no server string means that.
        host, port_text = positional
        kwargs = {"port": port_text, "interface": host}
        positional = []
        deprecated = (
            f"--socket {text} is the old form; Twisted's servers write tcp:port={port_text}:interface={host} "
            "(clients keep tcp:HOST:PORT)"
        )
    if "interface" in kwargs and len(positional) > 1:
        raise EndpointStringError(f"{text!r} gives the interface twice: expected {SERVER_FORMS}")
    if len(positional) > 1:
        raise EndpointStringError(f"{text!r} is not a place to listen: expected {SERVER_FORMS}")
    port_text = _one(text, positional, kwargs, "port", "port")
    port = _number(text, port_text, "port", 0, 65535)
    interface = kwargs.get("interface", "")
    backlog = _number(text, kwargs["backlog"], "backlog", 1, 65535) if "backlog" in kwargs else None
    description = f"{kind}:port={port}" + (f":interface={quoteStringArgument(interface)}" if interface else "")
    return ServerAddress(text, kind, description, port=port, interface=interface, backlog=backlog,
                         deprecated=deprecated)


def _tcp_client(text: str, kind: str, positional: list[str], kwargs: dict[str, str]) -> ClientAddress:
    _known(text, kwargs, {"host", "port", "timeout", "bindAddress"})
    if len(positional) == 1 and not kwargs and positional[0].isdigit():
        raise EndpointStringError(
            f"{text!r} names only a port: a client needs a host too, {kind}:HOST:PORT "
            f"(serve's {kind}:PORT listens there; connect with {kind}:127.0.0.1:{positional[0]})"
        )
    if len(positional) > 2:
        raise EndpointStringError(
            f"{text!r} is not a host and a port: expected {kind}:HOST:PORT (an IPv6 address as host=\\:\\:1)"
        )
    host = _one(text, positional[:1], kwargs, "host", "host")
    port = _number(text, _one(text, positional[1:], kwargs, "port", "port"), "port", 1, 65535)
    return ClientAddress(text, kind, text, host=host, port=port)


def _number(text: str, value: str, what: str, low: int, high: int) -> int:
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        raise EndpointStringError(f"{text!r}: the {what} must be a number from {low} to {high}, not {value!r}")
    return int(value)


def server_string(text: str) -> str:
    """``text``, once `parse_server` accepts it: an option type for argparse."""
    parse_server(text)
    return text


def client_string(text: str) -> str:
    """``text``, once `parse_client` accepts it: an option type for argparse."""
    parse_client(text)
    return text


def client_for(address: ServerAddress) -> str:
    """The client string that reaches what ``address`` listens on (``--simulate``, the demo: one process, both ends)."""
    if address.path is not None:
        return f"unix:{quoteStringArgument(address.path)}"
    if address.kind not in TCP_KINDS:
        raise EndpointStringError(f"{address.text!r}: the guest can reach the VMX only over unix: or tcp:")
    if not address.port:
        raise EndpointStringError(f"{address.text!r}: give a port other than 0, so that the guest knows where to go")
    host = address.interface or ("::1" if address.kind == "tcp6" else "127.0.0.1")
    return f"tcp:host={quoteStringArgument(host)}:port={address.port}"
