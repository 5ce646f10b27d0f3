"""The VMX's power buttons: send an ``OS_*`` command and wait for the guest's state-change report.

vSphere's "Shut Down Guest OS", "Restart Guest OS" and "Standby" send
``OS_Halt``, ``OS_Reboot`` and ``OS_Suspend``; the guest answers at once and
reports ``tools.os.statechange.status <1|0> <state>`` when its script is
done (a guest with scripts disabled reports before it answers, so the
watch starts before the command goes out).
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.protocols import amp

from ..codecs.powerops import STATUS_COMMAND, PowerOpsError, PowerState, parse_status_args
from ..codecs.tclo import TCLOError, parse_reply
from .model import VMX, RPCRecord
from .tclo_queue import GuestGone, NoGuest, TCLORefused, TCLOTimeout

# What `vmtools-sim power` offers, in vSphere's words.
OPERATIONS: dict[str, PowerState] = {
    "shutdown": PowerState.HALT,
    "reboot": PowerState.REBOOT,
    "standby": PowerState.SUSPEND,
}


class StateChangeTimeout(Exception):
    """The guest answered the power command but never reported the state change."""


@dataclass(frozen=True)
class PowerResult:
    reply: bytes  # the guest's TCLO reply
    success: bool | None  # the reported outcome; None when the command was refused (no report follows)
    state: int


async def power_operation(vmx: VMX, clock: IReactorTime, state: PowerState, timeout: float) -> PowerResult:
    """Send ``state``'s command; wait (up to ``timeout`` s in all) for its report."""
    reported: Deferred[bool] = Deferred()

    def watch(record: RPCRecord) -> None:
        if reported.called or record.direction != "rpci-in" or not record.data.startswith(STATUS_COMMAND + b" "):
            return
        try:
            status = parse_status_args(record.data[len(STATUS_COMMAND) + 1 :])
        except PowerOpsError:
            return
        if status.state == state:
            reported.callback(status.success)

    vmx.observe(watch)
    timer = clock.callLater(timeout, _expire, reported, state)
    try:
        reply = await vmx.send(state.command, timeout)
        try:
            refused = not parse_reply(reply).ok
        except TCLOError:
            refused = True
        if refused and not reported.called:
            return PowerResult(reply, None, state)
        return PowerResult(reply, await reported, state)
    finally:
        vmx.unobserve(watch)
        if timer.active():
            timer.cancel()


def _expire(reported: Deferred[bool], state: PowerState) -> None:
    if not reported.called:
        reported.errback(StateChangeTimeout(f"no state-change report for {state.command.decode()}"))


class PowerOp(amp.Command):
    """The control channel's power button: `power_operation` for one of `OPERATIONS`."""

    arguments = [(b"operation", amp.Unicode()), (b"timeout", amp.Float())]
    response = [(b"reply", amp.String()), (b"reported", amp.Boolean()), (b"success", amp.Boolean()),
                (b"state", amp.Integer())]
    # NoGuest before GuestGone, its base: AMP sends the first class that matches.
    errors = {StateChangeTimeout: b"STATE_CHANGE_TIMEOUT", TCLOTimeout: b"TCLO_TIMEOUT", NoGuest: b"NO_GUEST",
              GuestGone: b"GUEST_GONE", TCLORefused: b"TCLO_REFUSED", KeyError: b"UNKNOWN_OPERATION"}


async def power_responder(vmx: VMX, operation: str, timeout: float) -> dict[str, object]:
    vmx.require_guest()
    result = await power_operation(vmx, vmx.clock, OPERATIONS[operation], timeout)
    return {"reply": result.reply[:4096], "reported": result.success is not None, "success": bool(result.success),
            "state": int(result.state)}
