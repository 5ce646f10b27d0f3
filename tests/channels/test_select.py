"""``--transport`` selection, and `AutoChannel`'s vsock-then-backdoor policy."""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from tests.support import result_of
from twisted_vmtools.channels.auto import AutoChannel
from twisted_vmtools.channels.backdoor import BackdoorChannel, host_executor
from twisted_vmtools.channels.detect import BackdoorInterface, Detection
from twisted_vmtools.channels.interfaces import IGuestChannel
from twisted_vmtools.channels.select import (
    BadTransport,
    TransportUnavailable,
    check_transport,
    make_channel,
)
from twisted_vmtools.channels.vsock import RPCI_PORT, TCLO_PORT, VsockChannel
from twisted_vmtools.codecs.message import PROTO_RPCI, PROTO_TCLO
from twisted_vmtools.exit_codes import ExitCode
from twisted_vmtools.protocols.tclo import TCLODispatcher

from .fakes import FakeVMX, PairConnector, RecordingHandler

_reactor: Any = reactor

VMWARE = Detection(True, "VMware", b"VMwareVMware", BackdoorInterface.PORT, 6, 2)
KVM = Detection(False, "the hypervisor is 'KVMKVMKVM', not VMware", b"KVMKVMKVM\0\0\0")


def never_connect(port: int, privileged: bool) -> socket.socket:
    pytest.fail("no vsock connection may be attempted")


def refusing(calls: list[tuple[int, bool]]):  # noqa: ANN201
    def connect(port: int, privileged: bool) -> socket.socket:
        calls.append((port, privileged))
        raise OSError(errno.ENODEV, "no vsock transport")

    return connect


def no_detection() -> Detection:
    pytest.fail("detection must not run for a stream transport")


@pytest.mark.parametrize("spec", ["unix:/tmp/vmx.sock", "tcp:127.0.0.1:9999"])
def test_stream_specs_need_no_detection(spec: str) -> None:
    channel = make_channel(spec, _reactor, detection=no_detection)
    assert verifyObject(IGuestChannel, channel)
    assert channel.name == spec


@pytest.mark.parametrize("spec", ["auto", "backdoor", "vsock"])
def test_refused_outside_vmware(spec: str) -> None:
    with pytest.raises(TransportUnavailable) as info:
        make_channel(spec, _reactor, detection=lambda: KVM, vsock_connector=never_connect)
    message = str(info.value)
    assert "--simulate" in message and "--transport unix:" in message and "KVMKVMKVM" in message


def test_refused_here_for_real() -> None:
    pytest.importorskip("twisted_vmtools._backdoor")
    from twisted_vmtools.channels.detect import detected

    if detected().vmware:
        pytest.skip("running in a real VMware VM")
    with pytest.raises(TransportUnavailable, match="--simulate"):
        make_channel("auto", _reactor)


def test_unknown_spec() -> None:
    with pytest.raises(TransportUnavailable, match="expected auto, backdoor, vsock"):
        make_channel("carrier-pigeon", _reactor, detection=no_detection)


@pytest.mark.parametrize(
    ("spec", "said"),
    [
        ("tcp:nonsense", "names no port"),
        ("tcp:127.0.0.1:notaport", "port must be a number"),
        ("tcp::1234", "names no host"),
        ("tcp:localhost:99999", "from 1 to 65535"),
        ("unix:", "names no socket path"),
        ("unix:/" + "x" * 120, "at most 107"),
        ("tcp:1234", "names only a port"),
    ],
)
def test_malformed_stream_spec_is_a_clear_refusal(spec: str, said: str) -> None:
    """Refused before anything connects (it used to be retried forever), in one sentence, exit code 2."""
    with pytest.raises(BadTransport, match=said) as refused:
        make_channel(spec, _reactor, detection=no_detection)
    assert refused.value.exit_code == ExitCode.USAGE
    assert "\n" not in str(refused.value) and "__init__" not in str(refused.value)
    assert check_transport("unix:/run/vmx.sock") == "unix:/run/vmx.sock"


def test_not_vmware_is_unreachable_not_usage() -> None:
    with pytest.raises(TransportUnavailable) as refused:
        make_channel("backdoor", _reactor, detection=lambda: KVM)
    assert refused.value.exit_code == ExitCode.UNREACHABLE


def test_specs_in_vmware() -> None:
    vmx = FakeVMX()
    kwargs: dict[str, Any] = {
        "detection": lambda: VMWARE,
        "backdoor": host_executor(vmx.host),
        "vsock_connector": never_connect,
    }
    assert isinstance(make_channel("backdoor", _reactor, **kwargs), BackdoorChannel)
    assert isinstance(make_channel("vsock", _reactor, **kwargs), VsockChannel)
    auto = make_channel("auto", _reactor, **kwargs)
    assert isinstance(auto, AutoChannel)
    assert verifyObject(IGuestChannel, auto)


def toolbox(command: bytes) -> bytes:
    return b"OK ATR toolbox" if command == b"reset" else b"OK "


def auto_channel(connector: Any, clock: Clock) -> tuple[FakeVMX, AutoChannel]:
    vmx = FakeVMX()
    channel = make_channel(
        "auto",
        _reactor,
        detection=lambda: VMWARE,
        backdoor=host_executor(vmx.host),
        vsock_connector=connector,
        clock=clock,
    )
    assert isinstance(channel, AutoChannel)
    return vmx, channel


def test_auto_rpci_falls_back_and_sticks() -> None:
    calls: list[tuple[int, bool]] = []
    clock = Clock()
    vmx, channel = auto_channel(refusing(calls), clock)
    reply = channel.rpci(b"info-get guestinfo.a")
    assert calls == [(RPCI_PORT, True)]
    clock.advance(0.1)
    clock.advance(0.1)
    assert calls == [(RPCI_PORT, True)] * 3  # three attempts, 100 ms apart
    assert result_of(reply) == b"1 info-get guestinfo.a"
    assert channel.rpci_via == "backdoor"

    # Sticks to the backdoor for 2 s, then tries vsock again, then waits 4 s.
    assert result_of(channel.rpci(b"b")) == b"1 b"
    assert len(calls) == 3
    clock.advance(2)
    reply = channel.rpci(b"c")
    clock.advance(0.1)
    clock.advance(0.1)
    assert result_of(reply) == b"1 c"
    assert len(calls) == 6
    clock.advance(3.9)
    assert result_of(channel.rpci(b"d")) == b"1 d"
    assert len(calls) == 6
    assert vmx.opens == [PROTO_RPCI]  # one persistent backdoor channel throughout


def test_auto_reset_retries_vsock_early() -> None:
    calls: list[tuple[int, bool]] = []
    clock = Clock()
    vmx, channel = auto_channel(refusing(calls), clock)
    dispatcher = TCLODispatcher()  # the channel watches reset through the dispatcher's observers
    dispatcher.register(b"reset", lambda args: b"ATR toolbox")
    channel.start(dispatcher)
    assert calls == [(TCLO_PORT, False)]  # TCLO: one vsock attempt, then the backdoor
    assert channel.tclo_via == "backdoor"
    reply = channel.rpci(b"x")
    clock.advance(0.1)
    clock.advance(0.1)
    result_of(reply)
    calls.clear()
    vmx.tclo.commands.append(b"reset")
    clock.advance(0.1)
    assert vmx.tclo.replies == [b"OK ATR toolbox"]
    reply = channel.rpci(b"vmx.capability.unified_loop toolbox")
    assert calls == [(RPCI_PORT, True)]  # no 2 s wait after a reset
    clock.advance(0.1)
    clock.advance(0.1)
    assert result_of(reply) == b"1 vmx.capability.unified_loop toolbox"
    result_of(channel.stop())


def test_auto_tclo_backdoor_polling() -> None:
    clock = Clock()
    vmx, channel = auto_channel(refusing([]), clock)
    handler = RecordingHandler(toolbox)
    channel.start(handler)
    vmx.tclo.commands.append(b"ping")
    clock.advance(0)
    assert handler.commands == [b"ping"]
    assert vmx.opens == [PROTO_TCLO]
    assert "tclo=backdoor" in channel.name
    result_of(channel.stop())


def test_auto_tclo_falls_back_when_the_connect_fails_later() -> None:
    # The real connector answers from a thread: its failure arrives inside the vsock
    # ClientService's own failure handling, which must not be stopped re-entrantly.
    clock = Clock()
    pending: list[Deferred[socket.socket]] = []

    def connect_later(port: int, privileged: bool) -> Deferred[socket.socket]:
        pending.append(Deferred())
        return pending[-1]

    vmx, channel = auto_channel(connect_later, clock)
    handler = RecordingHandler(toolbox)
    channel.start(handler)
    assert channel.tclo_via is None
    pending[0].errback(OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol"))
    assert channel.tclo_via == "backdoor"
    vmx.tclo.commands.append(b"ping")
    clock.advance(0)
    clock.advance(0.1)
    assert handler.commands == [b"ping"]
    clock.advance(60)
    assert len(pending) == 1  # the vsock TCLO service was stopped: no reconnect attempts
    result_of(channel.stop())


@pytest_twisted.ensureDeferred
async def test_auto_prefers_vsock() -> None:
    connector = PairConnector()
    clock = Clock()
    vmx, channel = auto_channel(connector, clock)
    handler = RecordingHandler(toolbox)
    channel.start(handler)
    tclo = await connector.peers[TCLO_PORT].get()
    assert channel.tclo_via == "vsock"
    tclo.send(b"reset")
    assert (await tclo.packets.get()).payload == b"OK ATR toolbox"

    reply = channel.rpci(b"log hello")
    rpci = await connector.peers[RPCI_PORT].get()
    assert (await rpci.packets.get()).payload == b"log hello"
    rpci.send(b"1 ")
    assert await reply == b"1 "
    assert channel.rpci_via == "vsock"
    assert vmx.opens == []  # the backdoor was never needed
    await channel.stop()
    await tclo.lost
    await rpci.lost
