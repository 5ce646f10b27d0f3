"""``twistd vmtools`` options for power operations: the shutdown commands, the scripts, or a Python hook.

Kept apart from tap.py's general options; tap.py adds `POWER_PARAMETERS`
to its own and calls `check_power_options` and `power_handler`.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from .codecs.powerops import DEFAULT_SCRIPT_DIR, DEFAULT_SCRIPTS
from .guest.power_handlers import (
    HALT_COMMAND,
    REBOOT_COMMAND,
    CommandPowerHandler,
    ProcessRunner,
    command_option,
    load_power_hook,
    script_paths,
)
from .guest.powerops import IPowerHandler
from .toolsconf import ToolsConf

POWER_PARAMETERS: list[list[Any]] = [
    ["halt-command", None, None, "run after a successful OS_Halt (default: /sbin/shutdown -h now; '' for none)"],
    ["reboot-command", None, None, "run after a successful OS_Reboot (default: /sbin/shutdown -r now; '' for none)"],
    *(
        [setting, None, None, f"the {setting.split('-')[0]} script (default: tools.conf [powerops], else "
                              f"{default} in the scripts directory; '' for none)"]
        for setting, default in DEFAULT_SCRIPTS.items()
    ),
    ["scripts-dir", None, DEFAULT_SCRIPT_DIR, "where relative script names are found"],
    ["power-hook", None, None, "module:callable called with halt|reboot|poweron|resume|suspend instead of the "
                               "scripts; its result (or awaited result) says whether it succeeded"],
]


def check_power_options(options: usage.Options) -> None:
    """Fail early, with a usage error, on a hook that does not load or a command that does not parse."""
    try:
        for name, default in (("halt-command", HALT_COMMAND), ("reboot-command", REBOOT_COMMAND)):
            command_option(options[name], default)
        if options["power-hook"]:
            load_power_hook(options["power-hook"])
    except ValueError as error:
        raise usage.UsageError(str(error)) from None


def power_handler(options: usage.Options, reactor: object, conf: ToolsConf | None) -> IPowerHandler:
    """The handler the options describe; it runs programs only when vSphere asks for a power operation."""
    overrides = {setting: options[setting] for setting in DEFAULT_SCRIPTS if options[setting] is not None}
    return CommandPowerHandler(
        ProcessRunner(reactor),  # type: ignore[arg-type]
        script_paths(conf, overrides, options["scripts-dir"]),
        halt_command=command_option(options["halt-command"], HALT_COMMAND),
        reboot_command=command_option(options["reboot-command"], REBOOT_COMMAND),
        hook=load_power_hook(options["power-hook"]) if options["power-hook"] else None,
    )
