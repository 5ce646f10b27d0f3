"""What a peer can send the simulated VMX, fuzzed: backdoor message calls, RPCI requests, control
commands.  None may end in anything but the protocol's own answer (the long campaign behind these
short runs is benchmarks/fuzz.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.protocols import amp

from tests.support import Harness
from tests.vmx.test_control import control
from twisted_vmtools.codecs import registers as bd
from twisted_vmtools.codecs.message import FLAG_COOKIE, PROTO_RPCI, PROTO_TCLO, MessageType
from twisted_vmtools.vmx import control as control_module
from twisted_vmtools.vmx.backdoor_host import BackdoorHost
from twisted_vmtools.vmx.control import BAD_ARGUMENTS, ControlArgumentError, GuestInfoGet, SendTCLO, Status
from twisted_vmtools.vmx.endpoints import backdoor_endpoints
from twisted_vmtools.vmx.model import VMX

U32 = st.integers(0, bd.MASK32)


class Failed(Exception):
    pass


def raise_failures(event: dict[str, Any]) -> None:
    if "log_failure" in event:
        raise Failed(str(event["log_failure"].value))


def strict_vmx() -> VMX:
    """A VMX whose RPCI server raises, instead of logging, a handler's exception."""
    vmx = VMX(Clock())
    vmx.rpci_server.log = Logger(observer=raise_failures)  # type: ignore[arg-type]
    return vmx


def message_call() -> st.SearchStrategy[bd.Registers]:
    """A message-channel call as a guest makes it: magic, port and command right, the rest any."""
    kinds = st.sampled_from(list(MessageType)) | st.integers(0, 0xFFFF)
    protocols = st.sampled_from([PROTO_RPCI, PROTO_TCLO, PROTO_RPCI | FLAG_COOKIE, PROTO_TCLO | FLAG_COOKIE]) | U32
    return st.builds(
        lambda kind, bx, channel, si, di: bd.Registers(
            ax=bd.BDOOR_MAGIC, bx=bx, cx=(kind << 16) | bd.CMD_MESSAGE, dx=(channel << 16) | bd.BDOOR_PORT,
            si=si, di=di,
        ),
        kinds, protocols, st.integers(0, 9), U32, U32,
    )  # fmt: skip


operations = st.sampled_from(["lb", "lb", "lb", "hb-out", "hb-in", "any"])
calls = st.lists(st.tuples(operations, message_call(), U32, st.binary(max_size=64)), max_size=40)


@settings(max_examples=80)
@given(calls, st.booleans())
def test_message_channel_calls_never_raise(sequence: list[tuple[str, bd.Registers, int, bytes]], hb: bool) -> None:
    vmx = strict_vmx()
    host = BackdoorHost(backdoor_endpoints(vmx), high_bandwidth=hb)
    for op, regs, raw, data in sequence:
        if op == "lb":
            reply = host.low_bandwidth(1, regs)
            assert isinstance(reply, bd.Registers)
        elif op == "hb-out":
            host.high_bandwidth_out(1, regs.with_(bx=bd.pack16(0, bd.BDOORHB_CMD_MESSAGE), cx=len(data)), data)
        elif op == "hb-in":
            host.high_bandwidth_in(1, regs.with_(bx=bd.pack16(0, bd.BDOORHB_CMD_MESSAGE), cx=raw & 0xFFFF))
        else:  # any registers at all: not for us, or answered
            host.low_bandwidth(1, regs.with_(ax=raw, cx=raw >> 3))
        assert len(host.channels.channels) <= host.channels.max_channels
    host.owner_exited(1)
    assert not host.channels.channels


requests = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda name, args: name + args,
        st.sampled_from([
            b"info-set ", b"info-get ", b"log ", b"tools.set.version ", b"tools.set.versiontype ",
            b"SetGuestInfo  ", b"SetGuestDiskInfo ", b"tools.os.statechange.status ", b"update.tools.health ",
            b"tools.capability.x ", b"guest.log.state ",
        ]),
        st.binary(max_size=120),
    ),
)  # fmt: skip


@settings(max_examples=150)
@given(requests)
def test_rpci_requests_are_answered_without_a_handler_failure(request: bytes) -> None:
    reply = strict_vmx().rpci(request)
    assert reply[:2] in (b"1 ", b"0 ")


commands = [
    command
    for command in vars(control_module).values()
    if isinstance(command, type)
    and issubclass(command, control_module.ControlCommand)
    and command is not control_module.ControlCommand
]
keys = st.sampled_from([b"command", b"command.0", b"command.1", b"timeout", b"key", b"value", b"value.0", b"last"])
values = st.sampled_from([b"1", b"2", b"0", b"-1", b"nan", b"x", b"\xff", b"True", b"1e999", b"99999"]) | st.binary(
    max_size=12
)


@settings(max_examples=100)
@given(st.sampled_from(commands), st.dictionaries(keys | st.binary(max_size=8), values, max_size=6))
def test_control_arguments_parse_or_raise_only_control_argument_error(command: type, box: dict[bytes, bytes]) -> None:
    try:
        command.parseArguments(amp.AmpBox(box), None)  # type: ignore[attr-defined]
    except ControlArgumentError as error:
        assert error.errorCode == BAD_ARGUMENTS
        assert str(error.description).startswith(command.__name__)


@pytest.mark.parametrize(
    ("box", "says"),
    [
        ({b"timeout": b"5"}, "missing argument command"),
        ({b"command": b"-1", b"timeout": b"5"}, "not split into 1 or more chunks"),
        ({b"command": b"1", b"command.0": b"ping", b"timeout": b"soon"}, "malformed argument"),
    ],
)
def test_a_malformed_control_command_gets_one_sentence_and_the_connection_stays(
    box: dict[bytes, bytes], says: str
) -> None:
    harness = Harness()
    harness.start()
    client = control(harness)
    answers: list[Any] = []
    # AMP's own sender, bypassing the command's argument serialization (keys such as
    # "command" clash with callRemoteString's parameters).
    client._sendBoxCommand(b"SendTCLO", amp.AmpBox(box)).addBoth(answers.append)
    harness.settle()
    error = answers[0].value
    assert isinstance(error, amp.RemoteAmpError) and error.errorCode == BAD_ARGUMENTS
    assert says in str(error.description)
    found: list[Any] = []
    client.callRemote(GuestInfoGet, key="guestinfo.nothing").addBoth(found.append)
    client.callRemote(Status).addBoth(found.append)
    harness.settle()
    assert found[0] == {"found": False, "value": b""} and "status" in found[1]


def test_send_tclo_still_works_after_a_bad_one() -> None:
    harness = Harness()
    harness.start()
    client = control(harness)
    client._sendBoxCommand(b"SendTCLO", amp.AmpBox({b"timeout": b"5"})).addErrback(lambda failure: None)
    replies: list[Any] = []
    client.callRemote(SendTCLO, command=b"ping", timeout=5.0).addBoth(replies.append)
    harness.settle()
    assert replies == [{"reply": b"OK "}]


def test_backdoor_open_and_close_of_every_channel() -> None:
    # A fixed walk through the table's edges: all channels taken, one more refused, all closed.
    host = BackdoorHost(backdoor_endpoints(strict_vmx()), max_channels=3)
    base = bd.Registers(ax=bd.BDOOR_MAGIC, cx=bd.CMD_MESSAGE, dx=bd.BDOOR_PORT)
    opened = [host.low_bandwidth(7, base.with_(bx=PROTO_RPCI)) for _ in range(4)]
    assert [bd.high16(r.cx) & 1 for r in opened if r is not None] == [1, 1, 1, 0]
    for channel in range(3):
        close = base.with_(cx=(MessageType.CLOSE << 16) | bd.CMD_MESSAGE, dx=(channel << 16) | bd.BDOOR_PORT)
        reply = host.low_bandwidth(7, close)
        assert reply is not None and bd.high16(reply.cx) & 1
    assert not host.channels.channels
