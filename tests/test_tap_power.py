"""``twistd vmtools`` power options: commands, scripts and hook reach the handler (nothing is run)."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.python import usage

from twisted_vmtools.codecs.powerops import PowerState
from twisted_vmtools.guest.power_handlers import CommandPowerHandler
from twisted_vmtools.tap import Options
from twisted_vmtools.tap_power import power_handler


def parsed(*argv: str) -> Options:
    options = Options()
    options.parseOptions(["--transport", "unix:/nowhere", *argv])
    return options


def test_defaults_are_vmtoolsd_s(tmp_path: Path) -> None:
    options = parsed("--scripts-dir", str(tmp_path))
    handler = power_handler(options, None, options["tools-conf"])
    assert isinstance(handler, CommandPowerHandler)
    assert handler.commands == {PowerState.HALT: ("/sbin/shutdown", "-h", "now"),
                                PowerState.REBOOT: ("/sbin/shutdown", "-r", "now")}
    assert set(handler.scripts.values()) == {None}  # no default script installed in an empty directory
    assert handler.hook is None


def test_commands_scripts_and_hook(tmp_path: Path) -> None:
    conf = tmp_path / "tools.conf"
    conf.write_text("[powerops]\nresume-script = /opt/resume.sh\n")
    options = parsed("--config", str(conf), "--halt-command", "systemctl poweroff", "--reboot-command", "",
                     "--poweron-script", "/opt/on.sh", "--suspend-script", "", "--power-hook", "os.path:exists")
    handler = power_handler(options, None, options["tools-conf"])
    assert isinstance(handler, CommandPowerHandler)
    assert handler.commands == {PowerState.HALT: ("systemctl", "poweroff"), PowerState.REBOOT: None}
    assert handler.scripts[PowerState.POWERON] == "/opt/on.sh"
    assert handler.scripts[PowerState.RESUME] == "/opt/resume.sh"
    assert handler.scripts[PowerState.SUSPEND] is None
    assert handler.hook is not None and handler.hook.__name__ == "exists"


@pytest.mark.parametrize("argv", [("--power-hook", "no_such_module_xyz:f"), ("--power-hook", "os"),
                                  ("--halt-command", "'unbalanced")])
def test_bad_power_options_are_usage_errors(argv: tuple[str, str]) -> None:
    with pytest.raises(usage.UsageError):
        parsed(*argv)
