"""What every guest-side channel offers the protocols above it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

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


class ITCLOCommands(ITCLOHandler):
    """A TCLO handler that others may watch: the seam for reacting to a command one does not own.

    Implemented by `twisted_vmtools.protocols.tclo.TCLODispatcher`.  Guest features observe
    ``reset``, ``Capabilities_Register`` and ``Set_Option``; `AutoChannel` observes ``reset``.
    """

    def observe(name: bytes, observer: Callable[[bytes], Awaitable[object] | None]) -> Callable[[], None]:
        """Call ``observer(args)`` each time command ``name`` is answered ``OK``.

        The observer may return an awaitable (a Deferred or a coroutine); the
        reply reaches the VMX once every observer of the command has finished,
        one after another in the order they subscribed.  An observer's failure
        is logged and does not change the reply.  Returns a callable that
        ends the subscription.
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
