"""Power operations: the ``OS_*`` TCLO commands and the state-change report (protocol.md §4.1).

The VMX asks the guest to halt, reboot, or notes that it powered on,
resumed or is about to suspend; the guest runs its script for the change,
answers ``OK `` (or ``ERROR State change already in progress`` / ``ERROR
Error starting script``), and when the script ends reports
``tools.os.statechange.status <1|0> <state>`` with a NUL, as vmtoolsd does.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from .errors import CodecError

STATUS_COMMAND = b"tools.os.statechange.status"
# What a guest with power operations announces on Capabilities_Register.
CAPABILITIES: tuple[bytes, ...] = (b"tools.capability.statechange ", b"tools.capability.softpowerop_retry ")
IN_PROGRESS = b"State change already in progress"
SCRIPT_FAILED_TO_START = b"Error starting script"
DEFAULT_SCRIPT_DIR = "/etc/vmware-tools"  # where vmtoolsd looks for relative script names on Linux


class PowerOpsError(CodecError):
    """A malformed state-change report."""


class PowerState(IntEnum):
    """``GuestOsState`` (powerops.h)."""

    HALT = 1
    REBOOT = 2
    POWERON = 3
    RESUME = 4
    SUSPEND = 5

    @property
    def command(self) -> bytes:
        return TCLO_COMMANDS[self]

    @property
    def script_setting(self) -> str:
        """The ``[powerops]`` tools.conf key naming this change's script (halt and reboot share one)."""
        return SCRIPT_SETTINGS[self]

    @property
    def default_script(self) -> str:
        return DEFAULT_SCRIPTS[self.script_setting]

    @property
    def script_option(self) -> bytes:
        """The ``Set_Option toolScripts.*`` that turns this change's script on or off."""
        return SCRIPT_OPTIONS[self]


TCLO_COMMANDS: dict[PowerState, bytes] = {
    PowerState.HALT: b"OS_Halt",
    PowerState.REBOOT: b"OS_Reboot",
    PowerState.POWERON: b"OS_PowerOn",
    PowerState.RESUME: b"OS_Resume",
    PowerState.SUSPEND: b"OS_Suspend",
}
STATE_BY_COMMAND: dict[bytes, PowerState] = {command: state for state, command in TCLO_COMMANDS.items()}

SCRIPT_SETTINGS: dict[PowerState, str] = {
    PowerState.HALT: "poweroff-script",
    PowerState.REBOOT: "poweroff-script",
    PowerState.POWERON: "poweron-script",
    PowerState.RESUME: "resume-script",
    PowerState.SUSPEND: "suspend-script",
}
DEFAULT_SCRIPTS: dict[str, str] = {
    "poweroff-script": "poweroff-vm-default",
    "poweron-script": "poweron-vm-default",
    "resume-script": "resume-vm-default",
    "suspend-script": "suspend-vm-default",
}
SCRIPT_OPTIONS: dict[PowerState, bytes] = {
    PowerState.HALT: b"toolScripts.beforePowerOff",
    PowerState.REBOOT: b"toolScripts.beforePowerOff",
    PowerState.POWERON: b"toolScripts.afterPowerOn",
    PowerState.RESUME: b"toolScripts.afterResume",
    PowerState.SUSPEND: b"toolScripts.beforeSuspend",
}


@dataclass(frozen=True)
class StateChangeStatus:
    success: bool
    state: int  # a PowerState when the guest is well-behaved

    def encode(self) -> bytes:
        """The RPCI request, with the NUL vmtoolsd sends."""
        return b"%s %d %d\0" % (STATUS_COMMAND, int(self.success), self.state)


def parse_status_args(args: bytes) -> StateChangeStatus:
    """The arguments of a ``tools.os.statechange.status`` request (NUL already removed or not)."""
    words = args.rstrip(b"\0").split()
    if len(words) != 2 or words[0] not in (b"0", b"1") or not words[1].isdigit() or len(words[1]) > 10:
        raise PowerOpsError(f"state-change status is not '<0|1> <state>': {args[:40]!r}")
    return StateChangeStatus(words[0] == b"1", int(words[1]))
