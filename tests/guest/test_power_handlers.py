"""The default power handler, only ever with an injected command runner (no real shutdown, ever)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from tests.support import result_of
from twisted_vmtools.codecs.powerops import PowerState
from twisted_vmtools.guest.power_handlers import (
    HALT_COMMAND,
    REBOOT_COMMAND,
    CommandPowerHandler,
    ICommandRunner,
    ProcessRunner,
    command_option,
    load_power_hook,
    script_paths,
)
from twisted_vmtools.guest.powerops import PowerScriptError
from twisted_vmtools.toolsconf import load_tools_conf


@implementer(ICommandRunner)
class RecordingRunner:
    def __init__(self, codes: dict[str, int] | None = None, missing: Sequence[str] = ()) -> None:
        self.ran: list[tuple[str, ...]] = []
        self.codes = codes or {}
        self.missing = set(missing)

    def run(self, argv: Sequence[str]) -> Deferred[int]:
        if argv[0] in self.missing:
            raise OSError(f"{argv[0]} is not an executable")
        self.ran.append(tuple(argv))
        return succeed(self.codes.get(argv[0], 0))


SCRIPTS = {state: f"/etc/vmware-tools/{state.default_script}" for state in PowerState}


def test_vmtoolsd_commands_and_scripts() -> None:
    runner = RecordingRunner(codes={"/etc/vmware-tools/suspend-vm-default": 3})
    handler = CommandPowerHandler(runner, SCRIPTS)
    assert result_of(handler.run_script(PowerState.HALT)) is True
    assert result_of(handler.run_script(PowerState.SUSPEND)) is False  # exit code 3
    handler.shut_down(PowerState.HALT)
    handler.shut_down(PowerState.REBOOT)
    assert runner.ran == [
        ("/etc/vmware-tools/poweroff-vm-default",),
        ("/etc/vmware-tools/suspend-vm-default",),
        ("/sbin/shutdown", "-h", "now"),
        ("/sbin/shutdown", "-r", "now"),
    ]
    assert HALT_COMMAND == ("/sbin/shutdown", "-h", "now") and REBOOT_COMMAND == ("/sbin/shutdown", "-r", "now")


def test_configured_commands_none_and_missing_scripts() -> None:
    runner = RecordingRunner(missing=["/opt/off.sh"])
    handler = CommandPowerHandler(runner, {PowerState.HALT: "/opt/off.sh", PowerState.RESUME: None},
                                  halt_command=("/usr/bin/systemctl", "poweroff"), reboot_command=None)
    with pytest.raises(PowerScriptError):
        handler.run_script(PowerState.HALT)
    assert handler.run_script(PowerState.RESUME) is None
    assert handler.shut_down(PowerState.REBOOT) is None
    handler.shut_down(PowerState.HALT)
    assert runner.ran == [("/usr/bin/systemctl", "poweroff")]


def test_a_python_hook_replaces_the_scripts() -> None:
    calls: list[str] = []

    def hook(state: str) -> bool:
        calls.append(state)
        return state != "suspend"

    runner = RecordingRunner()
    handler = CommandPowerHandler(runner, SCRIPTS, hook=hook)
    assert handler.run_script(PowerState.POWERON) is True
    assert handler.run_script(PowerState.SUSPEND) is False
    assert calls == ["poweron", "suspend"] and runner.ran == []

    def broken(state: str) -> bool:
        raise RuntimeError("no")

    with pytest.raises(PowerScriptError, match="no"):
        CommandPowerHandler(runner, SCRIPTS, hook=broken).run_script(PowerState.HALT)


def test_script_paths(tmp_path: Path) -> None:
    (tmp_path / "poweron-vm-default").write_text("#!/bin/sh\n")
    conf_file = tmp_path / "tools.conf"
    conf_file.write_text("[powerops]\nsuspend-script =\nresume-script = my-resume\n")
    paths = script_paths(load_tools_conf(str(conf_file)), {"poweroff-script": "/opt/off.sh"}, str(tmp_path))
    assert paths[PowerState.POWERON] == str(tmp_path / "poweron-vm-default")  # the default, installed
    assert paths[PowerState.HALT] == paths[PowerState.REBOOT] == "/opt/off.sh"  # one setting for both
    assert paths[PowerState.SUSPEND] is None  # empty: no script
    assert paths[PowerState.RESUME] == str(tmp_path / "my-resume")  # configured: kept even if missing
    assert script_paths(script_dir=str(tmp_path / "none"))[PowerState.POWERON] is None  # default not installed


def test_command_option() -> None:
    assert command_option(None, HALT_COMMAND) == HALT_COMMAND
    assert command_option("systemctl 'poweroff'", HALT_COMMAND) == ("systemctl", "poweroff")
    assert command_option("", HALT_COMMAND) is None


def test_load_power_hook() -> None:
    assert load_power_hook("os.path:basename") is os.path.basename
    for bad in ("os.path", "no_such_module_xyz:f", "os:no_such_attribute", "os:sep", ":f"):
        with pytest.raises(ValueError):
            load_power_hook(bad)


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_process_runner_reports_exit_codes(tmp_path: Path) -> None:
    # Harmless programs only: the runner is what would start /sbin/shutdown.
    from twisted.internet import reactor

    runner = ProcessRunner(reactor)  # type: ignore[arg-type]
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\nexit 4\n")
    script.chmod(0o755)
    with pytest.raises(OSError):
        runner.run([str(tmp_path / "missing")])
    assert await runner.run([sys.executable, "-c", "pass"]) == 0
    assert await runner.run([str(script)]) == 4
