"""The VMX's TCLO queue refuses what would block it, under ``python -O`` too."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from twisted.internet.task import Clock

from tests.support import Harness
from twisted_vmtools.vmx.tclo_queue import MAX_COMMAND, TCLOQueue, TCLORefused


@pytest.mark.parametrize("command", [b"", b" ", b"\0", b"  \0"])
def test_an_empty_command_is_refused(command: bytes) -> None:
    queue = TCLOQueue(Clock())
    with pytest.raises(TCLORefused, match="empty"):
        queue.send(command)
    assert not queue.busy and queue.take() is None


@pytest.mark.parametrize("timeout", [math.nan, -1.0, 0.0, 0, math.inf, -math.inf, True, "5"])
def test_a_timeout_that_is_not_a_positive_finite_number_is_refused(timeout: object) -> None:
    clock = Clock()
    queue = TCLOQueue(clock)
    with pytest.raises(TCLORefused, match="timeout"):
        queue.send(b"ping", timeout)  # type: ignore[arg-type]
    assert clock.getDelayedCalls() == [] and queue.take() is None


def test_a_command_larger_than_a_guest_accepts_is_refused() -> None:
    queue = TCLOQueue(Clock())
    with pytest.raises(TCLORefused, match="exceeds"):
        queue.send(b"x" * (MAX_COMMAND + 1))
    queue.send(b"x" * MAX_COMMAND)
    assert queue.take() == b"x" * MAX_COMMAND


def test_the_checks_hold_under_python_dash_O() -> None:
    script = (
        "import math\n"
        "from twisted.internet.task import Clock\n"
        "from twisted_vmtools.vmx.tclo_queue import TCLOQueue, TCLORefused\n"
        "assert False, 'asserts must be off for this test'\n"
    )
    probe = (
        "q = TCLOQueue(Clock())\n"
        "for args in ((b'',), (b'ping', math.nan)):\n"
        "    try:\n"
        "        q.send(*args)\n"
        "    except TCLORefused:\n"
        "        continue\n"
        "    raise SystemExit(f'accepted {args!r}')\n"
    )
    done = subprocess.run([sys.executable, "-O", "-c", script + probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_an_empty_command_never_delays_the_next_one() -> None:
    harness = Harness()
    harness.start()
    with pytest.raises(TCLORefused):
        harness.vmx.send(b"")
    assert harness.send(b"ping") == b"OK "


@pytest.mark.parametrize(("command", "timeout"), [(b"", 5.0), (b"ping", math.nan), (b"ping", -1.0), (b"ping", 0.0)])
def test_the_control_channel_refuses_them_with_a_clear_error(command: bytes, timeout: float) -> None:
    from twisted.python.failure import Failure

    from tests.vmx.test_control import control
    from twisted_vmtools.vmx.control import SendTCLO

    harness = Harness()
    harness.start()
    outcome: list[object] = []
    control(harness).callRemote(SendTCLO, command=command, timeout=timeout).addBoth(outcome.append)
    harness.settle()
    assert isinstance(outcome[0], Failure) and outcome[0].check(TCLORefused)
    assert "empty" in outcome[0].getErrorMessage() or "timeout" in outcome[0].getErrorMessage()
    assert harness.send(b"ping") == b"OK "
