"""What a VMX sends a guest whose TCLO channel has just appeared (docs/vmx-lifecycle.md).

A real VMX greets every new TCLO channel the same way — a guest that
started, restarted, or reconnected to a VMX that restarted: ``reset`` (the
guest forgets what it told the old VMX and answers ``OK ATR toolbox``),
``Capabilities_Register`` (the guest announces its capabilities and version,
which is what makes vSphere show the tools as installed), one ``Set_Option``
per option the VMX manages, and from then on a ``ping`` every few seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ..codecs.tclo import CAPABILITIES_REGISTER, RESET, RESET_REPLY_PREFIX, TCLOError, parse_reply, set_option

log = Logger()

# The options this simulated VMX manages, in the order an ESXi VMX sends them: the guest
# broadcasts its primary IP, leaves the clock alone, and runs its power-operation scripts.
MANAGED_OPTIONS: tuple[tuple[bytes, bytes], ...] = (
    (b"broadcastIP", b"1"),
    (b"synctime", b"0"),
    (b"toolScripts.afterPowerOn", b"1"),
    (b"toolScripts.afterResume", b"1"),
    (b"toolScripts.beforeSuspend", b"1"),
    (b"toolScripts.beforePowerOff", b"1"),
)


def start_sequence(options: Sequence[tuple[bytes, bytes]] = MANAGED_OPTIONS) -> list[bytes]:
    """The TCLO commands of a greeting, in order (the pings follow)."""
    return [RESET, CAPABILITIES_REGISTER, *(set_option(name, value) for name, value in options)]


async def greet(
    send: Callable[[bytes], Deferred[bytes]], options: Sequence[tuple[bytes, bytes]] = MANAGED_OPTIONS
) -> bool:
    """Send the start sequence one command at a time; True if the guest answered all of it.

    A command the guest refuses (``ERROR …``) does not stop the sequence, as
    a guest without a plugin still gets the rest; a guest that stops
    answering (timeout, channel closed) does: the next channel starts over.
    """
    for command in start_sequence(options):
        try:
            reply = parse_reply(await send(command))
        except TCLOError as error:
            log.warn("guest answered {command!r} with garbage: {error}", command=command, error=str(error))
            continue
        except Exception as error:
            log.info("start sequence stopped at {command!r}: {error}", command=command, error=str(error))
            return False
        if command == RESET and not (reply.ok and reply.body.startswith(RESET_REPLY_PREFIX)):
            log.warn("guest answered reset with {reply!r}", reply=reply.encode()[:60])
        elif not reply.ok:
            log.info("guest refused {command!r}: {body!r}", command=command, body=reply.body[:60])
    return True
