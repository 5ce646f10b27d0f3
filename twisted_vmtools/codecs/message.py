"""The message channel (GuestMsg) as pure state machines, guest side and VMX side.

Every message-channel operation is one backdoor call: registers in,
registers out (plus, for the high-bandwidth calls, a buffer).  The guest
side is written as generators that *yield* the backdoor call they need and
are *sent* its result, so the same code drives the real instruction (C
extension), an in-memory VMX (tests) or anything else.  The VMX side is a
table of channels that turns the guest's registers into the VMX's, which is
what the trap engine and the simulated VMX need.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

from .errors import CodecError
from .registers import (
    BDOOR_MAGIC,
    BDOOR_PORT,
    BDOORHB_CMD_MESSAGE,
    BDOORHB_PORT,
    CMD_MESSAGE,
    MASK32,
    Registers,
    high16,
    low16,
    pack16,
)
from .registers import PROTO_RPCI as PROTO_RPCI  # declared with the registers; the message channel's own
from .registers import PROTO_TCLO as PROTO_TCLO

FLAG_COOKIE = 0x80000000
MAX_CHANNELS = 128  # GUESTMSG_MAX_CHANNEL: ids are below this
MAX_MESSAGE = 64 * 1024  # the VMX's cap on one incoming message
CHECKPOINT_RETRIES = 32  # a checkpoint per call is already rare; this many is a broken VMX


class MessageType(enum.IntEnum):
    OPEN = 0
    SENDSIZE = 1
    SENDPAYLOAD = 2
    RECVSIZE = 3
    RECVPAYLOAD = 4
    RECVSTATUS = 5
    CLOSE = 6


class Status(enum.IntFlag):
    FAIL = 0
    SUCCESS = 0x01
    DORECV = 0x02
    CLOSED = 0x04
    UNSENT = 0x08
    CPT = 0x10
    POWEROFF = 0x20
    TIMEOUT = 0x40
    HB = 0x80


class MessageChannelError(CodecError):
    """A message-channel operation failed or the peer broke the protocol."""


class BackdoorOp(enum.Enum):
    LOW_BANDWIDTH = "lb"  # in eax,dx on 0x5658
    HB_OUT = "hb-out"  # rep outsb on 0x5659: guest → VMX
    HB_IN = "hb-in"  # rep insb on 0x5659: VMX → guest


class BackdoorCall(NamedTuple):
    """One backdoor instruction the guest wants executed.

    For HB_OUT, ``data`` is the buffer whose address goes in RSI; for HB_IN,
    the executor supplies a buffer of RCX bytes for RDI.  Those two pointer
    registers are left 0 here: only the executor knows its buffers.  Named
    tuples, not dataclasses: a TCLO poll builds several of each (a frozen
    dataclass costs three times as much to make).
    """

    op: BackdoorOp
    regs: Registers
    data: bytes = b""


class BackdoorResult(NamedTuple):
    regs: Registers
    data: bytes = b""  # HB_IN: the bytes the VMX wrote


GuestSteps = Generator[BackdoorCall, BackdoorResult, "object"]
Backdoor = Callable[[BackdoorCall], BackdoorResult]


def run_steps(steps: Generator[BackdoorCall, BackdoorResult, object], backdoor: Backdoor) -> object:
    """Drive a guest-side generator to completion with a synchronous backdoor."""
    try:
        call = next(steps)
        while True:
            call = steps.send(backdoor(call))
    except StopIteration as stop:
        return stop.value


@runtime_checkable
class DirectBackdoor(Protocol):
    """An executor that also makes the three calls directly, registers as plain ints, and whole exchanges.

    The signatures are the C extension's (``_backdoor.lb/hb_out/hb_in/exchange``,
    port interface).  `GuestChannel.exchange_direct` and friends use them for the
    common case, with no generator, named tuple or executor dispatch between
    two backdoor instructions: under the trap engine each Python step between
    two traps runs cache-cold, and those steps cost the guest more CPU per TCLO
    poll than the traps.  ``exchange`` makes all five calls of an exchange with
    no Python between them.  Anything out of the ordinary (low-bandwidth
    transfers, checkpoints, failures) goes through the generator steps and
    ``__call__``.
    """

    def __call__(self, call: BackdoorCall) -> BackdoorResult: ...

    def lb(self, ax: int, bx: int, cx: int, dx: int, si: int, di: int, /) -> tuple[int, ...]:
        """``in``: the six registers out."""

    def hb_out(self, ax: int, bx: int, dx: int, di: int, bp: int, data: bytes, /) -> tuple[int, ...]:
        """``rep outsb`` of ``data`` (RSI, RCX are its address and length): the seven registers out."""

    def hb_in(self, ax: int, bx: int, dx: int, si: int, bp: int, size: int, /) -> tuple[tuple[int, ...], bytes]:
        """``rep insb`` into a fresh ``size``-byte buffer: the seven registers out, and the buffer."""

    def exchange(self, payload: bytes, words: ExchangeWords, /) -> bytes | tuple[int, tuple[int, ...], bytes, int]:
        """A whole exchange's calls back to back (see `exchange_by_calls`): the message, or where it stopped.

        Where it stopped is ``(stage, regs, data, asked)``, an `ExchangeStopped` or a plain tuple laid out the same.
        """


class ExchangeWords(NamedTuple):
    """What `DirectBackdoor.exchange` puts in the registers and tests in the statuses.

    Declared here, passed to the C extension as a tuple, so that the message
    channel's facts stay in this module.  One per open channel (`GuestChannel`).
    """

    dx: int  # DX of the low-bandwidth calls: the channel id and the port
    hb_dx: int  # the same for the high-bandwidth ones
    cookie_high: int
    cookie_low: int
    cx_sendsize: int  # ECX of SENDSIZE, RECVSIZE and RECVSTATUS
    cx_recvsize: int
    cx_recvstatus: int
    hb_bx: int  # EBX of rep outsb / rep insb
    success: int  # the status bits tested
    dorecv: int
    hb: int
    sendsize_type: int  # what RECVSIZE puts in DX's high half when a message waits


class ExchangeStage(enum.IntEnum):
    """The calls of one exchange, in order: where `DirectBackdoor.exchange` may stop."""

    SENDSIZE = 0
    HB_OUT = 1
    RECVSIZE = 2
    HB_IN = 3
    RECVSTATUS = 4


class ExchangeStopped(NamedTuple):
    """Where an exchange left the plain path: that call's stage, its registers out, the bytes received."""

    stage: int
    regs: tuple[int, ...]  # six for the low-bandwidth calls, seven (with RBP) for rep outsb / rep insb
    data: bytes
    # The size rep insb was asked for (0 before it): its RCX out is what the VMX left untransferred
    # (0 from the trap engine), not the size, so a stop at or after it says the size here.
    asked: int = 0


def exchange_by_calls(backdoor: DirectBackdoor, payload: bytes, words: ExchangeWords) -> bytes | ExchangeStopped:
    """`DirectBackdoor.exchange` made of the three single calls: the C extension's contract, in Python.

    Send: SENDSIZE, then (if high bandwidth and a payload) rep outsb.  Receive:
    RECVSIZE; if a message waits, rep insb of it (none for an empty one);
    RECVSTATUS.  At the first answer off that path (a status without success,
    a checkpoint, low bandwidth, a wrong message type, a short rep insb),
    stop: `GuestChannel.exchange_direct` goes on from that call.
    """
    (dx, hb_dx, cookie_high, cookie_low, cx_sendsize, cx_recvsize, cx_recvstatus, hb_bx, success, dorecv, hb,
     sendsize_type) = words
    regs = backdoor.lb(BDOOR_MAGIC, len(payload), cx_sendsize, dx, cookie_high, cookie_low)
    status = (regs[2] >> 16) & 0xFFFF
    if not status & success or (payload and not status & hb):
        return ExchangeStopped(ExchangeStage.SENDSIZE, regs, b"")
    if payload:
        regs = backdoor.hb_out(BDOOR_MAGIC, hb_bx, hb_dx, cookie_low, cookie_high, payload)
        if not (regs[1] >> 16) & success:
            return ExchangeStopped(ExchangeStage.HB_OUT, regs, b"")
    regs = backdoor.lb(BDOOR_MAGIC, 0, cx_recvsize, dx, cookie_high, cookie_low)
    status = (regs[2] >> 16) & 0xFFFF
    if not status & success:
        return ExchangeStopped(ExchangeStage.RECVSIZE, regs, b"")
    if not status & dorecv:
        return b""
    size = regs[1] & MASK32
    if (regs[3] >> 16) & 0xFFFF != sendsize_type or (size and not status & hb):
        return ExchangeStopped(ExchangeStage.RECVSIZE, regs, b"")
    data = b""
    if size:
        regs, data = backdoor.hb_in(BDOOR_MAGIC, hb_bx, hb_dx, cookie_high, cookie_low, size)
        if not (regs[1] >> 16) & success or len(data) != size:  # short: never from the C extension's buffer
            return ExchangeStopped(ExchangeStage.HB_IN, regs, data, size)
    regs = backdoor.lb(BDOOR_MAGIC, success, cx_recvstatus, dx, cookie_high, cookie_low)
    if not (regs[2] >> 16) & success:
        return ExchangeStopped(ExchangeStage.RECVSTATUS, regs, data, size)
    return data


class DirectCalls:
    """A `DirectBackdoor` over any executor: each direct call becomes the `BackdoorCall` it stands for.

    What tests and the in-memory VMX use, so the direct path meets the same
    fakes, fault injection and VMX as the generator steps.
    """

    def __init__(self, execute: Backdoor) -> None:
        self._execute = execute

    def __call__(self, call: BackdoorCall) -> BackdoorResult:
        return self._execute(call)

    def lb(self, ax: int, bx: int, cx: int, dx: int, si: int, di: int, /) -> tuple[int, ...]:
        return tuple(self._execute(BackdoorCall(BackdoorOp.LOW_BANDWIDTH, Registers(ax, bx, cx, dx, si, di))).regs[:6])

    def hb_out(self, ax: int, bx: int, dx: int, di: int, bp: int, data: bytes, /) -> tuple[int, ...]:
        regs = Registers(ax, bx, len(data), dx, 0, di, bp)
        return tuple(self._execute(BackdoorCall(BackdoorOp.HB_OUT, regs, data)).regs)

    def hb_in(self, ax: int, bx: int, dx: int, si: int, bp: int, size: int, /) -> tuple[tuple[int, ...], bytes]:
        result = self._execute(BackdoorCall(BackdoorOp.HB_IN, Registers(ax, bx, size, dx, si, 0, bp)))
        return tuple(result.regs), result.data

    def exchange(self, payload: bytes, words: ExchangeWords, /) -> bytes | tuple[int, tuple[int, ...], bytes, int]:
        return exchange_by_calls(self, payload, words)


def _message_regs(kind: MessageType, channel: int, bx: int, cookie_high: int, cookie_low: int) -> Registers:
    return Registers(
        ax=BDOOR_MAGIC,
        bx=bx & MASK32,
        cx=pack16(kind, CMD_MESSAGE),
        dx=pack16(channel, BDOOR_PORT),
        si=cookie_high,
        di=cookie_low,
    )


# The guest side tests status bits as plain ints: every poll reads several statuses,
# and building an IntFlag member from a register costs more than the rest of the check.
_SUCCESS = int(Status.SUCCESS)
_DORECV = int(Status.DORECV)
_CPT = int(Status.CPT)
_HB = int(Status.HB)
# ECX of each message call, and EBX of the high-bandwidth ones: constants.
_CX = {kind: pack16(kind, CMD_MESSAGE) for kind in MessageType}
_HB_BX = pack16(Status.SUCCESS, BDOORHB_CMD_MESSAGE)
_LOW_BANDWIDTH = BackdoorOp.LOW_BANDWIDTH
_HB_OUT = BackdoorOp.HB_OUT
_HB_IN = BackdoorOp.HB_IN
_SENDSIZE = int(MessageType.SENDSIZE)
_CX_SENDSIZE = _CX[MessageType.SENDSIZE]
_CX_RECVSIZE = _CX[MessageType.RECVSIZE]
_CX_RECVSTATUS = _CX[MessageType.RECVSTATUS]
_AT_SENDSIZE = int(ExchangeStage.SENDSIZE)
_AT_HB_OUT = int(ExchangeStage.HB_OUT)
_AT_RECVSIZE = int(ExchangeStage.RECVSIZE)
_AT_HB_IN = int(ExchangeStage.HB_IN)
# Each backdoor call builds its registers and its call as named tuples through tuple.__new__,
# skipping their Python-level __new__: under the trap engine every Python step between two
# trapped instructions runs cache-cold, and these steps doubled the guest's CPU per TCLO poll.
_new = tuple.__new__


def _status(regs: Registers) -> int:
    return (regs.cx >> 16) & 0xFFFF  # high16(ECX), inline: it is read after every call


class GuestChannel:
    """The guest's end of one message channel (RPCI or TCLO).

    Use the generator methods with `run_steps` or any other driver; each
    raises `MessageChannelError` on failure, after which the channel should
    be closed and reopened.
    """

    def __init__(self, protocol: int) -> None:
        self.protocol = protocol
        self.id: int | None = None
        self.cookie_high = 0
        self.cookie_low = 0
        self._dx = 0  # DX of every low-bandwidth call on this channel: its id and the port
        self._hb_dx = 0  # the same for high-bandwidth calls
        self._words: ExchangeWords | None = None  # what `exchange_direct` passes, once open

    @property
    def is_open(self) -> bool:
        return self.id is not None

    def _call(self, kind: MessageType, bx: int = 0) -> BackdoorCall:
        if self.id is None:
            raise MessageChannelError("message channel is not open")
        regs = _new(Registers, (BDOOR_MAGIC, bx & MASK32, _CX[kind], self._dx, self.cookie_high, self.cookie_low, 0))
        return _new(BackdoorCall, (_LOW_BANDWIDTH, regs, b""))

    def open(self) -> Generator[BackdoorCall, BackdoorResult, None]:
        for bx in (self.protocol | FLAG_COOKIE, self.protocol):
            result = yield BackdoorCall(BackdoorOp.LOW_BANDWIDTH, _message_regs(MessageType.OPEN, 0, bx, 0, 0))
            if _status(result.regs) & _SUCCESS:
                self.id = high16(result.regs.dx)
                self._dx = pack16(self.id, BDOOR_PORT)
                self._hb_dx = pack16(self.id, BDOORHB_PORT)
                if bx & FLAG_COOKIE:
                    self.cookie_high = result.regs.si & MASK32
                    self.cookie_low = result.regs.di & MASK32
                self._words = ExchangeWords(
                    self._dx, self._hb_dx, self.cookie_high, self.cookie_low, _CX_SENDSIZE, _CX_RECVSIZE,
                    _CX_RECVSTATUS, _HB_BX, _SUCCESS, _DORECV, _HB, _SENDSIZE,
                )
                return
        raise MessageChannelError(f"the VMX refused to open a channel for protocol {self.protocol:#x}")

    def close(self) -> Generator[BackdoorCall, BackdoorResult, None]:
        if self.id is None:
            return
        result = yield self._call(MessageType.CLOSE)
        self.id = None
        self._words = None
        if not _status(result.regs) & _SUCCESS:
            raise MessageChannelError("the VMX refused to close the channel")

    def exchange(self, payload: bytes) -> Generator[BackdoorCall, BackdoorResult, bytes]:
        """Send ``payload``, then receive the answer (a TCLO poll: the reply out, the next command in)."""
        yield from self.send(payload)
        return (yield from self.receive())

    # -- the same, by direct calls (see DirectBackdoor): the common case inline, the rest by the steps

    def exchange_direct(self, payload: bytes, backdoor: DirectBackdoor) -> bytes:
        """`exchange` made with direct calls: the same backdoor calls, in the same order.

        The plain path (sent and received at high bandwidth, or nothing waiting)
        is one `DirectBackdoor.exchange`, its calls back to back; at the first
        answer off it, the rest goes on here from that very call.
        """
        words = self._words
        if words is None:
            raise MessageChannelError("message channel is not open")
        result = backdoor.exchange(payload, words)
        if isinstance(result, bytes):
            return result
        stage, regs, data, asked = result
        if stage == _AT_SENDSIZE:
            self._sent_size(payload, regs[2], backdoor)
        elif stage == _AT_HB_OUT:
            self._sent_high_bandwidth(payload, regs[1], backdoor)
        elif stage == _AT_RECVSIZE:
            return self._received_size(regs[1], regs[2], regs[3], backdoor)
        elif stage == _AT_HB_IN:
            return self._received_high_bandwidth(regs[1], asked, data, backdoor)
        else:
            return self._received_status(regs[2], data, backdoor)
        return self.receive_direct(backdoor)

    def send_direct(self, payload: bytes, backdoor: DirectBackdoor) -> None:
        """`send` made with direct calls."""
        if self.id is None:
            raise MessageChannelError("message channel is not open")
        cx = backdoor.lb(BDOOR_MAGIC, len(payload), _CX_SENDSIZE, self._dx, self.cookie_high, self.cookie_low)[2]
        self._sent_size(payload, cx, backdoor)

    def _sent_size(self, payload: bytes, cx: int, backdoor: DirectBackdoor) -> None:
        """`send_direct` on from SENDSIZE's answer (ECX)."""
        status = (cx >> 16) & 0xFFFF
        if not status & _SUCCESS:
            raise MessageChannelError(f"SENDSIZE of {len(payload)} bytes refused (status {status:#x})")
        if not payload:
            return
        if status & _HB:
            bx = backdoor.hb_out(BDOOR_MAGIC, _HB_BX, self._hb_dx, self.cookie_low, self.cookie_high, payload)[1]
            self._sent_high_bandwidth(payload, bx, backdoor)
        elif not run_steps(self._send_low_bandwidth(payload), backdoor):
            run_steps(self.send(payload), backdoor)  # a checkpoint: start over, as `send` does

    def _sent_high_bandwidth(self, payload: bytes, bx: int, backdoor: DirectBackdoor) -> None:
        """`send_direct` on from rep outsb's answer (EBX)."""
        status = (bx >> 16) & 0xFFFF
        if not (status & _SUCCESS or self._chunk_ok(status, "high-bandwidth send")):
            run_steps(self.send(payload), backdoor)  # a checkpoint: start over, as `send` does

    def receive_direct(self, backdoor: DirectBackdoor) -> bytes:
        """`receive` made with direct calls."""
        if self.id is None:
            raise MessageChannelError("message channel is not open")
        _, bx, cx, dx, _, _ = backdoor.lb(BDOOR_MAGIC, 0, _CX_RECVSIZE, self._dx, self.cookie_high, self.cookie_low)
        return self._received_size(bx, cx, dx, backdoor)

    def _received_size(self, bx: int, cx: int, dx: int, backdoor: DirectBackdoor) -> bytes:
        """`receive_direct` on from RECVSIZE's answer."""
        status = (cx >> 16) & 0xFFFF
        if not status & _SUCCESS:
            raise MessageChannelError(f"RECVSIZE failed (status {status:#x})")
        if not status & _DORECV:
            return b""
        if (dx >> 16) & 0xFFFF != _SENDSIZE:
            raise MessageChannelError("RECVSIZE answered with the wrong message type")
        size = bx & MASK32
        if status & _HB and size:
            regs, data = backdoor.hb_in(BDOOR_MAGIC, _HB_BX, self._hb_dx, self.cookie_high, self.cookie_low, size)
            return self._received_high_bandwidth(regs[1], size, data, backdoor)
        return self._received_payload(run_steps(self._receive_low_bandwidth(size), backdoor), backdoor)  # type: ignore[arg-type]

    def _received_high_bandwidth(self, bx: int, size: int, data: bytes, backdoor: DirectBackdoor) -> bytes:
        """`receive_direct` on from rep insb's answer (EBX) and bytes, ``size`` having been asked for."""
        status = (bx >> 16) & 0xFFFF
        if not (status & _SUCCESS and len(data) == size):
            return self._received_payload(
                run_steps(self._high_bandwidth_receive_failed(status, size, data), backdoor),  # type: ignore[arg-type]
                backdoor,
            )
        return self._received_payload(data, backdoor)

    def _received_payload(self, data: bytes | None, backdoor: DirectBackdoor) -> bytes:
        """`receive_direct` on with the message's bytes, or None after a checkpoint."""
        if data is None:
            return self._receive_again(backdoor)
        cx = backdoor.lb(BDOOR_MAGIC, _SUCCESS, _CX_RECVSTATUS, self._dx, self.cookie_high, self.cookie_low)[2]
        return self._received_status(cx, data, backdoor)

    def _received_status(self, cx: int, data: bytes, backdoor: DirectBackdoor) -> bytes:
        """`receive_direct` on from RECVSTATUS's answer (ECX) for ``data``."""
        status = (cx >> 16) & 0xFFFF
        if status & _SUCCESS or self._chunk_ok(status, "RECVSTATUS"):
            return data
        return self._receive_again(backdoor)

    def _receive_again(self, backdoor: DirectBackdoor) -> bytes:
        return run_steps(self.receive(), backdoor)  # type: ignore[return-value]  # a checkpoint: start over

    def send(self, payload: bytes) -> Generator[BackdoorCall, BackdoorResult, None]:
        for _ in range(CHECKPOINT_RETRIES):
            result = yield self._call(MessageType.SENDSIZE, len(payload))
            status = (result.regs.cx >> 16) & 0xFFFF
            if not status & _SUCCESS:
                raise MessageChannelError(f"SENDSIZE of {len(payload)} bytes refused (status {status:#x})")
            if not payload:
                return
            if status & _HB:
                # rep outsb: RSI (the buffer) is the executor's; cookies in EBP (high) and EDI (low).
                regs = _new(Registers, (BDOOR_MAGIC, _HB_BX, len(payload), self._hb_dx, 0, self.cookie_low,
                                        self.cookie_high))
                result = yield _new(BackdoorCall, (_HB_OUT, regs, payload))
                status = (result.regs.bx >> 16) & 0xFFFF
                sent = status & _SUCCESS or self._chunk_ok(status, "high-bandwidth send")
            else:
                sent = yield from self._send_low_bandwidth(payload)
            if sent:
                return
        raise MessageChannelError("send kept being interrupted by checkpoints")

    def _send_low_bandwidth(self, payload: bytes) -> Generator[BackdoorCall, BackdoorResult, bool]:
        for offset in range(0, len(payload), 4):
            word = int.from_bytes(payload[offset : offset + 4].ljust(4, b"\0"), "little")
            result = yield self._call(MessageType.SENDPAYLOAD, word)
            if not self._chunk_ok(_status(result.regs), "SENDPAYLOAD"):
                return False
        return True

    @staticmethod
    def _chunk_ok(status: int, what: str) -> bool:
        """True if the chunk went through, False to restart after a checkpoint."""
        if status & _SUCCESS:
            return True
        if status & _CPT:
            return False
        raise MessageChannelError(f"{what} failed (status {status:#x})")

    def receive(self) -> Generator[BackdoorCall, BackdoorResult, bytes]:
        """Receive one message; an empty result means the VMX had nothing."""
        for _ in range(CHECKPOINT_RETRIES):
            result = yield self._call(MessageType.RECVSIZE)
            regs = result.regs
            status = (regs.cx >> 16) & 0xFFFF
            if not status & _SUCCESS:
                raise MessageChannelError(f"RECVSIZE failed (status {status:#x})")
            if not status & _DORECV:
                return b""
            if (regs.dx >> 16) & 0xFFFF != _SENDSIZE:
                raise MessageChannelError("RECVSIZE answered with the wrong message type")
            size = regs.bx & MASK32
            if status & _HB and size:
                # rep insb: RDI (the buffer) is the executor's; cookies in ESI (high) and EBP (low).
                regs = _new(Registers, (BDOOR_MAGIC, _HB_BX, size, self._hb_dx, self.cookie_high, 0, self.cookie_low))
                result = yield _new(BackdoorCall, (_HB_IN, regs, b""))
                status = (result.regs.bx >> 16) & 0xFFFF
                if status & _SUCCESS and len(result.data) == size:
                    data: bytes | None = result.data
                else:
                    data = yield from self._high_bandwidth_receive_failed(status, size, result.data)
            else:
                data = yield from self._receive_low_bandwidth(size)
            if data is None:
                continue
            ack = yield self._call(MessageType.RECVSTATUS, _SUCCESS)
            status = _status(ack.regs)
            if status & _SUCCESS or self._chunk_ok(status, "RECVSTATUS"):
                return data
        raise MessageChannelError("receive kept being interrupted by checkpoints")

    def _high_bandwidth_receive_failed(
        self, status: int, size: int, data: bytes
    ) -> Generator[BackdoorCall, BackdoorResult, bytes | None]:
        """None to start over after a checkpoint; else the VMX is told we gave up, and it raises."""
        if not status & (_SUCCESS | _CPT):
            yield from self._error_ack(MessageType.RECVSTATUS)
        if not self._chunk_ok(status, "high-bandwidth receive"):
            return None
        raise MessageChannelError(f"high-bandwidth receive returned {len(data)} of {size} bytes")

    def _receive_low_bandwidth(self, size: int) -> Generator[BackdoorCall, BackdoorResult, bytes | None]:
        data = bytearray()
        while len(data) < size:
            result = yield self._call(MessageType.RECVPAYLOAD, _SUCCESS)
            status = _status(result.regs)
            if status & _SUCCESS and high16(result.regs.dx) != MessageType.SENDPAYLOAD:
                yield from self._error_ack(MessageType.RECVPAYLOAD)
                raise MessageChannelError("RECVPAYLOAD answered with the wrong message type")
            if not self._chunk_ok(status, "RECVPAYLOAD"):
                return None
            data += struct.pack("<I", result.regs.bx & MASK32)
        return bytes(data[:size])

    def _error_ack(self, kind: MessageType) -> Generator[BackdoorCall, BackdoorResult, None]:
        # Tell the VMX we gave up on this message so that it can drop or requeue it.
        yield self._call(kind, 0)


# --------------------------------------------------------------------------- VMX side


class ChannelEndpoint(Protocol):
    """What sits behind one VMX-side channel: an RPCI server or a TCLO queue."""

    def message_received(self, data: bytes) -> None:
        """The guest finished sending ``data`` (empty for a TCLO poll)."""

    def next_message(self) -> bytes | None:
        """What the guest gets at its next RECVSIZE, or None for nothing."""

    def message_delivered(self, data: bytes) -> None:
        """The guest acknowledged ``data`` (RECVSTATUS with success)."""

    def message_refused(self, data: bytes) -> None:
        """The guest gave up receiving ``data`` (error ack): it may be offered again."""

    def closed(self) -> None:
        """The channel was closed by the guest, or its owner died."""


EndpointFactory = Callable[[int, int], "ChannelEndpoint | None"]  # (protocol, owner) -> endpoint


@dataclass
class HostChannel:
    id: int
    protocol: int
    owner: int
    endpoint: ChannelEndpoint
    cookie_high: int = 0
    cookie_low: int = 0
    checks_cookies: bool = True
    send_size: int | None = None
    send_buffer: bytearray = field(default_factory=bytearray)
    outgoing: bytes | None = None
    recv_offset: int = 0


class HostChannels:
    """The VMX's channel table: turns the guest's message calls into replies.

    ``max_channels`` bounds how many a guest may hold (a real VMX allows
    few); ``high_bandwidth`` says whether transfers may use ``rep`` string
    I/O.  Channels remember the process (``owner``) that opened them, so
    the trap engine can close them when it dies.
    """

    def __init__(
        self,
        endpoint_factory: EndpointFactory,
        *,
        max_channels: int = 8,
        max_message: int = MAX_MESSAGE,
        high_bandwidth: bool = True,
        random_cookie: Callable[[], int] = lambda: int.from_bytes(os.urandom(4), "little"),
    ) -> None:
        self._factory = endpoint_factory
        self.max_channels = min(max_channels, MAX_CHANNELS)
        self.max_message = max_message
        self.high_bandwidth = high_bandwidth
        self._cookie = random_cookie
        self.channels: dict[int, HostChannel] = {}

    # -- low bandwidth

    def low_bandwidth(self, owner: int, regs: Registers) -> Registers:
        """Answer one ``BDOOR_CMD_MESSAGE`` call."""
        kind = high16(regs.cx)
        if kind == MessageType.OPEN:
            return self._open(owner, regs)
        channel = self._checked(regs, regs.si, regs.di)
        if channel is None or kind > MessageType.CLOSE:
            return self._reply(regs, Status.FAIL)
        handler = {
            MessageType.SENDSIZE: self._send_size,
            MessageType.SENDPAYLOAD: self._send_payload,
            MessageType.RECVSIZE: self._receive_size,
            MessageType.RECVPAYLOAD: self._receive_payload,
            MessageType.RECVSTATUS: self._receive_status,
            MessageType.CLOSE: self._close_call,
        }[MessageType(kind)]
        return handler(channel, regs)

    @staticmethod
    def _reply(regs: Registers, status: Status, **changes: int) -> Registers:
        return regs.with_(cx=pack16(status, 0), **changes)

    def _checked(self, regs: Registers, cookie_high: int, cookie_low: int) -> HostChannel | None:
        channel = self.channels.get(high16(regs.dx))
        if channel is None:
            return None
        if channel.checks_cookies and (
            (cookie_high & MASK32) != channel.cookie_high or (cookie_low & MASK32) != channel.cookie_low
        ):
            return None
        return channel

    def _open(self, owner: int, regs: Registers) -> Registers:
        protocol = regs.bx & ~FLAG_COOKIE & MASK32
        free = next((i for i in range(self.max_channels) if i not in self.channels), None)
        if free is None:
            return self._reply(regs, Status.FAIL)
        endpoint = self._factory(protocol, owner)
        if endpoint is None:
            return self._reply(regs, Status.FAIL)
        with_cookies = bool(regs.bx & FLAG_COOKIE)
        channel = HostChannel(free, protocol, owner, endpoint, checks_cookies=with_cookies)
        if with_cookies:
            channel.cookie_high, channel.cookie_low = self._cookie() & MASK32, self._cookie() & MASK32
        self.channels[free] = channel
        return self._reply(
            regs,
            Status.SUCCESS,
            dx=pack16(free, low16(regs.dx)),
            si=channel.cookie_high,
            di=channel.cookie_low,
        )

    def _send_size(self, channel: HostChannel, regs: Registers) -> Registers:
        size = regs.bx & MASK32
        if size > self.max_message:
            channel.send_size = None
            return self._reply(regs, Status.FAIL)
        channel.send_size = size
        channel.send_buffer = bytearray()
        if size == 0:
            self._deliver_send(channel)
            return self._reply(regs, Status.SUCCESS)
        status = Status.SUCCESS | (Status.HB if self.high_bandwidth else Status.FAIL)
        return self._reply(regs, status)

    def _send_payload(self, channel: HostChannel, regs: Registers) -> Registers:
        if channel.send_size is None:
            return self._reply(regs, Status.FAIL)
        missing = channel.send_size - len(channel.send_buffer)
        channel.send_buffer += struct.pack("<I", regs.bx & MASK32)[: min(4, missing)]
        if len(channel.send_buffer) == channel.send_size:
            self._deliver_send(channel)
        return self._reply(regs, Status.SUCCESS)

    def _deliver_send(self, channel: HostChannel) -> None:
        data = bytes(channel.send_buffer)
        channel.send_size = None
        channel.send_buffer = bytearray()
        # A new message from the guest supersedes an answer it never fetched.
        channel.outgoing = None
        channel.endpoint.message_received(data)

    def _receive_size(self, channel: HostChannel, regs: Registers) -> Registers:
        if channel.outgoing is None:
            channel.outgoing = channel.endpoint.next_message()
        channel.recv_offset = 0
        if channel.outgoing is None:
            return self._reply(regs, Status.SUCCESS)
        status = Status.SUCCESS | Status.DORECV
        if self.high_bandwidth and channel.outgoing:
            status |= Status.HB
        return self._reply(
            regs,
            status,
            bx=len(channel.outgoing),
            dx=pack16(MessageType.SENDSIZE, low16(regs.dx)),
        )

    def _receive_payload(self, channel: HostChannel, regs: Registers) -> Registers:
        if channel.outgoing is None:
            return self._reply(regs, Status.FAIL)
        if not regs.bx & Status.SUCCESS:
            self._refuse(channel)
            return self._reply(regs, Status.SUCCESS)
        chunk = channel.outgoing[channel.recv_offset : channel.recv_offset + 4]
        channel.recv_offset += 4
        return self._reply(
            regs,
            Status.SUCCESS,
            bx=int.from_bytes(chunk.ljust(4, b"\0"), "little"),
            dx=pack16(MessageType.SENDPAYLOAD, low16(regs.dx)),
        )

    def _receive_status(self, channel: HostChannel, regs: Registers) -> Registers:
        if channel.outgoing is None:
            return self._reply(regs, Status.FAIL)
        if not regs.bx & Status.SUCCESS:
            self._refuse(channel)
            return self._reply(regs, Status.SUCCESS)
        data, channel.outgoing = channel.outgoing, None
        channel.endpoint.message_delivered(data)
        return self._reply(regs, Status.SUCCESS)

    def _refuse(self, channel: HostChannel) -> None:
        data, channel.outgoing = channel.outgoing, None
        if data is not None:
            channel.endpoint.message_refused(data)

    def _close_call(self, channel: HostChannel, regs: Registers) -> Registers:
        self._close(channel)
        return self._reply(regs, Status.SUCCESS)

    def _close(self, channel: HostChannel) -> None:
        del self.channels[channel.id]
        channel.endpoint.closed()

    def close_owner(self, owner: int) -> None:
        """Close every channel ``owner`` opened (the process died or exec'd)."""
        for channel in [c for c in self.channels.values() if c.owner == owner]:
            self._close(channel)

    # -- high bandwidth

    def _hb_channel(self, regs: Registers, cookie_high: int, cookie_low: int) -> HostChannel | None:
        if low16(regs.bx) != BDOORHB_CMD_MESSAGE:
            return None
        return self._checked(regs, cookie_high, cookie_low)

    @staticmethod
    def _hb_reply(regs: Registers, status: Status) -> Registers:
        return regs.with_(bx=pack16(status, low16(regs.bx)))

    def high_bandwidth_out(self, owner: int, regs: Registers, data: bytes) -> Registers:
        """``rep outsb``: the guest sends a whole message body at once."""
        channel = self._hb_channel(regs, regs.bp, regs.di)
        size = regs.cx
        if channel is None or channel.send_size is None or size != channel.send_size or len(data) != size:
            return self._hb_reply(regs, Status.FAIL)
        channel.send_buffer = bytearray(data)
        self._deliver_send(channel)
        return self._hb_reply(regs, Status.SUCCESS)

    def high_bandwidth_in(self, owner: int, regs: Registers) -> tuple[Registers, bytes]:
        """``rep insb``: the guest fetches the whole pending message at once."""
        channel = self._hb_channel(regs, regs.si, regs.bp)
        if channel is None or channel.outgoing is None or regs.cx != len(channel.outgoing):
            return self._hb_reply(regs, Status.FAIL), b""
        return self._hb_reply(regs, Status.SUCCESS), channel.outgoing
