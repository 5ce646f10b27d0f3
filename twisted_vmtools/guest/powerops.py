"""`PowerOps`: the guest feature answering ``OS_Halt``, ``OS_Reboot``, ``OS_PowerOn``, ``OS_Resume``, ``OS_Suspend``.

It behaves as open-vm-tools' powerOps plugin does (protocol.md §4.1):

1. while a state change's script runs, any other ``OS_*`` command gets
   ``ERROR State change already in progress``;
2. the change's script runs (through an `IPowerHandler`); the command is
   answered ``OK `` at once, or ``ERROR Error starting script``;
3. when the script ends, ``tools.os.statechange.status <1|0> <state>`` is
   reported — as success if the same change failed last time
   (``softpowerop_retry``), so a second try from vSphere goes through;
4. after a successful halt or reboot, the handler shuts the guest down.

A script disabled by ``Set_Option toolScripts.* 0`` (or none configured)
counts as a success at once.  What runs is the handler's business: the
default runs the configured scripts and ``/sbin/shutdown``; tests and
embedders pass their own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from zope.interface import Interface, implementer

from ..codecs.powerops import (
    CAPABILITIES,
    IN_PROGRESS,
    SCRIPT_FAILED_TO_START,
    SCRIPT_OPTIONS,
    TCLO_COMMANDS,
    PowerState,
    StateChangeStatus,
)
from ..codecs.rpci import LOG
from ..codecs.tclo import SET_OPTION, parse_option
from ..protocols.rpci import RPCI
from ..protocols.tclo import TCLODispatcher, TCLOHandlerError
from .feature import IGuestFeature


class PowerScriptError(Exception):
    """The state change's script could not be started."""


class IPowerHandler(Interface):
    """What the guest does for a power operation.  Replace it to do something else (or, in tests, record)."""

    def run_script(state: PowerState) -> Awaitable[bool] | bool | None:
        """Start the change's script; its outcome (True: success), or None if there is none to run.

        Raise `PowerScriptError` if it cannot be started.
        """

    def shut_down(state: PowerState) -> Awaitable[None] | None:
        """Halt or reboot the guest (``state`` is HALT or REBOOT), after the success was reported."""


@implementer(IGuestFeature)
class PowerOps(Service):
    """The ``OS_*`` handlers over an `IPowerHandler`; `changing` is the Deferred of the change running."""

    log = Logger()
    name = "powerops"
    # statechange: the VMX may send OS_* commands; softpowerop_retry: a failed one may be retried.
    capabilities = CAPABILITIES
    rpci: RPCI  # given by install

    def __init__(self, handler: IPowerHandler) -> None:
        self.handler = handler
        self.scripts_enabled = dict.fromkeys(PowerState, True)
        self.changing: Deferred[None] | None = None
        self._last_failed: PowerState | None = None

    def install(self, dispatcher: TCLODispatcher, rpci: RPCI) -> None:
        self.rpci = rpci
        for state in PowerState:
            dispatcher.register(TCLO_COMMANDS[state], self._handler(state))
        dispatcher.observe(SET_OPTION, self._option_set)  # the core owns Set_Option

    def _option_set(self, args: bytes) -> None:
        self.set_option(*parse_option(args))

    def _handler(self, state: PowerState) -> Callable[[bytes], Coroutine[Any, Any, bytes]]:
        def handle(args: bytes) -> Coroutine[Any, Any, bytes]:
            return self.state_change(state)

        return handle

    def set_option(self, name: bytes, value: bytes) -> bool:
        """``Set_Option toolScripts.* 0|1``; False for any other option or value."""
        if value not in (b"0", b"1"):
            return False
        states = [state for state, option in SCRIPT_OPTIONS.items() if option == name]
        for state in states:
            self.scripts_enabled[state] = value == b"1"
        return bool(states)

    async def state_change(self, state: PowerState) -> bytes:
        if self.changing is not None:
            self.log.info("{command!r} refused: a state change is in progress", command=state.command)
            raise TCLOHandlerError(IN_PROGRESS)
        if not self.scripts_enabled[state]:
            await self._done(state, True)
            return b""
        await self._log(f"Executing script for state change '{state.command.decode()}'.")
        try:
            outcome = self.handler.run_script(state)
        except PowerScriptError as error:
            self.log.warn("the script for {state} did not start: {error}", state=state.name, error=str(error))
            await self._done(state, False)
            raise TCLOHandlerError(SCRIPT_FAILED_TO_START) from None
        if outcome is None:
            await self._done(state, True)
            return b""
        # Answer now; the report follows when the script ends, as with vmtoolsd.
        changing = ensureDeferred(self._finish(state, outcome))
        if not changing.called:  # a script that ended at once leaves nothing in progress
            self.changing = changing
        return b""

    async def _finish(self, state: PowerState, outcome: Awaitable[bool] | bool) -> None:
        try:
            success = bool(await outcome) if not isinstance(outcome, bool) else outcome
        except Exception as error:
            self.log.warn("the script for {state} failed: {error}", state=state.name, error=str(error))
            success = False
        await self._log(f"Script exit code: {0 if success else 1}, success = {int(success)}")
        try:
            await self._done(state, success)
        finally:
            self.changing = None

    async def _done(self, state: PowerState, success: bool) -> None:
        """Report the change, then carry out a successful halt or reboot."""
        if success or self._last_failed is state:
            success, self._last_failed = True, None  # softpowerop_retry: a second try goes through
        else:
            self._last_failed = state
        await self._send(StateChangeStatus(success, state).encode())
        if success and state in (PowerState.HALT, PowerState.REBOOT):
            await self._log("Initiating reboot." if state is PowerState.REBOOT else "Initiating halt.")
            try:
                await _maybe_await(self.handler.shut_down(state))
            except Exception:
                self.log.failure("shutting down for {state} failed", state=state.name)

    async def _log(self, message: str) -> None:
        await self._send(LOG + b" " + message.encode("utf-8") + b"\0")

    async def _send(self, request: bytes) -> None:
        try:
            await self.rpci.call(request)
        except Exception as error:
            self.log.warn("{request!r} was not delivered: {error}", request=request[:40], error=str(error))


async def _maybe_await(value: Any) -> Any:
    if hasattr(value, "__await__") or isinstance(value, Deferred):
        return await value
    return value
