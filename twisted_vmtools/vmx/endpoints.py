"""What sits behind the VMX's backdoor message channels: RPCI and TCLO endpoints."""

from __future__ import annotations

from itertools import count

from ..codecs.message import PROTO_RPCI, PROTO_TCLO, ChannelEndpoint, EndpointFactory
from .model import VMX
from .tclo_queue import GuestGone


class RPCIEndpoint:
    """A backdoor RPCI channel: each message is a request; the reply waits for RECVSIZE."""

    def __init__(self, vmx: VMX, name: str) -> None:
        self.vmx = vmx
        self.name = name
        self._reply: bytes | None = None

    def message_received(self, data: bytes) -> None:
        self._reply = self.vmx.rpci(data, self.name)

    def next_message(self) -> bytes | None:
        return self._reply

    def message_delivered(self, data: bytes) -> None:
        self._reply = None

    def message_refused(self, data: bytes) -> None:
        self._reply = None

    def closed(self) -> None:
        self._reply = None


class TCLOEndpoint:
    """A backdoor TCLO channel: the guest polls; each poll carries the previous reply."""

    def __init__(self, vmx: VMX, name: str) -> None:
        self.vmx = vmx
        self.name = name
        self._awaiting_reply = False
        vmx.tclo_connected(name)

    def message_received(self, data: bytes) -> None:
        if self._awaiting_reply and data:
            self._awaiting_reply = False
            self.vmx.tclo_reply(data, self.name)
        else:
            self.vmx.guest_alive()

    def next_message(self) -> bytes | None:
        command = self.vmx.tclo.take()
        if command is not None:
            self.vmx.tclo_sent(command, self.name)
        return command

    def message_delivered(self, data: bytes) -> None:
        self._awaiting_reply = True

    def message_refused(self, data: bytes) -> None:
        self.vmx.tclo.put_back()

    def closed(self) -> None:
        if self._awaiting_reply or self.vmx.tclo.busy:
            self.vmx.tclo.abandon(GuestGone("the guest closed its TCLO channel"))
        self.vmx.tclo_disconnected(self.name)


def backdoor_endpoints(vmx: VMX) -> EndpointFactory:
    """An `EndpointFactory` for `HostChannels`: RPCI and TCLO channels on ``vmx``."""

    serial = count(1)

    def make(protocol: int, owner: int) -> ChannelEndpoint | None:
        # Names are unique (one process may open several channels): the VMX counts by name.
        if protocol == PROTO_RPCI:
            return RPCIEndpoint(vmx, f"backdoor-rpci:{owner}#{next(serial)}")
        if protocol == PROTO_TCLO:
            return TCLOEndpoint(vmx, f"backdoor-tclo:{owner}#{next(serial)}")
        return None

    return make
