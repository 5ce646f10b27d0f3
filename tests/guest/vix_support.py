"""A Vix command server in memory, and a way to call it as the VMX does."""

from __future__ import annotations

from twisted.internet.task import Clock

from tests.support import result_of
from twisted_vmtools.codecs import vix
from twisted_vmtools.guest.accounts import GuestUser
from twisted_vmtools.guest.auth import NoAuthenticator
from twisted_vmtools.guest.fileops_runner import InlineRunner
from twisted_vmtools.guest.processes import ProcessManager
from twisted_vmtools.guest.vix_server import VixCommandServer

LOGIN = vix.Credentials("tester", "secret")


def make_server(clock: Clock | None = None, **kwargs: object) -> VixCommandServer:
    clock = clock or Clock()
    kwargs.setdefault("authenticator", NoAuthenticator(GuestUser.current()))
    kwargs.setdefault("processes", ProcessManager(clock, now=clock.seconds))
    kwargs.setdefault("files", InlineRunner())
    return VixCommandServer(clock, **kwargs)  # type: ignore[arg-type]


def relayed_args(op: int, body: vix.Body, login: vix.Credentials | None = LOGIN) -> bytes:
    command = vix.relayed_command(vix.build_request(op, body, login).encode())  # type: ignore[arg-type]
    return command.split(b" ", 1)[1]


def call(server: VixCommandServer, op: int, body: vix.Body, login: vix.Credentials | None = LOGIN) -> vix.Reply:
    return raw_call(server, relayed_args(op, body, login))


def answered(server: VixCommandServer, args: bytes | memoryview) -> bytes:
    """The Vix reply to relayed-command ``args``, joined as the TCLO dispatcher joins its pieces."""
    pieces: list[bytes | memoryview] = result_of(server.relayed_command(args))
    return b"".join(pieces)


def raw_call(server: VixCommandServer, args: bytes | memoryview) -> vix.Reply:
    reply = answered(server, args)
    assert reply.endswith(b"\0"), reply
    return vix.decode_reply(reply)
