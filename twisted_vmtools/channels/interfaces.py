"""What every guest-side channel offers the protocols above it."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface


class ChannelError(Exception):
    """The VMX could not be reached, or the channel broke mid-call."""


class ITCLOHandler(Interface):
    """Receives the VMX's TCLO commands (implemented by the TCLO dispatcher)."""

    def handle(command: bytes) -> Deferred[bytes]:
        """Dispatch one command; fires with the whole reply (``OK …`` or ``ERROR …``), never fails.

        A channel must not hand over the next command before this fires:
        on the backdoor the next poll waits, on a stream the VMX waits.
        """


class IGuestChannel(Interface):
    """One way for the guest to reach the VMX: RPCI requests out, TCLO commands in."""

    name = Attribute("Short name for logs and status: 'unix:/path', 'backdoor', 'vsock', …")

    def rpci(request: bytes) -> Deferred[bytes]:
        """Send one RPCI request; fires with the raw reply (``1 …`` / ``0 …``).

        Fails with `ChannelError` when the VMX cannot be reached.  Calls may
        overlap; the channel serialises them.
        """

    def start(tclo: ITCLOHandler) -> None:
        """Start receiving TCLO commands (polling or pushed) and hand each to ``tclo``."""

    def stop() -> Deferred[None]:
        """Stop receiving, close everything; fires when closed."""
