"""`DirectBackdoor.exchange`: one exchange's calls back to back, and the guest going on where it stops.

`exchange_by_calls` is the C extension's ``exchange`` in Python (the trap
engine runs the C one, tests/channels/test_trapped.py).  Whatever the VMX
answers, `GuestChannel.exchange_direct` must make the same backdoor calls, in
the same order, with the same outcome, as the generator steps of `exchange`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from twisted_vmtools.codecs.message import (
    PROTO_TCLO,
    BackdoorCall,
    BackdoorOp,
    BackdoorResult,
    DirectCalls,
    ExchangeStage,
    ExchangeStopped,
    GuestChannel,
    MessageChannelError,
    MessageType,
    Status,
    exchange_by_calls,
    run_steps,
)
from twisted_vmtools.codecs.registers import high16, pack16

from .test_message import VMX, opened

Rule = Callable[[BackdoorCall], "BackdoorResult | None"]


@dataclass
class Faulty:
    """An executor that records every call and lets the first matching rule answer once instead of the VMX."""

    vmx: VMX
    rules: list[tuple[Callable[[BackdoorCall], bool], Callable[[BackdoorCall], BackdoorResult]]]
    calls: list[BackdoorCall] = field(default_factory=list)
    results: list[BackdoorResult] = field(default_factory=list)

    def __call__(self, call: BackdoorCall) -> BackdoorResult:
        self.calls.append(call)
        self.results.append(self._answer(call))
        return self.results[-1]

    def _answer(self, call: BackdoorCall) -> BackdoorResult:
        for rule in self.rules:
            match, answer = rule
            if match(call):
                self.rules.remove(rule)
                return answer(call)
        return self.vmx.executor()(call)


def kind(name: MessageType) -> Callable[[BackdoorCall], bool]:
    return lambda call: call.op is BackdoorOp.LOW_BANDWIDTH and high16(call.regs.cx) == name


def op(which: BackdoorOp) -> Callable[[BackdoorCall], bool]:
    return lambda call: call.op is which


def status(value: int) -> Callable[[BackdoorCall], BackdoorResult]:
    def answer(call: BackdoorCall) -> BackdoorResult:
        if call.op is BackdoorOp.LOW_BANDWIDTH:
            return BackdoorResult(call.regs.with_(cx=pack16(value, 0)))
        return BackdoorResult(call.regs.with_(bx=pack16(value, 0)))

    return answer


def wrong_type(call: BackdoorCall) -> BackdoorResult:
    return BackdoorResult(call.regs.with_(cx=pack16(Status.SUCCESS | Status.DORECV | Status.HB, 0), bx=5,
                                          dx=pack16(MessageType.RECVPAYLOAD, 0)))


def short(call: BackdoorCall) -> BackdoorResult:
    return BackdoorResult(call.regs.with_(bx=pack16(Status.SUCCESS, 0)), b"sho")


# name: (VMX high bandwidth, message waiting, the rule, where exchange_by_calls stops or None)
SCENARIOS: dict[str, tuple[bool, bytes | None, list, ExchangeStage | None]] = {
    "plain": (True, b"a command", [], None),
    "nothing waiting": (True, None, [], None),
    "an empty message": (True, b"", [], None),
    "SENDSIZE fails": (True, b"cmd", [(kind(MessageType.SENDSIZE), status(Status.FAIL))], ExchangeStage.SENDSIZE),
    "low bandwidth": (False, b"a low-bandwidth command", [], ExchangeStage.SENDSIZE),
    "rep outsb checkpointed": (True, b"cmd", [(op(BackdoorOp.HB_OUT), status(Status.CPT))], ExchangeStage.HB_OUT),
    "rep outsb fails": (True, b"cmd", [(op(BackdoorOp.HB_OUT), status(Status.FAIL))], ExchangeStage.HB_OUT),
    "RECVSIZE fails": (True, b"cmd", [(kind(MessageType.RECVSIZE), status(Status.FAIL))], ExchangeStage.RECVSIZE),
    "RECVSIZE wrong type": (True, b"cmd", [(kind(MessageType.RECVSIZE), wrong_type)], ExchangeStage.RECVSIZE),
    "RECVSIZE low bandwidth": (
        True, b"cmd", [(kind(MessageType.RECVSIZE), status(Status.SUCCESS | Status.DORECV))], ExchangeStage.RECVSIZE
    ),
    "rep insb checkpointed": (True, b"cmd", [(op(BackdoorOp.HB_IN), status(Status.CPT))], ExchangeStage.HB_IN),
    "rep insb fails": (True, b"cmd", [(op(BackdoorOp.HB_IN), status(Status.FAIL))], ExchangeStage.HB_IN),
    "rep insb short": (True, b"a command", [(op(BackdoorOp.HB_IN), short)], ExchangeStage.HB_IN),
    "RECVSTATUS checkpointed": (
        True, b"cmd", [(kind(MessageType.RECVSTATUS), status(Status.CPT))], ExchangeStage.RECVSTATUS
    ),
    "RECVSTATUS fails": (
        True, b"cmd", [(kind(MessageType.RECVSTATUS), status(Status.FAIL))], ExchangeStage.RECVSTATUS
    ),
}
PAYLOADS = [b"", b"OK the reply"]


def setup(name: str) -> tuple[VMX, GuestChannel, Faulty]:
    high_bandwidth, waiting, rules, _ = SCENARIOS[name]
    vmx = VMX(high_bandwidth=high_bandwidth)
    guest = opened(vmx, PROTO_TCLO)
    if waiting is not None:
        vmx.endpoints[0].outgoing.append(waiting)
    return vmx, guest, Faulty(vmx, list(rules))


def outcome(run: Callable[[], object]) -> object:
    try:
        return run()
    except MessageChannelError as error:
        return type(error), str(error)


def trace(calls: list[BackdoorCall], guest: GuestChannel) -> list[tuple[object, ...]]:
    # The two runs' VMXs drew different random cookies: compare which cookie went where.
    names = {guest.cookie_high: "high", guest.cookie_low: "low"}
    return [(c.op, *(names.get(value, value) for value in c.regs), c.data) for c in calls]


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_direct_exchange_makes_the_calls_of_the_steps(name: str, payload: bytes) -> None:
    steps_vmx, steps_guest, steps = setup(name)
    steps_result = outcome(lambda: run_steps(steps_guest.exchange(payload), steps))
    direct_vmx, direct_guest, direct = setup(name)
    direct_result = outcome(lambda: direct_guest.exchange_direct(payload, DirectCalls(direct)))
    assert direct_result == steps_result
    assert trace(direct.calls, direct_guest) == trace(steps.calls, steps_guest)
    assert direct_vmx.endpoints == steps_vmx.endpoints
    assert direct_guest.is_open == steps_guest.is_open


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_where_the_exchange_stops(name: str) -> None:
    _, guest, faulty = setup(name)
    stop = SCENARIOS[name][3]
    payload = b"OK the reply"
    words = guest._words
    assert words is not None
    result = exchange_by_calls(DirectCalls(faulty), payload, words)
    if stop is None:
        assert isinstance(result, bytes)
        return
    assert isinstance(result, ExchangeStopped)
    assert result.stage == stop
    assert len(faulty.calls) == stop + 1  # at that call, not after it
    answer = faulty.results[-1]
    assert result.regs == tuple(answer.regs)[: len(result.regs)]
    assert len(result.regs) == (6 if faulty.calls[-1].op is BackdoorOp.LOW_BANDWIDTH else 7)
    # The size rep insb was asked for, from RECVSIZE: its own RCX out is no guide to it.
    message = SCENARIOS[name][1]
    assert result.asked == (len(message or b"") if stop >= ExchangeStage.HB_IN else 0)
    received = [r.data for c, r in zip(faulty.calls, faulty.results, strict=True) if c.op is BackdoorOp.HB_IN]
    assert result.data == (received[0] if received else b"")


def test_a_plain_exchange_is_five_calls_in_order() -> None:
    vmx, guest, faulty = setup("plain")
    assert guest.exchange_direct(b"OK reply", DirectCalls(faulty)) == b"a command"
    assert [(c.op, high16(c.regs.cx) if c.op is BackdoorOp.LOW_BANDWIDTH else None) for c in faulty.calls] == [
        (BackdoorOp.LOW_BANDWIDTH, MessageType.SENDSIZE),
        (BackdoorOp.HB_OUT, None),
        (BackdoorOp.LOW_BANDWIDTH, MessageType.RECVSIZE),
        (BackdoorOp.HB_IN, None),
        (BackdoorOp.LOW_BANDWIDTH, MessageType.RECVSTATUS),
    ]
    assert vmx.endpoints[0].received == [b"OK reply"]
    assert vmx.endpoints[0].delivered == [b"a command"]


def test_a_closed_channel_refuses_a_direct_exchange() -> None:
    vmx, guest, faulty = setup("plain")
    run_steps(guest.close(), faulty)
    with pytest.raises(MessageChannelError, match="not open"):
        guest.exchange_direct(b"", DirectCalls(faulty))
