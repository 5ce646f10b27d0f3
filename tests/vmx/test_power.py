"""The VMX's power buttons against our guest (recording handler) in memory, and the control command."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from tests.support import Harness, failure_of, result_of
from twisted_vmtools.codecs.powerops import PowerState
from twisted_vmtools.vmx.power import OPERATIONS, PowerResult, StateChangeTimeout, power_operation, power_responder


def press(harness: Harness, state: PowerState, timeout: float = 30.0) -> Deferred[PowerResult]:
    pressing = Deferred.fromCoroutine(power_operation(harness.vmx, harness.clock, state, timeout))
    harness.settle()
    return pressing


def started() -> Harness:
    harness = Harness()
    harness.start()
    return harness


def test_the_three_buttons() -> None:
    assert OPERATIONS == {"shutdown": PowerState.HALT, "reboot": PowerState.REBOOT, "standby": PowerState.SUSPEND}
    harness = started()
    for state in OPERATIONS.values():
        assert result_of(press(harness, state)) == PowerResult(b"OK ", True, state)
    assert harness.power.shut_downs == [PowerState.HALT, PowerState.REBOOT]


def test_waits_for_the_report_of_a_running_script() -> None:
    harness = started()
    script: Deferred[bool] = Deferred()
    harness.power.scripts[PowerState.SUSPEND] = script
    pressing = press(harness, PowerState.SUSPEND)
    assert not pressing.called  # answered OK, report pending
    script.callback(False)
    harness.settle()
    assert result_of(pressing) == PowerResult(b"OK ", False, PowerState.SUSPEND)


def test_refused_while_in_progress_and_failed_to_start() -> None:
    harness = started()
    harness.power.scripts[PowerState.SUSPEND] = Deferred()
    press(harness, PowerState.SUSPEND)
    assert result_of(press(harness, PowerState.REBOOT)) == PowerResult(
        b"ERROR State change already in progress", None, PowerState.REBOOT)
    harness2 = started()
    from twisted_vmtools.guest.powerops import PowerScriptError

    harness2.power.scripts[PowerState.HALT] = PowerScriptError("missing")
    # vmtoolsd reports the failure before it answers ERROR: that report is the result.
    assert result_of(press(harness2, PowerState.HALT)) == PowerResult(b"ERROR Error starting script", False,
                                                                      PowerState.HALT)


def test_a_guest_that_never_reports_times_out() -> None:
    harness = started()
    harness.power.scripts[PowerState.SUSPEND] = Deferred()
    pressing = press(harness, PowerState.SUSPEND, timeout=10)
    harness.settle(10)
    failure_of(pressing).trap(StateChangeTimeout)
    assert not any(o.__name__ == "watch" for o in harness.vmx._observers)  # type: ignore[attr-defined]


def test_control_command() -> None:
    harness = started()
    answering = Deferred.fromCoroutine(power_responder(harness.vmx, "standby", 30))
    harness.settle()
    assert result_of(answering) == {"reply": b"OK ", "reported": True, "success": True, "state": 5}
    failure_of(Deferred.fromCoroutine(power_responder(harness.vmx, "explode", 30))).trap(KeyError)
