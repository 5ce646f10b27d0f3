"""BackdoorChannel against an in-memory BackdoorHost, its clock a `Clock`."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from tests.support import failure_of, result_of
from twisted_vmtools.channels.backdoor import (
    COMMANDS_PER_TURN,
    HANDLER_FAILED,
    BackdoorChannel,
    PortBackdoor,
    host_executor,
    hypercall_dx,
)
from twisted_vmtools.channels.interfaces import ChannelError, IGuestChannel
from twisted_vmtools.codecs.message import (
    PROTO_RPCI,
    PROTO_TCLO,
    Backdoor,
    BackdoorCall,
    BackdoorOp,
    BackdoorResult,
    DirectCalls,
    MessageType,
    Status,
)
from twisted_vmtools.codecs.registers import BDOOR_PORT, BDOORHB_PORT, Registers, pack16

from .fakes import GARBAGE, FakeVMX, Interposer, message_type, status_reply
from .fakes import RecordingHandler as Handler

# Every test runs twice: through the generator steps, and through the direct calls the
# channel makes when its executor offers them (the I/O port does), whose every call still
# reaches the same Interposer and fake VMX as a BackdoorCall.
PATHS: dict[str, Callable[[Backdoor], Backdoor]] = {"steps": lambda executor: executor, "direct": DirectCalls}
path = PATHS["steps"]


@pytest.fixture(autouse=True, params=sorted(PATHS))
def _path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(globals(), "path", PATHS[request.param])


def make(high_bandwidth: bool = True) -> tuple[FakeVMX, Interposer, Clock, BackdoorChannel]:
    vmx = FakeVMX(high_bandwidth=high_bandwidth)
    executor = Interposer(host_executor(vmx.host))
    clock = Clock()
    return vmx, executor, clock, BackdoorChannel(path(executor), clock)


def test_the_direct_path_is_taken_when_offered() -> None:
    vmx, _, _, channel = make()
    direct = DirectCalls(host_executor(vmx.host))
    assert BackdoorChannel(direct, Clock())._direct is direct
    assert BackdoorChannel(host_executor(vmx.host), Clock())._direct is None


def is_type(kind: MessageType):  # noqa: ANN201
    return lambda call: message_type(call) is kind


def is_op(op: BackdoorOp):  # noqa: ANN201
    return lambda call: call.op is op


def test_provides_interface() -> None:
    _, _, _, channel = make()
    assert verifyObject(IGuestChannel, channel)
    assert channel.name == "backdoor"


# -- RPCI


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 22, 1000])
def test_rpci_low_bandwidth(size: int) -> None:
    vmx, executor, _, channel = make(high_bandwidth=False)
    request = bytes(range(256))[:size]
    assert result_of(channel.rpci(request)) == b"1 " + request
    assert vmx.rpci.requests == [request]
    ops = executor.ops()
    assert "hb-out" not in ops and "hb-in" not in ops
    assert ops.count("SENDPAYLOAD") == (len(request) + 3) // 4
    assert ops.count("RECVPAYLOAD") == (len(request) + 2 + 3) // 4


def test_rpci_high_bandwidth() -> None:
    vmx, executor, _, channel = make(high_bandwidth=True)
    request = b"info-set guestinfo.x " + b"y" * 5000
    assert result_of(channel.rpci(request)) == b"1 " + request
    assert executor.ops() == ["OPEN", "SENDSIZE", "hb-out", "RECVSIZE", "hb-in", "RECVSTATUS"]
    assert vmx.host.counts["hb.out"] == 1


def test_rpci_channel_is_persistent() -> None:
    vmx, _, _, channel = make()
    for i in range(3):
        assert result_of(channel.rpci(b"call %d" % i)) == b"1 call %d" % i
    assert vmx.opens == [PROTO_RPCI]


@pytest.mark.parametrize("high_bandwidth", [False, True])
@pytest.mark.parametrize(
    "where",
    [
        is_type(MessageType.SENDPAYLOAD),
        is_type(MessageType.RECVPAYLOAD),
        is_type(MessageType.RECVSTATUS),
        is_op(BackdoorOp.HB_OUT),
        is_op(BackdoorOp.HB_IN),
    ],
)
def test_rpci_checkpoint_retries(high_bandwidth: bool, where) -> None:  # noqa: ANN001
    vmx, executor, _, channel = make(high_bandwidth=high_bandwidth)
    executor.once(where, lambda call: status_reply(call, Status.CPT))
    assert result_of(channel.rpci(b"checkpointed request")) == b"1 checkpointed request"
    # A checkpoint restarts the transfer; it is not an error that reopens the channel.
    assert vmx.opens == [PROTO_RPCI]
    assert vmx.rpci.closes == 0


def test_rpci_reopens_once_after_failure() -> None:
    vmx, executor, _, channel = make()
    result_of(channel.rpci(b"first"))
    executor.once(is_type(MessageType.RECVSIZE), lambda call: BackdoorResult(GARBAGE))
    assert result_of(channel.rpci(b"second")) == b"1 second"
    assert vmx.opens == [PROTO_RPCI, PROTO_RPCI]
    assert vmx.rpci.closes == 1


def test_rpci_gives_up_after_the_second_failure() -> None:
    vmx, executor, _, channel = make()
    executor.rules.append(lambda call: BackdoorResult(GARBAGE) if message_type(call) is MessageType.SENDSIZE else None)
    failure = failure_of(channel.rpci(b"doomed"))
    assert failure.check(ChannelError)
    executor.rules.clear()
    assert result_of(channel.rpci(b"later")) == b"1 later"


def test_rpci_vmx_refuses_to_open() -> None:
    vmx, executor, _, channel = make()
    vmx.refuse = True
    assert failure_of(channel.rpci(b"hello")).check(ChannelError)
    # Two attempts, each trying with and then without cookies.
    assert executor.ops() == ["OPEN"] * 4


def test_rpci_garbage_everywhere_fails_cleanly() -> None:
    _, executor, _, channel = make()
    executor.rules.append(lambda call: BackdoorResult(GARBAGE))
    assert failure_of(channel.rpci(b"hello")).check(ChannelError)


def test_rpci_executor_raising_is_a_channel_error() -> None:
    def broken(call: BackdoorCall) -> BackdoorResult:
        raise OSError("refusing to execute a backdoor instruction")

    channel = BackdoorChannel(path(broken), Clock())
    failure = failure_of(channel.rpci(b"hello"))
    assert failure.check(ChannelError)
    assert "refusing" in failure.getErrorMessage()


def test_rpci_short_hb_read_is_an_error() -> None:
    _, executor, _, channel = make()
    executor.once(is_op(BackdoorOp.HB_IN), lambda call: BackdoorResult(call.regs.with_(bx=pack16(1, 0)), b"1"))
    # First attempt fails on the short read; the reopened channel succeeds.
    assert result_of(channel.rpci(b"abc")) == b"1 abc"


def test_rpci_after_stop_fails() -> None:
    vmx, _, _, channel = make()
    result_of(channel.rpci(b"x"))
    channel.stop()
    assert vmx.rpci.closes == 1
    assert failure_of(channel.rpci(b"y")).check(ChannelError)


# -- TCLO


def immediate(command: bytes) -> Deferred[bytes]:
    return defer.succeed(b"OK " + command)


def test_tclo_idle_backoff() -> None:
    vmx, _, clock, channel = make()
    channel.start(Handler(immediate))
    assert vmx.tclo.polls == 0
    clock.advance(0)
    assert vmx.tclo.received == [b""]
    # vmtoolsd's pacing, 100 ms for two seconds, then 200 ms while the VMX stays quiet.
    expected = [0.01, 0.02, 0.04, 0.08] + [0.1] * 20 + [0.2, 0.2, 0.2]
    for n, delay in enumerate(expected, start=2):
        clock.advance(delay - 0.001)
        assert vmx.tclo.polls == n - 1, f"poll {n} came early"
        clock.advance(0.002)  # each poll is timed from the one before; 1 ms each side keeps floats out of it
        assert vmx.tclo.polls == n, f"poll {n} did not come after {delay}"
    assert vmx.opens == [PROTO_TCLO]


def test_tclo_a_command_after_a_long_idle_spell_brings_back_the_fast_pace() -> None:
    vmx, _, clock, channel = make()
    handler = Handler(immediate)
    channel.start(handler)
    clock.advance(0)
    clock.advance(10)  # idle: 200 ms between polls by now
    polls = vmx.tclo.polls
    vmx.tclo.commands.append(b"ping")
    clock.advance(0.2)
    assert handler.commands == [b"ping"]
    assert vmx.tclo.polls == polls + 2  # the poll that fetched it, and the one that carried the reply
    clock.advance(0.01)
    assert vmx.tclo.polls == polls + 3


@pytest.mark.parametrize("high_bandwidth", [False, True])
def test_tclo_command_then_immediate_poll(high_bandwidth: bool) -> None:
    vmx, _, clock, channel = make(high_bandwidth)
    handler = Handler(immediate)
    channel.start(handler)
    clock.advance(0)
    for _ in range(4):  # back off for a while
        clock.advance(0.1)
    vmx.tclo.commands.append(b"reset")
    vmx.tclo.commands.append(b"ping")
    polls = vmx.tclo.polls
    # Clock runs the 0 ms re-polls within the same advance: each reply rides the
    # poll that fetches the next command, then an empty poll carries the last one.
    clock.advance(0.1)
    assert handler.commands == [b"reset", b"ping"]
    assert vmx.tclo.received[polls:] == [b"", b"OK reset", b"OK ping"]
    assert vmx.tclo.delivered == [b"reset", b"ping"]
    # Back to an idle poll, and the back-off starts over at 10 ms.
    polls = vmx.tclo.polls
    clock.advance(0.01)
    assert vmx.tclo.polls == polls + 1


class CountingClock(Clock):
    """A Clock that remembers the delay of every call scheduled on it."""

    def __init__(self) -> None:
        super().__init__()
        self.delays: list[float] = []

    def callLater(self, delay, callable, *args, **kw):  # type: ignore[no-untyped-def]  # noqa: A002, ANN001, ANN201
        self.delays.append(delay)
        return super().callLater(delay, callable, *args, **kw)


def test_tclo_an_immediate_answer_goes_out_in_the_same_turn() -> None:
    vmx = FakeVMX()
    clock = CountingClock()
    channel = BackdoorChannel(path(host_executor(vmx.host)), clock)
    channel.start(Handler(immediate))
    clock.advance(0)
    clock.advance(0.01)
    vmx.tclo.commands.append(b"ping")
    clock.delays.clear()
    clock.advance(0.02)
    # One timer fired: it fetched ping, sent its answer with the next poll at once
    # (no 0 ms timer in between), and that poll found nothing: back to 10 ms.
    assert vmx.tclo.replies == [b"OK ping"]
    assert clock.delays == [0.01]


def test_tclo_a_busy_vmx_still_lets_the_reactor_run() -> None:
    vmx = FakeVMX()
    clock = CountingClock()
    channel = BackdoorChannel(path(host_executor(vmx.host)), clock)
    handler = Handler(immediate)
    channel.start(handler)
    clock.advance(0)
    commands = [b"ping %d" % n for n in range(2 * COMMANDS_PER_TURN + 1)]
    vmx.tclo.commands.extend(commands)
    clock.delays.clear()
    clock.advance(0.01)
    assert handler.commands == commands
    assert vmx.tclo.replies == [b"OK " + command for command in commands]
    # A reactor turn (a 0 ms timer) after every COMMANDS_PER_TURN commands, then idle.
    assert clock.delays == [0, 0, 0.01]


def test_tclo_pending_handler_holds_the_next_poll() -> None:
    vmx, _, clock, channel = make()
    handler = Handler()
    channel.start(handler)
    vmx.tclo.commands.append(b"Vix_1_Relayed_Command slow")
    clock.advance(0)
    assert handler.commands == [b"Vix_1_Relayed_Command slow"]
    polls = vmx.tclo.polls
    assert not channel.polling
    clock.advance(60)
    assert vmx.tclo.polls == polls
    handler.pending[0].callback(b"OK done")
    assert channel.polling
    clock.advance(0)
    assert vmx.tclo.replies == [b"OK done"]


def test_tclo_binary_command() -> None:
    vmx, _, clock, channel = make()
    handler = Handler(immediate)
    channel.start(handler)
    command = b"f " + bytes(range(256)) * 10
    vmx.tclo.commands.append(command)
    clock.advance(0)
    assert handler.commands == [command]


def test_tclo_handler_failure_answers_error() -> None:
    vmx, _, clock, channel = make()

    def boom(command: bytes) -> Deferred[bytes]:
        raise RuntimeError("boom")

    channel.start(Handler(boom))
    vmx.tclo.commands.append(b"explode")
    clock.advance(0)
    clock.advance(0)
    assert vmx.tclo.replies == [HANDLER_FAILED]


def test_tclo_error_backoff_and_reopen() -> None:
    vmx, executor, clock, channel = make()
    vmx.refuse = True
    channel.start(Handler(immediate))
    clock.advance(0)
    assert vmx.opens == [PROTO_TCLO, PROTO_TCLO]  # cookie, then no cookie: refused
    clock.advance(4.9)
    assert len(vmx.opens) == 2
    clock.advance(0.1)
    assert len(vmx.opens) == 4
    vmx.refuse = False
    clock.advance(5)
    assert len(vmx.opens) == 5
    assert vmx.tclo.received == [b""]
    # Idle back-off starts over after an error.
    clock.advance(0.01)
    assert vmx.tclo.polls == 2


def test_tclo_garbage_mid_session_reopens_after_5s() -> None:
    vmx, executor, clock, channel = make()
    channel.start(Handler(immediate))
    clock.advance(0)
    executor.once(is_type(MessageType.RECVSIZE), lambda call: BackdoorResult(GARBAGE))
    clock.advance(0.01)
    assert vmx.tclo.closes == 1  # the suspect channel is closed
    polls = vmx.tclo.polls
    clock.advance(4.99)
    assert vmx.tclo.polls == polls
    clock.advance(0.01)
    assert vmx.tclo.polls == polls + 1
    assert vmx.opens == [PROTO_TCLO, PROTO_TCLO]


def test_tclo_checkpoint_during_command_receive() -> None:
    vmx, executor, clock, channel = make(high_bandwidth=False)
    handler = Handler(immediate)
    channel.start(handler)
    vmx.tclo.commands.append(b"Set_Option broadcastIP 1")
    executor.once(is_type(MessageType.RECVPAYLOAD), lambda call: status_reply(call, Status.CPT))
    clock.advance(0)
    assert handler.commands == [b"Set_Option broadcastIP 1"]
    assert vmx.opens == [PROTO_TCLO]


def test_tclo_stop() -> None:
    vmx, _, clock, channel = make()
    handler = Handler()
    channel.start(handler)
    vmx.tclo.commands.append(b"reset")
    clock.advance(0)
    stopped: list[object] = []
    channel.stop().addBoth(stopped.append)
    assert stopped == [None]
    assert vmx.tclo.closes == 1
    handler.pending[0].callback(b"OK ATR toolbox")  # too late: nobody polls any more
    clock.advance(10)
    assert vmx.tclo.replies == []
    assert not clock.getDelayedCalls()


def test_tclo_start_twice_is_an_error() -> None:
    _, _, _, channel = make()
    channel.start(Handler(immediate))
    with pytest.raises(RuntimeError):
        channel.start(Handler(immediate))


# -- the hypercall register convention


@pytest.mark.parametrize(
    ("op", "port", "flags"),
    [
        (BackdoorOp.LOW_BANDWIDTH, BDOOR_PORT, 0),
        (BackdoorOp.HB_OUT, BDOORHB_PORT, 3),
        (BackdoorOp.HB_IN, BDOORHB_PORT, 1),
    ],
)
def test_hypercall_dx(op: BackdoorOp, port: int, flags: int) -> None:
    call = BackdoorCall(op, Registers(dx=pack16(5, port)))
    assert hypercall_dx(call) == pack16(5, flags)


def test_a_handler_that_stops_the_channel_and_answers_at_once() -> None:
    vmx, _, clock, channel = make()

    def stop_then_answer(command: bytes) -> Deferred[bytes]:
        channel.stop()
        return defer.succeed(b"OK bye")

    channel.start(Handler(stop_then_answer))
    vmx.tclo.commands.append(b"ping")
    clock.advance(0)
    clock.advance(1)
    assert b"OK bye" not in vmx.tclo.replies
    assert not channel.polling
    assert not clock.getDelayedCalls()


def test_a_handler_that_restarts_the_channel_and_answers_at_once() -> None:
    vmx, _, clock, channel = make()
    restarted = Handler(immediate)

    def restart_then_answer(command: bytes) -> Deferred[bytes]:
        channel.stop()
        channel.start(restarted)
        return defer.succeed(b"OK from the old run")

    channel.start(Handler(restart_then_answer))
    vmx.tclo.commands.append(b"ping")
    clock.advance(0)
    vmx.tclo.commands.append(b"reset")
    clock.advance(1)
    assert b"OK from the old run" not in vmx.tclo.replies
    assert restarted.commands == [b"reset"]
    assert vmx.tclo.replies[-1:] == [b"OK reset"]
    assert channel.polling


def test_a_late_answer_from_before_a_restart_is_dropped() -> None:
    vmx, _, clock, channel = make()
    handler = Handler()  # answers only when the test says
    channel.start(handler)
    vmx.tclo.commands.append(b"ping")
    clock.advance(0)
    assert len(handler.pending) == 1
    result_of(channel.stop())
    channel.start(handler)  # the same handler, a new run of the loop
    vmx.tclo.commands.append(b"reset")
    clock.advance(0)
    handler.pending[0].callback(b"OK late")
    clock.advance(1)
    assert b"OK late" not in vmx.tclo.replies
    handler.pending[1].callback(b"OK ATR toolbox")
    clock.advance(1)
    assert vmx.tclo.replies[-1:] == [b"OK ATR toolbox"]
    assert channel.polling


def test_an_extension_built_before_the_exchange_call_gets_it_made_of_single_calls() -> None:
    vmx = FakeVMX()
    executor = Interposer(host_executor(vmx.host))
    calls = DirectCalls(executor)
    old_build = SimpleNamespace(lb=calls.lb, hb_out=calls.hb_out, hb_in=calls.hb_in)
    channel = BackdoorChannel(PortBackdoor(executor, old_build), Clock())
    assert result_of(channel.rpci(b"still works")) == b"1 still works"
    assert executor.ops() == ["OPEN", "SENDSIZE", "hb-out", "RECVSIZE", "hb-in", "RECVSTATUS"]
    current = SimpleNamespace(lb=calls.lb, hb_out=calls.hb_out, hb_in=calls.hb_in, exchange=calls.exchange)
    assert PortBackdoor(executor, current).exchange == calls.exchange
