"""The message channel: guest-side generators against the VMX-side channel table, in memory.

The two halves are joined by a small executor that plays the part of the
backdoor instruction, so every property here holds for whatever drives the
guest side (the C extension, the trap engine) as long as it moves registers
and buffers faithfully.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from twisted_vmtools.codecs.message import (
    CHECKPOINT_RETRIES,
    FLAG_COOKIE,
    MAX_CHANNELS,
    MAX_MESSAGE,
    PROTO_RPCI,
    PROTO_TCLO,
    Backdoor,
    BackdoorCall,
    BackdoorOp,
    BackdoorResult,
    GuestChannel,
    HostChannels,
    MessageChannelError,
    MessageType,
    Status,
    run_steps,
)
from twisted_vmtools.codecs.registers import MASK32, MASK64, Registers, high16, pack16

OWNER = 4242

# -- an in-memory VMX


@dataclass
class Endpoint:
    """One VMX-side channel endpoint: records what the guest sent, offers queued messages."""

    outgoing: deque[bytes] = field(default_factory=deque)
    received: list[bytes] = field(default_factory=list)
    delivered: list[bytes] = field(default_factory=list)
    refused: list[bytes] = field(default_factory=list)
    closes: int = 0

    def message_received(self, data: bytes) -> None:
        self.received.append(data)

    def next_message(self) -> bytes | None:
        return self.outgoing[0] if self.outgoing else None

    def message_delivered(self, data: bytes) -> None:
        assert data == self.outgoing.popleft()
        self.delivered.append(data)

    def message_refused(self, data: bytes) -> None:
        self.refused.append(data)

    def closed(self) -> None:
        self.closes += 1


@dataclass
class VMX:
    """A `HostChannels` whose endpoints are `Endpoint`s, one per channel opened."""

    high_bandwidth: bool = True
    max_channels: int = 8
    max_message: int = MAX_MESSAGE
    endpoints: list[Endpoint] = field(default_factory=list)
    owners: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.host = HostChannels(
            self._endpoint,
            max_channels=self.max_channels,
            max_message=self.max_message,
            high_bandwidth=self.high_bandwidth,
        )

    def _endpoint(self, protocol: int, owner: int) -> Endpoint | None:
        if protocol not in (PROTO_RPCI, PROTO_TCLO):
            return None
        self.endpoints.append(Endpoint())
        self.owners.append(owner)
        return self.endpoints[-1]

    def executor(self, owner: int = OWNER) -> Backdoor:
        return make_executor(self.host, owner)


def make_executor(host: HostChannels, owner: int) -> Backdoor:
    """The backdoor instruction, as the guest side sees it."""

    def execute(call: BackdoorCall) -> BackdoorResult:
        if call.op is BackdoorOp.LOW_BANDWIDTH:
            return BackdoorResult(host.low_bandwidth(owner, call.regs))
        if call.op is BackdoorOp.HB_OUT:
            return BackdoorResult(host.high_bandwidth_out(owner, call.regs, call.data))
        regs, data = host.high_bandwidth_in(owner, call.regs)
        return BackdoorResult(regs, data)

    return execute


@dataclass
class Counting:
    """Wraps an executor and remembers which calls went through it."""

    inner: Backdoor
    calls: list[BackdoorCall] = field(default_factory=list)

    def __call__(self, call: BackdoorCall) -> BackdoorResult:
        self.calls.append(call)
        return self.inner(call)

    def kinds(self) -> list[str]:
        return [step_name(c) for c in self.calls]


def step_name(call: BackdoorCall) -> str:
    if call.op is BackdoorOp.LOW_BANDWIDTH:
        return MessageType(high16(call.regs.cx)).name
    return call.op.name


def opened(vmx: VMX, protocol: int = PROTO_RPCI, owner: int = OWNER) -> GuestChannel:
    guest = GuestChannel(protocol)
    run_steps(guest.open(), vmx.executor(owner))
    assert guest.is_open
    return guest


def payloads(max_size: int) -> st.SearchStrategy[bytes]:
    """Payloads up to ``max_size`` bytes without making hypothesis draw every byte.

    Drawing 70,000 bytes one by one overruns hypothesis' buffer; a size and a
    seed cover the same ground (the content matters only for word alignment).
    """
    small = st.binary(max_size=64)
    large = st.tuples(st.integers(0, max_size), st.integers(0, 2**32)).map(
        lambda size_seed: random.Random(size_seed[1]).randbytes(size_seed[0])
    )
    return st.one_of(small, large)


# -- round trips


def check_guest_to_vmx(high_bandwidth: bool, payload: bytes) -> None:
    vmx = VMX(high_bandwidth=high_bandwidth)
    guest = opened(vmx)
    steps = guest.send(payload)
    if len(payload) > vmx.max_message:
        with pytest.raises(MessageChannelError, match="SENDSIZE"):
            run_steps(steps, vmx.executor())
        assert vmx.endpoints[0].received == []
        return
    run_steps(steps, vmx.executor())
    assert vmx.endpoints[0].received == [payload]


def check_vmx_to_guest(high_bandwidth: bool, payload: bytes) -> None:
    vmx = VMX(high_bandwidth=high_bandwidth)
    guest = opened(vmx)
    vmx.endpoints[0].outgoing.append(payload)
    assert run_steps(guest.receive(), vmx.executor()) == payload
    assert vmx.endpoints[0].delivered == [payload]
    # Nothing more to receive: an empty message, as a TCLO poll sees it.
    assert run_steps(guest.receive(), vmx.executor()) == b""


SIZES = [0, 1, 3, 4, 5, 8, MAX_MESSAGE, MAX_MESSAGE + 1]


@settings(max_examples=100, deadline=None)
@given(payloads(70_000))
def test_guest_to_vmx_high_bandwidth(payload: bytes) -> None:
    check_guest_to_vmx(True, payload)


@settings(max_examples=100, deadline=None)
@given(payloads(70_000))
def test_vmx_to_guest_high_bandwidth(payload: bytes) -> None:
    check_vmx_to_guest(True, payload)


# Low bandwidth moves 4 bytes per call (~20 µs each here): few examples, but the full size range.
@settings(max_examples=12, deadline=None)
@given(payloads(70_000))
def test_guest_to_vmx_low_bandwidth(payload: bytes) -> None:
    check_guest_to_vmx(False, payload)


@settings(max_examples=12, deadline=None)
@given(payloads(70_000))
def test_vmx_to_guest_low_bandwidth(payload: bytes) -> None:
    check_vmx_to_guest(False, payload)


@pytest.mark.parametrize("high_bandwidth", [True, False])
@pytest.mark.parametrize("size", SIZES)
def test_boundary_sizes(high_bandwidth: bool, size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    check_guest_to_vmx(high_bandwidth, payload)
    check_vmx_to_guest(high_bandwidth, payload)


def test_a_larger_max_message_is_honoured() -> None:
    vmx = VMX(max_message=70_000)
    guest = opened(vmx)
    run_steps(guest.send(b"x" * 70_000), vmx.executor())
    assert vmx.endpoints[0].received == [b"x" * 70_000]


@pytest.mark.parametrize(
    ("high_bandwidth", "steps"),
    [
        (True, ["SENDSIZE", "HB_OUT", "RECVSIZE", "HB_IN", "RECVSTATUS"]),
        # 22 bytes out = 6 words; 9 bytes back = 3 words (as in protocol.md's rpctool trace).
        (False, ["SENDSIZE"] + ["SENDPAYLOAD"] * 6 + ["RECVSIZE"] + ["RECVPAYLOAD"] * 3 + ["RECVSTATUS"]),
    ],
)
def test_backdoor_calls_of_one_rpci_round_trip(high_bandwidth: bool, steps: list[str]) -> None:
    vmx = VMX(high_bandwidth=high_bandwidth)
    guest = opened(vmx)
    request = b"info-get guestinfo.foo"
    assert len(request) == 22
    counting = Counting(vmx.executor())
    run_steps(guest.send(request), counting)
    vmx.endpoints[0].outgoing.append(b"1 value!!")
    assert run_steps(guest.receive(), counting) == b"1 value!!"
    assert counting.kinds() == steps


def test_tclo_poll_is_an_empty_message() -> None:
    vmx = VMX()
    guest = opened(vmx, PROTO_TCLO)
    counting = Counting(vmx.executor())
    run_steps(guest.send(b""), counting)
    assert run_steps(guest.receive(), counting) == b""
    assert counting.kinds() == ["SENDSIZE", "RECVSIZE"]
    assert vmx.endpoints[0].received == [b""]


def test_open_sends_the_protocol_with_the_cookie_flag() -> None:
    vmx = VMX()
    counting = Counting(vmx.executor())
    guest = GuestChannel(PROTO_RPCI)
    run_steps(guest.open(), counting)
    (call,) = counting.calls
    assert call.regs.bx == PROTO_RPCI | FLAG_COOKIE == 0xC9435052
    assert call.regs.cx == 0x0000001E


def test_close_closes_the_endpoint_and_frees_the_id() -> None:
    vmx = VMX()
    guest = opened(vmx)
    first_id = guest.id
    run_steps(guest.close(), vmx.executor())
    assert not guest.is_open
    assert vmx.endpoints[0].closes == 1
    assert vmx.host.channels == {}
    assert opened(vmx).id == first_id
    run_steps(guest.close(), vmx.executor())  # closing a closed channel does nothing


# -- cookies


@pytest.mark.parametrize("which", ["cookie_high", "cookie_low"])
def test_wrong_cookie_gets_a_failure_status(which: str) -> None:
    vmx = VMX()
    guest = opened(vmx)
    intruder = GuestChannel(PROTO_RPCI)
    intruder.id, intruder.cookie_high, intruder.cookie_low = guest.id, guest.cookie_high, guest.cookie_low
    setattr(intruder, which, getattr(guest, which) ^ 1)
    for steps in (intruder.send(b"stolen"), intruder.receive(), intruder.close()):
        with pytest.raises(MessageChannelError):
            run_steps(steps, vmx.executor())
    assert vmx.endpoints[0].received == []
    assert vmx.endpoints[0].closes == 0
    run_steps(guest.send(b"mine"), vmx.executor())
    assert vmx.endpoints[0].received == [b"mine"]


@pytest.mark.parametrize("op", [BackdoorOp.HB_OUT, BackdoorOp.HB_IN])
def test_wrong_cookie_on_high_bandwidth_is_refused(op: BackdoorOp) -> None:
    vmx = VMX()
    guest = opened(vmx)
    vmx.endpoints[0].outgoing.append(b"secret")

    def tamper(call: BackdoorCall) -> BackdoorResult:
        if call.op is op:
            call = BackdoorCall(call.op, call.regs.with_(bp=call.regs.bp ^ 0x100), call.data)
        return vmx.executor()(call)

    steps = guest.send(b"data") if op is BackdoorOp.HB_OUT else guest.receive()
    with pytest.raises(MessageChannelError, match="high-bandwidth"):
        run_steps(steps, tamper)
    assert vmx.endpoints[0].received == [] and vmx.endpoints[0].delivered == []


@given(st.integers(0, MASK32), st.integers(0, MASK32))
def test_cookies_are_compared_on_32_bits(garbage_high: int, garbage_low: int) -> None:
    # The guest's C code leaves garbage above bit 31; the VMX must not mistake it for a wrong cookie.
    vmx = VMX()
    guest = opened(vmx)
    regs = Registers(
        ax=0x564D5868,
        bx=0,
        cx=pack16(MessageType.SENDSIZE, 30),
        dx=pack16(guest.id or 0, 0x5658),
        si=(garbage_high << 32) | guest.cookie_high,
        di=(garbage_low << 32) | guest.cookie_low,
    )
    assert Status.SUCCESS in Status(high16(vmx.host.low_bandwidth(OWNER, regs).cx))


def test_open_falls_back_to_no_cookies() -> None:
    vmx = VMX()
    counting_bx: list[int] = []

    def refuse_cookies(call: BackdoorCall) -> BackdoorResult:
        if step_name(call) == "OPEN":
            counting_bx.append(call.regs.bx)
            if call.regs.bx & FLAG_COOKIE:
                return BackdoorResult(call.regs.with_(cx=0))
        return vmx.executor()(call)

    guest = GuestChannel(PROTO_RPCI)
    run_steps(guest.open(), refuse_cookies)
    assert counting_bx == [PROTO_RPCI | FLAG_COOKIE, PROTO_RPCI]
    assert (guest.cookie_high, guest.cookie_low) == (0, 0)
    assert guest.id is not None and not vmx.host.channels[guest.id].checks_cookies
    run_steps(guest.send(b"no cookies"), vmx.executor())
    assert vmx.endpoints[0].received == [b"no cookies"]


def test_unknown_protocol_is_refused() -> None:
    with pytest.raises(MessageChannelError, match="refused to open"):
        run_steps(GuestChannel(0x12345678).open(), VMX().executor())


def test_calls_on_an_unopened_channel_raise() -> None:
    with pytest.raises(MessageChannelError, match="not open"):
        run_steps(GuestChannel(PROTO_RPCI).send(b"x"), VMX().executor())


# -- the channel table


@pytest.mark.parametrize("limit", [1, 3, 8])
def test_channel_limit(limit: int) -> None:
    vmx = VMX(max_channels=limit)
    guests = [opened(vmx) for _ in range(limit)]
    assert sorted(g.id for g in guests) == list(range(limit))  # type: ignore[type-var]
    with pytest.raises(MessageChannelError, match="refused to open"):
        run_steps(GuestChannel(PROTO_TCLO).open(), vmx.executor())
    run_steps(guests[0].close(), vmx.executor())
    assert opened(vmx).id == 0


def test_channel_limit_is_capped_by_the_protocol() -> None:
    assert HostChannels(lambda protocol, owner: None, max_channels=1000).max_channels == MAX_CHANNELS


def test_close_owner_closes_only_that_owners_channels() -> None:
    vmx = VMX()
    mine = [opened(vmx, PROTO_RPCI, owner=1), opened(vmx, PROTO_TCLO, owner=1)]
    theirs = opened(vmx, PROTO_RPCI, owner=2)
    vmx.host.close_owner(1)
    assert [e.closes for e in vmx.endpoints] == [1, 1, 0]
    assert [c.owner for c in vmx.host.channels.values()] == [2]
    for guest in mine:
        with pytest.raises(MessageChannelError):
            run_steps(guest.send(b"after death"), vmx.executor(1))
    run_steps(theirs.send(b"alive"), vmx.executor(2))
    assert vmx.endpoints[2].received == [b"alive"]
    vmx.host.close_owner(1)  # nothing left: a second call is harmless
    assert len(vmx.host.channels) == 1


def test_a_new_message_supersedes_an_unfetched_answer() -> None:
    vmx = VMX()
    guest = opened(vmx)
    run_steps(guest.send(b"first"), vmx.executor())
    vmx.endpoints[0].outgoing.append(b"answer")
    assert vmx.host.low_bandwidth(OWNER, guest._call(MessageType.RECVSIZE).regs).bx == len(b"answer")
    vmx.endpoints[0].outgoing.clear()
    run_steps(guest.send(b"second"), vmx.executor())
    assert run_steps(guest.receive(), vmx.executor()) == b""


# -- checkpoints

CHECKPOINTABLE = {"SENDPAYLOAD", "RECVPAYLOAD", "RECVSTATUS", "HB_OUT", "HB_IN"}


@dataclass
class Checkpointing:
    """Answers CPT, instead of the VMX, on the chosen checkpointable calls.

    The call is not passed on: a checkpoint means the VMX did not act on
    it, and the guest must start that transfer over.
    """

    inner: Backdoor
    at: set[int]
    seen: int = 0
    injected: int = 0

    def __call__(self, call: BackdoorCall) -> BackdoorResult:
        if step_name(call) in CHECKPOINTABLE:
            index, self.seen = self.seen, self.seen + 1
            if index in self.at:
                self.injected += 1
                if call.op is BackdoorOp.LOW_BANDWIDTH:
                    return BackdoorResult(call.regs.with_(cx=pack16(Status.CPT, 0)))
                return BackdoorResult(call.regs.with_(bx=pack16(Status.CPT, 0)))
        return self.inner(call)


def checkpointable_calls(high_bandwidth: bool, request: bytes, reply: bytes) -> int:
    vmx = VMX(high_bandwidth=high_bandwidth)
    guest = opened(vmx)
    counting = Counting(vmx.executor())
    run_steps(guest.send(request), counting)
    vmx.endpoints[0].outgoing.append(reply)
    run_steps(guest.receive(), counting)
    return sum(kind in CHECKPOINTABLE for kind in counting.kinds())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.binary(min_size=1, max_size=40), st.binary(min_size=1, max_size=40), st.data())
@example(True, b"request", b"reply", None)
def test_checkpoint_restarts_and_delivers_once(
    high_bandwidth: bool, request: bytes, reply: bytes, data: st.DataObject | None
) -> None:
    total = checkpointable_calls(high_bandwidth, request, reply)
    if data is None:
        at = set(range(total))  # every checkpointable call of the first attempt
    else:
        at = data.draw(st.sets(st.integers(0, total - 1), min_size=1, max_size=3), label="checkpoint at")
    vmx = VMX(high_bandwidth=high_bandwidth)
    guest = opened(vmx)
    checkpointing = Checkpointing(vmx.executor(), at)
    run_steps(guest.send(request), checkpointing)
    vmx.endpoints[0].outgoing.append(reply)
    assert run_steps(guest.receive(), checkpointing) == reply
    assert checkpointing.injected == len(at)
    assert vmx.endpoints[0].received == [request]
    assert vmx.endpoints[0].delivered == [reply]


@pytest.mark.parametrize("direction", ["send", "receive"])
def test_endless_checkpoints_give_up(direction: str) -> None:
    vmx = VMX()
    guest = opened(vmx)
    vmx.endpoints[0].outgoing.append(b"never")
    forever = Checkpointing(vmx.executor(), set(range(10 * CHECKPOINT_RETRIES)))
    steps = guest.send(b"never") if direction == "send" else guest.receive()
    with pytest.raises(MessageChannelError, match="checkpoints"):
        run_steps(steps, forever)
    assert forever.injected == CHECKPOINT_RETRIES


# -- a broken VMX, and a hostile guest

REGISTER = st.integers(0, MASK64)


def plausible_status() -> st.SearchStrategy[int]:
    """Mostly meaningful status words, so that hypothesis gets past the first call."""
    flags = st.sets(st.sampled_from(list(Status)), max_size=4).map(lambda s: sum(int(f) for f in s))
    return st.one_of(flags, st.integers(0, 0xFFFF))


def garbage_registers() -> st.SearchStrategy[Registers]:
    half = st.one_of(st.integers(0, 0xFFFF), st.sampled_from(list(range(7))))
    return st.builds(
        Registers,
        ax=REGISTER,
        bx=st.one_of(REGISTER, st.integers(0, 64), st.builds(pack16, plausible_status(), st.just(0))),
        cx=st.one_of(REGISTER, st.builds(pack16, plausible_status(), st.just(0))),
        dx=st.one_of(REGISTER, st.builds(pack16, half, st.just(0x5658))),
        si=REGISTER,
        di=REGISTER,
        bp=REGISTER,
    )


@dataclass
class GarbageVMX:
    """Answers each call with the next scripted registers; once the script runs out, all zeros.

    All-zero registers are a failure status for every call, so each guest
    operation must give up within two calls after that (OPEN tries twice; a
    failed HB receive sends one error ack); the executor raises if one goes
    on, which is how endless loops show up.
    """

    script: list[tuple[Registers, bytes | None]]
    calls: int = 0
    dead_calls: int = 0  # calls of the current operation since the script ran out

    def next_operation(self) -> None:
        self.dead_calls = 0

    def __call__(self, call: BackdoorCall) -> BackdoorResult:
        self.calls += 1
        if self.calls > len(self.script):
            self.dead_calls += 1
            if self.dead_calls > 2:
                raise AssertionError(f"the guest keeps calling a dead VMX ({self.calls} calls)")
            return BackdoorResult(Registers())
        regs, data = self.script[self.calls - 1]
        if data is None:  # the right amount, when small enough to hand over
            data = bytes(call.regs.cx) if call.op is BackdoorOp.HB_IN and call.regs.cx <= 4096 else b""
        return BackdoorResult(regs, data)


GuestStep = Callable[[GuestChannel], Generator[BackdoorCall, BackdoorResult, object]]
GUEST_STEPS: dict[str, GuestStep] = {
    "open": lambda g: g.open(),
    "send": lambda g: g.send(b"some request bytes"),
    "poll": lambda g: g.send(b""),
    "receive": lambda g: g.receive(),
    "close": lambda g: g.close(),
}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(garbage_registers(), st.one_of(st.none(), st.binary(max_size=16))), max_size=40),
    st.lists(st.sampled_from(sorted(GUEST_STEPS)), min_size=1, max_size=5),
    st.booleans(),
)
def test_garbage_from_the_vmx_raises_only_message_channel_error(
    script: list[tuple[Registers, bytes | None]], steps: list[str], start_open: bool
) -> None:
    vmx = GarbageVMX(script)
    guest = GuestChannel(PROTO_RPCI)
    if start_open:
        guest.id, guest.cookie_high, guest.cookie_low = 1, 0x1234, 0x5678
    for name in steps:
        vmx.next_operation()
        try:
            result = run_steps(GUEST_STEPS[name](guest), vmx)
        except MessageChannelError:
            continue
        if name == "receive":
            assert isinstance(result, bytes)
    assert vmx.calls <= len(script) + 2 * len(steps)


@dataclass(frozen=True)
class HostCall:
    op: BackdoorOp
    owner: int
    regs: Registers
    data: bytes


def fixed_cookies() -> Callable[[], int]:
    values = iter(range(0x1000, 1 << 30))
    return lambda: next(values)


# With fixed_cookies, the first channel a fresh table opens is id 0 with cookies 0x1000, 0x1001.
VALID_ID, VALID_HIGH, VALID_LOW = 0, 0x1000, 0x1001


def host_calls() -> st.SearchStrategy[HostCall]:
    """Register sets aimed at the message channel, often with the real id and cookies so calls go deep."""
    kind = st.one_of(st.integers(0, 0xFFFF), st.sampled_from(list(MessageType)))
    channel_dx = st.one_of(REGISTER, st.just(pack16(VALID_ID, 0x5658)))
    lb = st.builds(
        Registers,
        ax=REGISTER,
        bx=st.one_of(REGISTER, st.integers(0, 80_000), st.sampled_from([PROTO_RPCI, PROTO_TCLO | FLAG_COOKIE])),
        cx=st.one_of(REGISTER, st.builds(lambda k: pack16(k, 30), kind)),
        dx=channel_dx,
        si=st.one_of(REGISTER, st.just(VALID_HIGH)),
        di=st.one_of(REGISTER, st.just(VALID_LOW)),
        bp=REGISTER,
    )
    hb = st.builds(
        Registers,
        ax=REGISTER,
        bx=st.one_of(REGISTER, st.just(pack16(Status.SUCCESS, 0))),
        cx=st.one_of(REGISTER, st.integers(0, 64)),
        dx=channel_dx,
        si=st.one_of(REGISTER, st.just(VALID_HIGH)),
        di=st.one_of(REGISTER, st.just(VALID_LOW)),
        bp=st.one_of(REGISTER, st.just(VALID_HIGH), st.just(VALID_LOW)),
    )
    return st.one_of(
        st.builds(HostCall, st.just(BackdoorOp.LOW_BANDWIDTH), st.sampled_from([1, 2]), lb, st.just(b"")),
        st.builds(HostCall, st.sampled_from([BackdoorOp.HB_OUT, BackdoorOp.HB_IN]), st.sampled_from([1, 2]), hb,
                  st.binary(max_size=64)),
    )


@settings(max_examples=150, deadline=None)
@given(st.booleans(), st.lists(host_calls(), max_size=30))
def test_vmx_side_never_raises_on_any_registers(high_bandwidth: bool, calls: list[HostCall]) -> None:
    endpoints: list[Endpoint] = []

    def factory(protocol: int, owner: int) -> Endpoint | None:
        endpoints.append(Endpoint(outgoing=deque([b"pending reply"])))
        return endpoints[-1] if protocol in (PROTO_RPCI, PROTO_TCLO) else None

    host = HostChannels(factory, max_channels=3, high_bandwidth=high_bandwidth, random_cookie=fixed_cookies())
    valid = GuestChannel(PROTO_RPCI)
    run_steps(valid.open(), make_executor(host, 1))
    assert (valid.id, valid.cookie_high, valid.cookie_low) == (VALID_ID, VALID_HIGH, VALID_LOW)
    for call in calls:
        if call.op is BackdoorOp.LOW_BANDWIDTH:
            assert isinstance(host.low_bandwidth(call.owner, call.regs), Registers)
        elif call.op is BackdoorOp.HB_OUT:
            assert isinstance(host.high_bandwidth_out(call.owner, call.regs, call.data), Registers)
        else:
            regs, out = host.high_bandwidth_in(call.owner, call.regs)
            assert isinstance(regs, Registers) and isinstance(out, bytes)
        assert len(host.channels) <= host.max_channels
    host.close_owner(1)
    host.close_owner(2)
    assert host.channels == {}
