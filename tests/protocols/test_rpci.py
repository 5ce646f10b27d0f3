from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import implementer

from tests.support import outcome_of
from twisted_vmtools.channels.interfaces import ChannelError, IGuestChannel, ITCLOHandler
from twisted_vmtools.protocols.rpci import RPCI, RPCIError


@implementer(IGuestChannel)
class CannedChannel:
    name = "canned"

    def __init__(self, reply: bytes | Exception) -> None:
        self.reply = reply
        self.requests: list[bytes] = []

    def rpci(self, request: bytes) -> Deferred[bytes]:
        self.requests.append(request)
        if isinstance(self.reply, Exception):
            return defer.fail(self.reply)
        return defer.succeed(self.reply)

    def start(self, tclo: ITCLOHandler) -> None:
        pass

    def stop(self) -> Deferred[None]:
        return defer.succeed(None)


def test_success_strips_prefix() -> None:
    channel = CannedChannel(b"1 value")
    assert outcome_of(RPCI(channel).call(b"info-get guestinfo.x")) == b"value"
    assert channel.requests == [b"info-get guestinfo.x"]


@pytest.mark.parametrize("raw", [b"0 No value found", b"garbage", b"", b"1"])
def test_failure_and_garbage_raise_rpcierror(raw: bytes) -> None:
    failure = outcome_of(RPCI(CannedChannel(raw)).call(b"info-get guestinfo.x"))
    assert failure.check(RPCIError)  # type: ignore[attr-defined]
    if raw.startswith(b"0 "):
        assert failure.value.reply == b"No value found"  # type: ignore[attr-defined]


def test_channel_errors_pass_through() -> None:
    failure = outcome_of(RPCI(CannedChannel(ChannelError("gone"))).call(b"x"))
    assert failure.check(ChannelError)  # type: ignore[attr-defined]
