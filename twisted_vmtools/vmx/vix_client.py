"""The VMX's Vix client: one guest operation = one ``Vix_1_Relayed_Command`` over TCLO.

It only needs a way to send a TCLO command and get the guest's reply
(``send``): the simulator's own TCLO queue (`VMX.send`), or the control
channel's ``SendTCLO`` from ``vmtools-sim guest``.  A Vix error comes back as
`GuestOperationError`, carrying the Vix code and the vSphere fault a client
would see.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from twisted.internet.defer import Deferred

from ..codecs import vix
from ..codecs.tclo import OK_PREFIX, UNKNOWN_COMMAND
from ..codecs.vix import VixCode

Send = Callable[[bytes], "Deferred[bytes]"]
TOOLS_NOT_RUNNING = 3016  # VIX_E_TOOLS_NOT_RUNNING: what a VMX reports when the guest cannot answer


class GuestOperationError(Exception):
    """A guest operation failed: ``code`` is the Vix error, ``fault`` vSphere's fault name."""

    def __init__(self, code: int, message: str = "", *, additional_error: int = 0, fault: str | None = None) -> None:
        self.code = int(code)
        self.additional_error = additional_error
        self.fault = fault or vix.fault_name(code)
        super().__init__(message or f"{self.fault} ({vix.code_name(code)})")


class VixClient:
    """Sends Vix requests through ``send`` and decodes the replies."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self._cookies = itertools.count(1)

    async def call(self, op: vix.Op, body: vix.Body, credentials: vix.Credentials | None) -> bytes:
        """The result of ``op``; `GuestOperationError` for a Vix error or a guest that cannot answer."""
        cookie = next(self._cookies)
        try:
            command = vix.relayed_request(op, body, credentials, cookie=cookie, name=b"%d" % cookie)
        except vix.VixCodecError as error:  # what no request can carry (a NUL, text that is not UTF-8)
            raise GuestOperationError(error.code, str(error)) from None
        try:
            reply = await self.send(command)
        except Exception as error:
            raise GuestOperationError(TOOLS_NOT_RUNNING, f"the guest did not answer: {error}",
                                      fault="GuestOperationsUnavailable") from None
        return decode_tclo_reply(reply, binary=isinstance(body, vix.HgfsPacket))


def decode_tclo_reply(reply: bytes, *, binary: bool = False) -> bytes:
    """The result in a guest's TCLO answer to a Vix command, or the error it carries.

    ``binary``: the request asked for a binary result (an HGFS packet), which follows a ``#``.
    """
    if not reply.startswith(OK_PREFIX):
        text = reply.decode("utf-8", "replace")
        if reply.endswith(UNKNOWN_COMMAND):
            raise GuestOperationError(VixCode.NOT_SUPPORTED, f"the guest tools have no guest operations: {text}",
                                      fault="OperationNotSupportedByGuest")
        raise GuestOperationError(VixCode.FAIL, f"the guest refused the command: {text}")
    try:
        tail = memoryview(reply)[len(OK_PREFIX) :] if binary else reply[len(OK_PREFIX) :]
        decoded = vix.decode_reply(tail, binary=binary, marked=binary)
    except vix.VixCodecError as error:
        raise GuestOperationError(VixCode.FAIL, str(error)) from None
    if not decoded.ok:
        raise GuestOperationError(decoded.error, additional_error=decoded.additional_error)
    return decoded.result
