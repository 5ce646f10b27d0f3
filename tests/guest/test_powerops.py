"""Power operations against the simulated VMX, with a recording handler: nothing ever shuts down."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred

from tests.support import Harness
from twisted_vmtools.codecs.powerops import PowerState
from twisted_vmtools.guest.powerops import PowerScriptError

OPERATIONS = [
    (b"OS_Halt", PowerState.HALT, True),
    (b"OS_Reboot", PowerState.REBOOT, True),
    (b"OS_PowerOn", PowerState.POWERON, False),
    (b"OS_Resume", PowerState.RESUME, False),
    (b"OS_Suspend", PowerState.SUSPEND, False),
]


def started() -> Harness:
    harness = Harness()
    harness.start()
    return harness


def power_rpcs(harness: Harness, mark: int = 0) -> list[bytes]:
    return [r.data for r in list(harness.vmx.records)[mark:]
            if r.direction == "rpci-in" and r.data.startswith((b"tools.os.statechange", b"log "))]


@pytest.mark.parametrize(("command", "state", "shuts_down"), OPERATIONS)
def test_each_operation_replies_reports_and_calls_the_handler(
    command: bytes, state: PowerState, shuts_down: bool
) -> None:
    harness = started()
    mark = len(harness.vmx.records)
    assert harness.send(command) == b"OK "
    assert harness.power.ran == [state]
    assert list(harness.vmx.tools.state_changes) == [(1, int(state))]
    expected = [
        f"log Executing script for state change '{command.decode()}'.\0".encode(),
        b"log Script exit code: 0, success = 1\0",
        b"tools.os.statechange.status 1 %d\0" % state,  # byte-exact, NUL included, as vmtoolsd
    ]
    if shuts_down:
        expected.append(b"log Initiating halt.\0" if state is PowerState.HALT else b"log Initiating reboot.\0")
    assert power_rpcs(harness, mark) == expected
    assert harness.power.shut_downs == ([state] if shuts_down else [])


def test_a_failing_script_is_reported_failed_and_the_retry_goes_through() -> None:
    harness = started()
    harness.power.scripts[PowerState.HALT] = False
    assert harness.send(b"OS_Halt") == b"OK "
    assert list(harness.vmx.tools.state_changes) == [(0, 1)]
    assert harness.power.shut_downs == []  # a failed change does not halt
    # softpowerop_retry: the same change asked again succeeds even if its script fails again.
    assert harness.send(b"OS_Halt") == b"OK "
    assert list(harness.vmx.tools.state_changes) == [(0, 1), (1, 1)]
    assert harness.power.shut_downs == [PowerState.HALT]


def test_a_failing_hook_is_reported_failed() -> None:
    harness = started()
    broken: Deferred[bool] = Deferred()
    harness.power.scripts[PowerState.SUSPEND] = broken
    assert harness.send(b"OS_Suspend") == b"OK "
    broken.errback(RuntimeError("hook exploded"))
    harness.settle()
    assert list(harness.vmx.tools.state_changes) == [(0, 5)]


def test_a_script_that_cannot_start() -> None:
    harness = started()
    harness.power.scripts[PowerState.REBOOT] = PowerScriptError("no such file")
    assert harness.send(b"OS_Reboot") == b"ERROR Error starting script"
    assert list(harness.vmx.tools.state_changes) == [(0, 2)]
    assert harness.power.shut_downs == []


def test_two_state_changes_at_once() -> None:
    harness = started()
    script: Deferred[bool] = Deferred()
    harness.power.scripts[PowerState.SUSPEND] = script
    assert harness.send(b"OS_Suspend") == b"OK "  # answered while the script runs
    assert list(harness.vmx.tools.state_changes) == []
    assert harness.send(b"OS_Reboot") == b"ERROR State change already in progress"
    assert harness.send(b"OS_Suspend") == b"ERROR State change already in progress"
    script.callback(True)
    harness.settle()
    assert list(harness.vmx.tools.state_changes) == [(1, 5)]
    assert harness.send(b"OS_Reboot") == b"OK "
    assert list(harness.vmx.tools.state_changes) == [(1, 5), (1, 2)]
    assert harness.power.ran == [PowerState.SUSPEND, PowerState.REBOOT]


def test_disabled_scripts_report_success_at_once() -> None:
    harness = started()
    assert harness.send(b"Set_Option toolScripts.beforePowerOff 0") == b"OK "
    assert harness.send(b"OS_Reboot") == b"OK "
    assert harness.power.ran == []  # no script, but the reboot itself still happens
    assert list(harness.vmx.tools.state_changes) == [(1, 2)]
    assert harness.power.shut_downs == [PowerState.REBOOT]
    assert harness.send(b"Set_Option toolScripts.beforePowerOff 1") == b"OK "
    assert harness.send(b"OS_Halt") == b"OK "
    assert harness.power.ran == [PowerState.HALT]


def test_no_script_configured_is_a_success() -> None:
    harness = started()
    harness.power.scripts[PowerState.POWERON] = None
    assert harness.send(b"OS_PowerOn") == b"OK "
    assert list(harness.vmx.tools.state_changes) == [(1, 3)]
    assert b"log Script exit code: 0, success = 1\0" not in power_rpcs(harness)


def test_the_vmx_greeting_enables_the_scripts() -> None:
    harness = started()
    power = harness.service.power
    assert power is not None
    assert all(power.scripts_enabled.values())
    assert power.set_option(b"toolScripts.afterResume", b"maybe") is False
    assert power.set_option(b"somethingElse", b"0") is False
