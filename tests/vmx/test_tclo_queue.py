"""The VMX's TCLO queue: it refuses what would block it, under ``python -O`` too; its machine's
transitions, on a Clock."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from tests.support import Harness, failure_of, result_of
from twisted_vmtools.vmx.tclo_queue import (
    MAX_COMMAND,
    MAX_IN_FLIGHT,
    GuestGone,
    ITCLOPusher,
    TCLOQueue,
    TCLORefused,
    TCLOTimeout,
)


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


# -- the machine: free --deliver--> in flight --reply_last / put_back / give_up / abandon--> free


@implementer(ITCLOPusher)
class Pusher:
    def __init__(self) -> None:
        self.pushed: list[bytes] = []
        self.out_of_step_count = 0

    def push(self, command: bytes) -> None:
        self.pushed.append(command)

    def out_of_step(self) -> None:
        self.out_of_step_count += 1


def test_a_push_channel_gets_one_command_at_a_time() -> None:
    queue = TCLOQueue(Clock())
    pusher = Pusher()
    first = queue.send(b"one")
    queue.attach(pusher)
    second = queue.send(b"two")
    assert pusher.pushed == [b"one"] and queue.busy
    assert queue.reply(b"OK 1")
    assert result_of(first) == b"OK 1" and pusher.pushed == [b"one", b"two"]
    assert queue.reply(b"OK 2") and result_of(second) == b"OK 2"
    assert not queue.busy and not queue.reply(b"OK unasked")


def test_a_polled_channel_takes_refuses_and_takes_again() -> None:
    queue = TCLOQueue(Clock())
    reply = queue.send(b"one")
    queue.send(b"two")
    assert queue.take() == b"one" and queue.take() is None  # one in flight
    queue.put_back()  # the guest refused the delivery
    assert not queue.busy and queue.take() == b"one"
    assert queue.reply(b"OK ")
    assert result_of(reply) == b"OK " and queue.take() == b"two"


def test_a_polled_command_that_times_out_drops_its_late_reply_and_frees_the_guest() -> None:
    clock = Clock()
    queue = TCLOQueue(clock)
    reply = queue.send(b"one", timeout=5.0)
    later = queue.send(b"two", timeout=50.0)
    assert queue.take() == b"one"
    clock.advance(5)
    assert failure_of(reply).check(TCLOTimeout)
    assert not queue.reply(b"OK late")  # the reply after the timeout finds nothing in flight
    assert queue.take() == b"two" and queue.reply(b"OK 2") and result_of(later) == b"OK 2"


def test_a_pushed_command_that_times_out_lets_the_out_of_step_channel_go() -> None:
    clock = Clock()
    queue = TCLOQueue(clock)
    pusher = Pusher()
    queue.attach(pusher)
    reply = queue.send(b"one", timeout=5.0)
    waiting = queue.send(b"two", timeout=50.0)
    clock.advance(5)
    assert failure_of(reply).check(TCLOTimeout)
    assert pusher.out_of_step_count == 1 and not queue.pushed and pusher.pushed == [b"one"]
    queue.detach(pusher)  # its connection closes later: nothing more happens
    successor = Pusher()
    queue.attach(successor)
    assert successor.pushed == [b"two"] and not waiting.called


def test_a_queued_command_that_times_out_leaves_the_one_in_flight_alone() -> None:
    clock = Clock()
    queue = TCLOQueue(clock)
    in_flight = queue.send(b"one", timeout=50.0)
    queued = queue.send(b"two", timeout=5.0)
    assert queue.take() == b"one"
    clock.advance(5)
    assert failure_of(queued).check(TCLOTimeout) and queue.busy
    assert queue.reply(b"OK ") and result_of(in_flight) == b"OK " and queue.take() is None


def test_cancelling_the_command_in_flight_lets_its_stream_go_and_frees_a_polled_guest() -> None:
    queue = TCLOQueue(Clock())
    pusher = Pusher()
    queue.attach(pusher)
    reply = queue.send(b"one")
    queue.send(b"two")
    reply.cancel()
    assert failure_of(reply).check(CancelledError)
    # A late answer on that stream could not be told from the next one's.
    assert pusher.out_of_step_count == 1 and not queue.pushed and pusher.pushed == [b"one"]
    assert queue.take() == b"two"  # a poll gets the next one
    polled = queue.send(b"three")
    queue.reply(b"OK ")
    assert queue.take() == b"three"
    polled.cancel()
    assert not queue.busy and not queue.reply(b"OK late")


def test_the_channel_closing_while_a_command_is_in_flight_fails_it_and_the_queue_waits() -> None:
    clock = Clock()
    queue = TCLOQueue(clock)
    pusher = Pusher()
    queue.attach(pusher)
    reply = queue.send(b"reset")
    queued = queue.send(b"ping")
    queue.detach(pusher)
    assert failure_of(reply).check(GuestGone) and not queue.busy and not queued.called
    successor = Pusher()
    queue.attach(successor)
    assert successor.pushed == [b"ping"]
    assert clock.getDelayedCalls() and all(call.active() for call in clock.getDelayedCalls())


def test_a_replys_callback_may_send_close_the_channel_and_ask_if_busy() -> None:
    queue = TCLOQueue(Clock())
    pusher = Pusher()
    queue.attach(pusher)
    busy: list[bool] = []
    sent: list[Deferred[bytes]] = []

    def next_step(reply: bytes) -> None:
        busy.append(queue.busy)
        sent.append(queue.send(b"two"))
        busy.append(queue.busy)
        queue.detach(pusher)  # e.g. the guest powered off on that reply

    queue.send(b"one").addCallback(next_step)
    assert queue.reply(b"OK ")
    assert busy == [False, True] and failure_of(sent[0]).check(GuestGone)
    assert pusher.pushed == [b"one", b"two"]


def test_fail_all_fails_the_command_in_flight_and_the_queue_and_stays_usable() -> None:
    clock = Clock()
    queue = TCLOQueue(clock)
    replies = [queue.send(b"one"), queue.send(b"two")]
    assert queue.take() == b"one"
    queue.fail_all(GuestGone("the VMX stopped"))
    assert all(failure_of(reply).check(GuestGone) for reply in replies)
    assert clock.getDelayedCalls() == [] and not queue.busy
    queue.abandon(GuestGone("nothing in flight: nothing happens"))
    queue.send(b"three")
    assert queue.take() == b"three"


# -- several in flight: a pushed guest that said it takes them (`allow`)


def pipelined(clock: Clock, depth: int = 3) -> tuple[TCLOQueue, Pusher]:
    queue = TCLOQueue(clock)
    pusher = Pusher()
    queue.attach(pusher)
    queue.allow(pusher, depth)
    return queue, pusher


def test_up_to_the_advertised_number_go_at_once_and_replies_match_in_order() -> None:
    queue, pusher = pipelined(Clock())
    answers: list[bytes] = []
    for i in range(5):
        queue.send(b"c%d" % i).addCallback(answers.append)
    assert pusher.pushed == [b"c0", b"c1", b"c2"] and queue.in_flight == 3
    assert queue.reply(b"OK 0") and answers == [b"OK 0"]
    assert pusher.pushed[-1] == b"c3" and queue.in_flight == 3  # room made: the next goes at once
    for i in range(1, 5):
        assert queue.reply(b"OK %d" % i)
    assert answers == [b"OK %d" % i for i in range(5)]
    assert not queue.busy and not queue.reply(b"OK unasked")


def test_a_guest_that_did_not_advertise_stays_at_one() -> None:
    queue = TCLOQueue(Clock())
    pusher = Pusher()
    queue.attach(pusher)
    queue.send(b"one")
    queue.send(b"two")
    assert pusher.pushed == [b"one"] and queue.depth == 1
    queue.allow(Pusher(), 4)  # another channel's word does not count
    assert pusher.pushed == [b"one"] and queue.depth == 1


def test_what_a_guest_advertises_is_capped_and_a_new_channel_starts_at_one() -> None:
    queue, pusher = pipelined(Clock(), depth=1_000_000)
    assert queue.depth == MAX_IN_FLIGHT
    for i in range(MAX_IN_FLIGHT + 2):
        queue.send(b"c%d" % i)
    assert len(pusher.pushed) == MAX_IN_FLIGHT
    queue.detach(pusher)
    successor = Pusher()
    queue.attach(successor)
    assert queue.depth == 1 and successor.pushed == [b"c%d" % MAX_IN_FLIGHT]


def test_a_polled_channel_keeps_one_in_flight() -> None:
    queue = TCLOQueue(Clock())
    queue.send(b"one")
    queue.send(b"two")
    assert queue.take() == b"one" and queue.take() is None


def test_a_timeout_with_several_in_flight_drops_the_channel_and_fails_the_others_once() -> None:
    clock = Clock()
    queue, pusher = pipelined(clock)
    first = queue.send(b"one", timeout=5.0)
    others = [queue.send(b"two", timeout=50.0), queue.send(b"three", timeout=50.0)]
    waiting = queue.send(b"four", timeout=50.0)
    clock.advance(5)
    assert failure_of(first).check(TCLOTimeout)
    # Sent on the dropped stream: they may have run in the guest, so they are not sent again.
    assert all(failure_of(other).check(GuestGone) for other in others)
    assert pusher.out_of_step_count == 1 and not queue.pushed and not queue.busy
    assert not queue.reply(b"OK late")  # a late reply (the stream is being closed) matches nothing
    queue.detach(pusher)
    successor = Pusher()
    queue.attach(successor)
    assert successor.pushed == [b"four"] and not waiting.called
    assert all(call.active() for call in clock.getDelayedCalls()) and len(clock.getDelayedCalls()) == 1


def test_losing_the_channel_fails_every_command_in_flight_and_keeps_the_queue() -> None:
    clock = Clock()
    queue, pusher = pipelined(clock)
    in_flight = [queue.send(b"c%d" % i) for i in range(3)]
    queued = queue.send(b"c3")
    queue.detach(pusher)
    assert all(failure_of(reply).check(GuestGone) for reply in in_flight)
    assert not queue.busy and not queued.called
    successor = Pusher()
    queue.attach(successor)
    assert successor.pushed == [b"c3"]


def test_cancelling_a_later_command_in_flight_also_lets_the_stream_go() -> None:
    queue, pusher = pipelined(Clock())
    first, second = queue.send(b"one"), queue.send(b"two")
    second.cancel()
    assert failure_of(second).check(CancelledError) and failure_of(first).check(GuestGone)
    assert pusher.out_of_step_count == 1 and not queue.busy


def test_a_replys_callback_that_sends_keeps_the_order_with_several_in_flight() -> None:
    queue, pusher = pipelined(Clock(), depth=2)
    queue.send(b"one").addCallback(lambda _: queue.send(b"three"))
    queue.send(b"two")
    queue.send(b"queued")
    assert queue.reply(b"OK 1")
    assert pusher.pushed == [b"one", b"two", b"queued"]  # FIFO: the queued one before the callback's
    assert queue.reply(b"OK 2") and pusher.pushed[-1] == b"three"
