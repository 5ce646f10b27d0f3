"""Endpoint strings: Twisted's grammar on each side, every mistake one sentence (exit code 2)."""

from __future__ import annotations

import argparse

import pytest
from twisted.internet.endpoints import _parse
from twisted.internet.testing import MemoryReactor

from twisted_vmtools.endpoint_strings import (
    UNIX_PATH_MAX,
    EndpointStringError,
    client_for,
    client_string,
    parse_client,
    parse_server,
    server_string,
)
from twisted_vmtools.exit_codes import ExitCode
from twisted_vmtools.simsocket import client_endpoint

LONG = "/tmp/" + "x" * 110 + ".sock"
INTERNALS = ("__init__", "()", "Traceback", "literal for int", "positional argument")


def test_twisteds_tokenizer_is_what_we_think() -> None:
    """We lean on Twisted's private `_parse` for quoting; pin what we rely on."""
    assert _parse("unix:/tmp/a\\:b") == (["unix", "/tmp/a:b"], {})
    assert _parse("tcp:port=80:interface=\\:\\:1") == (["tcp"], {"port": "80", "interface": "::1"})
    assert _parse("tcp::1234") == (["tcp", "", "1234"], {})


@pytest.mark.parametrize(
    ("text", "path", "port", "interface"),
    [
        ("/run/vmx.sock", "/run/vmx.sock", None, ""),
        ("./vmx.sock", "./vmx.sock", None, ""),
        ("/tmp/odd:name.sock", "/tmp/odd:name.sock", None, ""),
        ("unix:/run/vmx.sock", "/run/vmx.sock", None, ""),
        ("unix:path=/run/vmx.sock", "/run/vmx.sock", None, ""),
        ("unix:address=/run/vmx.sock:lockfile=0", "/run/vmx.sock", None, ""),
        ("tcp:5000", None, 5000, ""),
        ("tcp:port=5000:interface=127.0.0.1", None, 5000, "127.0.0.1"),
        ("tcp:5000:interface=127.0.0.1", None, 5000, "127.0.0.1"),
        ("tcp6:port=5000:interface=\\:\\:1", None, 5000, "::1"),
    ],
)
def test_server_strings_mean_what_serverFromString_means(  # noqa: N802
    text: str, path: str | None, port: int | None, interface: str
) -> None:
    address = parse_server(text)
    assert (address.path, address.port, address.interface, address.deprecated) == (path, port, interface, None)
    assert server_string(text) == text


def test_the_old_shared_tcp_form_is_a_deprecated_alias_on_the_server() -> None:
    address = parse_server("tcp:127.0.0.1:5000")
    assert (address.port, address.interface) == (5000, "127.0.0.1")
    assert address.description == "tcp:port=5000:interface=127.0.0.1"
    assert address.deprecated is not None and "tcp:port=5000:interface=127.0.0.1" in address.deprecated


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("unix:", "names no socket path"),
        ("unix:path=", "names no socket path"),
        (LONG, f"at most {UNIX_PATH_MAX}"),
        ("unix:" + LONG, f"at most {UNIX_PATH_MAX}"),
        ("tcp:localhost", "port must be a number"),
        ("tcp:", "names no port"),
        ("tcp::1234", "names no interface"),
        ("tcp:localhost:99999", "from 0 to 65535"),
        ("tcp:port=http", "port must be a number"),
        ("tcp:5000:127.0.0.1", "not a place to listen"),
        ("tcp:5000:host=x", "not host="),
        ("unix:/run/x.sock:mode=666", "--socket-group"),
        (":5000", "names no endpoint type"),
        ("tcp:a\\", "not an endpoint string"),
    ],
)
def test_server_mistakes_are_one_sentence(text: str, said: str) -> None:
    with pytest.raises(EndpointStringError, match=said) as refused:
        parse_server(text)
    _one_sentence(refused.value)


@pytest.mark.parametrize(
    ("text", "path", "host", "port"),
    [
        ("/run/vmx.sock", "/run/vmx.sock", None, None),
        ("unix:/run/vmx.sock", "/run/vmx.sock", None, None),
        ("unix:path=/run/vmx.sock:timeout=3", "/run/vmx.sock", None, None),
        ("tcp:127.0.0.1:5000", None, "127.0.0.1", 5000),
        ("tcp:host=localhost:port=5000", None, "localhost", 5000),
    ],
)
def test_client_strings_mean_what_clientFromString_means(  # noqa: N802
    text: str, path: str | None, host: str | None, port: int | None
) -> None:
    address = parse_client(text)
    assert (address.path, address.host, address.port) == (path, host, port)
    assert client_string(text) == text


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("unix:", "names no socket path"),
        (LONG, f"at most {UNIX_PATH_MAX}"),
        ("tcp::1234", "names no host"),
        ("tcp:localhost:99999", "from 1 to 65535"),
        ("tcp:localhost:0", "from 1 to 65535"),
        ("tcp:localhost", "names no port"),
        ("tcp:8000", "names only a port"),
        ("tcp:[::1]:80", "host=\\\\:\\\\:1"),
        ("unix:/run/x.sock:mode=600", "not mode="),
        ("tcp:host=a:port=1:interface=b", "not interface="),
        ("port=1:host=a", "names no endpoint type: expected a socket path, unix:PATH, unix:path=PATH, tcp:HOST:PORT"),
    ],
)
def test_client_mistakes_are_one_sentence(text: str, said: str) -> None:
    with pytest.raises(EndpointStringError, match=said) as refused:
        parse_client(text)
    _one_sentence(refused.value)


def test_an_endpoint_string_error_is_a_usage_error_every_parser_shows() -> None:
    error = EndpointStringError("x")
    assert error.exit_code is ExitCode.USAGE
    assert isinstance(error, ValueError)  # twistd's coercers
    assert isinstance(error, argparse.ArgumentTypeError)  # argparse prints it as it is


def test_the_client_that_reaches_a_server() -> None:
    assert client_for(parse_server("/run/vmx.sock")) == "unix:/run/vmx.sock"
    assert client_for(parse_server("tcp:port=5000:interface=127.0.0.2")) == "tcp:host=127.0.0.2:port=5000"
    assert client_for(parse_server("tcp:5000")) == "tcp:host=127.0.0.1:port=5000"
    assert client_for(parse_server("tcp6:port=5000:interface=\\:\\:1")) == "tcp:host=\\:\\:1:port=5000"
    with pytest.raises(EndpointStringError, match="other than 0"):
        client_for(parse_server("tcp:0"))
    with pytest.raises(EndpointStringError, match="unix: or tcp:"):
        client_for(parse_server("ssl:5000"))


def test_client_endpoints_of_other_types_fail_in_a_sentence() -> None:
    reactor = MemoryReactor()
    with pytest.raises(EndpointStringError, match="Unknown endpoint type") as unknown:
        client_endpoint(reactor, "carrier-pigeon:home")
    _one_sentence(unknown.value)
    with pytest.raises(EndpointStringError, match="vsock") as vsock:
        client_endpoint(reactor, "vsock:1:2")
    _one_sentence(vsock.value)
    with pytest.raises(EndpointStringError, match="Unknown endpoint type: 'tcp6'"):
        client_endpoint(reactor, "tcp6:host=\\:\\:1:port=5000")  # no such client type: tcp: takes IPv6 hosts
    built = client_endpoint(reactor, "tcp:127.0.0.1:5000")
    assert (built._host, built._port) == ("127.0.0.1", 5000)  # type: ignore[attr-defined]


def _one_sentence(error: Exception) -> None:
    text = str(error)
    assert "\n" not in text and text.strip() == text
    assert not any(word in text for word in INTERNALS), text
