"""The default `IPowerHandler`: vmtoolsd's scripts and shutdown commands, or a Python hook.

What runs goes through an `ICommandRunner`, so nothing in the test suite
ever starts a real shutdown: tests inject a runner that records.
"""

from __future__ import annotations

import importlib
import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from ..codecs.powerops import DEFAULT_SCRIPT_DIR, PowerState
from ..toolsconf import ToolsConf
from .powerops import IPowerHandler, PowerScriptError

HALT_COMMAND = ("/sbin/shutdown", "-h", "now")  # what vmtoolsd runs (lib/system/systemLinux.c)
REBOOT_COMMAND = ("/sbin/shutdown", "-r", "now")

PowerHook = Callable[[str], Any]  # called with "halt", "reboot", "poweron", "resume" or "suspend"


class ICommandRunner(Interface):
    def run(argv: Sequence[str]) -> Deferred[int]:
        """Start ``argv``; fire with its exit code (a signal fails).  Raise `OSError` if it cannot start."""


class _ExitCode(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred[int] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        if reason.check(ProcessDone):
            self.ended.callback(0)
        elif getattr(reason.value, "signal", None) is not None:
            self.ended.errback(OSError(f"killed by signal {getattr(reason.value, 'signal', None)}"))
        else:
            self.ended.callback(getattr(reason.value, "exitCode", None) or 1)


@implementer(ICommandRunner)
class ProcessRunner:
    """Runs commands on the reactor, output discarded, as vmtoolsd runs its scripts."""

    def __init__(self, reactor: IReactorProcess) -> None:
        self.reactor = reactor

    def run(self, argv: Sequence[str]) -> Deferred[int]:
        if not argv or not os.access(argv[0], os.X_OK):
            raise OSError(f"{argv[0] if argv else '(nothing)'} is not an executable")
        protocol = _ExitCode()
        self.reactor.spawnProcess(protocol, argv[0], list(argv), env=dict(os.environ),
                                  childFDs={0: "w", 1: "r", 2: "r"})
        return protocol.ended


@implementer(IPowerHandler)
class CommandPowerHandler:
    """vmtoolsd's behaviour: each change runs its script (or ``hook``), halt and reboot run a command.

    ``scripts`` maps each state to a script path (None: no script); a
    ``hook`` replaces the scripts with a Python callable given the state's
    name, whose (possibly awaitable) result says whether it succeeded.  A
    shutdown command of None does nothing (the VMX still gets its report).
    """

    log = Logger()

    def __init__(
        self,
        runner: ICommandRunner,
        scripts: Mapping[PowerState, str | None],
        *,
        halt_command: Sequence[str] | None = HALT_COMMAND,
        reboot_command: Sequence[str] | None = REBOOT_COMMAND,
        hook: PowerHook | None = None,
    ) -> None:
        self.runner = runner
        self.scripts = dict(scripts)
        self.commands = {PowerState.HALT: halt_command, PowerState.REBOOT: reboot_command}
        self.hook = hook

    def run_script(self, state: PowerState) -> Any:
        if self.hook is not None:
            try:
                return self.hook(state.name.lower())
            except Exception as error:
                raise PowerScriptError(f"the power hook failed: {error}") from error
        script = self.scripts.get(state)
        if not script:
            return None
        try:
            return self.runner.run([script]).addCallback(lambda code: code == 0)
        except OSError as error:
            raise PowerScriptError(str(error)) from None

    def shut_down(self, state: PowerState) -> Deferred[None] | None:
        command = self.commands.get(state)
        if not command:
            self.log.info("no command configured for {state}: the guest stays up", state=state.name)
            return None
        return self.runner.run(command).addCallback(self._ran, command)

    def _ran(self, code: int, command: Sequence[str]) -> None:
        if code:
            self.log.warn("{command} exited with {code}", command=" ".join(command), code=code)


def script_paths(
    conf: ToolsConf | None = None,
    overrides: Mapping[str, str | None] | None = None,
    script_dir: str = DEFAULT_SCRIPT_DIR,
) -> dict[PowerState, str | None]:
    """Each state's script: an override (by tools.conf key, e.g. ``poweron-script``), else tools.conf's
    ``[powerops]`` setting, else vmtoolsd's default name; relative names are in ``script_dir``.

    An empty setting means no script.  A default script that does not exist
    means none too (vmtoolsd would report a failure, then succeed on the retry);
    a configured one that does not exist fails the change, as with vmtoolsd.
    """
    paths: dict[PowerState, str | None] = {}
    for state in PowerState:
        setting = state.script_setting
        chosen = (overrides or {}).get(setting)
        if chosen is None:
            chosen = (conf or ToolsConf()).get("powerops", setting)
        default = chosen is None
        name = state.default_script if default else chosen
        if not name:
            paths[state] = None
            continue
        path = name if os.path.isabs(name) else os.path.join(script_dir, name.strip('"'))
        paths[state] = None if default and not os.path.exists(path) else path
    return paths


def command_option(text: str | None, default: Sequence[str]) -> tuple[str, ...] | None:
    """``--halt-command`` / ``--reboot-command``: a shell-quoted command; empty means none."""
    if text is None:
        return tuple(default)
    words = shlex.split(text)
    return tuple(words) if words else None


def load_power_hook(spec: str) -> PowerHook:
    """``module:callable`` → the callable; `ValueError` with a sentence if it is not one."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"--power-hook must be module:callable, not {spec!r}")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot load the power hook {spec!r}: {error}") from None
    if not callable(target):
        raise ValueError(f"the power hook {spec!r} is not callable")
    return target  # type: ignore[no-any-return]
