"""The simulator's control channel: AMP over the same socket the guest uses.

`vmtools-sim status|tclo|guestinfo` connect to a running simulator's socket,
send the ``CTRL`` preamble, then speak AMP.
"""

from __future__ import annotations

import json

from twisted.internet.protocol import connectionDone
from twisted.protocols import amp
from twisted.python.failure import Failure

from ..codecs.stream import StreamKind
from .model import VMX
from .tclo_queue import GuestGone, TCLOTimeout


class Status(amp.Command):
    response = [(b"status", amp.Unicode())]


class SendTCLO(amp.Command):
    arguments = [(b"command", amp.String()), (b"timeout", amp.Float())]
    response = [(b"reply", amp.String())]
    errors = {TCLOTimeout: b"TCLO_TIMEOUT", GuestGone: b"GUEST_GONE"}


class GuestInfoGet(amp.Command):
    arguments = [(b"key", amp.Unicode())]
    response = [(b"found", amp.Boolean()), (b"value", amp.String())]


class GuestInfoSet(amp.Command):
    arguments = [(b"key", amp.Unicode()), (b"value", amp.String())]


LOG_PAGE = 100  # records per RPCLog answer: an AMP value holds at most 64 KiB
LOG_DATA_LIMIT = 400  # bytes of each record's data shown


class RPCLog(amp.Command):
    """The last ``last`` RPC records (at most `LOG_PAGE`), data cut to `LOG_DATA_LIMIT` bytes."""

    arguments = [(b"last", amp.Integer())]
    response = [
        (
            b"records",
            amp.AmpList(
                [
                    (b"when", amp.Float()),
                    (b"direction", amp.Unicode()),
                    (b"channel", amp.Unicode()),
                    (b"data", amp.String()),
                    (b"size", amp.Integer()),
                ]
            ),
        )
    ]


class ControlServer(amp.AMP):
    """Answers control commands against one VMX."""

    def __init__(self, vmx: VMX) -> None:
        super().__init__()
        self.vmx = vmx

    # AMP logs every connection; a status query is not worth two lines in the VMX's log.
    def makeConnection(self, transport: object) -> None:
        amp.BinaryBoxProtocol.makeConnection(self, transport)  # type: ignore[arg-type]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        amp.BinaryBoxProtocol.connectionLost(self, reason)

    @Status.responder
    def status(self) -> dict[str, str]:
        return {"status": json.dumps(self.vmx.status())}

    @SendTCLO.responder
    def send_tclo(self, command: bytes, timeout: float) -> object:
        return self.vmx.send(command, timeout).addCallback(lambda reply: {"reply": reply})

    @GuestInfoGet.responder
    def guestinfo_get(self, key: str) -> dict[str, object]:
        value = self.vmx.guestinfo.get(key)
        return {"found": value is not None, "value": value or b""}

    @RPCLog.responder
    def rpc_log(self, last: int) -> dict[str, object]:
        records = list(self.vmx.records)[-max(0, min(last, LOG_PAGE)) :] if last > 0 else []
        return {
            "records": [
                {"when": r.when, "direction": r.direction, "channel": r.channel,
                 "data": r.data[:LOG_DATA_LIMIT], "size": len(r.data)}
                for r in records
            ]
        }

    @GuestInfoSet.responder
    def guestinfo_set(self, key: str, value: bytes) -> dict[str, object]:
        self.vmx.guestinfo[key] = value
        return {}


class ControlClient(amp.AMP):
    """The client end: names the channel, then speaks AMP."""

    def connectionMade(self) -> None:
        self.transport.write(StreamKind.CONTROL.preamble)  # type: ignore[union-attr]
        super().connectionMade()
