"""``--transport``: which channel reaches the VMX.

``unix:PATH`` / ``tcp:HOST:PORT`` reach ``vmtools-sim`` (or anything speaking
the stream transport) and work anywhere.  ``backdoor``, ``vsock`` and
``auto`` need a VMware VM, which detection (CPUID, then GETVERSION) must
confirm first; elsewhere they refuse with a message pointing at the
simulator.

``auto`` chooses as open-vm-tools does: vsock first, the backdoor as the
fallback.  RPCI tries vsock (three attempts, 100 ms apart); after a failure
it sticks to the backdoor for 2 s, doubling per failure up to 300 s, and a
successful TCLO ``reset`` ends the wait early.  TCLO tries vsock once per
start and otherwise polls over the backdoor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime

from ..endpoint_strings import EndpointStringError, parse_client
from ..exit_codes import ExitCode, ToolError
from .interfaces import ChannelError, IGuestChannel

if TYPE_CHECKING:
    from ..codecs.message import Backdoor
    from .detect import Detection
    from .vsock import Connector

TRANSPORTS = "auto, backdoor, vsock, unix:PATH or tcp:HOST:PORT"
VMWARE_TRANSPORTS = ("auto", "backdoor", "vsock")
STREAM_PREFIXES = ("unix:", "tcp:")


class TransportUnavailable(ChannelError, ToolError):
    """The transport asked for cannot work here (not a VMware VM)."""

    exit_code = ExitCode.UNREACHABLE


class BadTransport(TransportUnavailable):
    """A ``--transport`` value that names no transport: a usage error."""

    exit_code = ExitCode.USAGE


def check_transport(spec: str) -> str:
    """``--transport spec`` checked where it is parsed: a VMware transport's name, or a stream
    endpoint string that can work (`parse_client`); `TransportUnavailable` in one sentence if not."""
    if spec in VMWARE_TRANSPORTS:
        return spec
    if not spec.startswith(STREAM_PREFIXES):
        raise BadTransport(f"unknown transport {spec!r}: expected {TRANSPORTS}")
    try:
        parse_client(spec)
    except EndpointStringError as error:
        raise BadTransport(str(error)) from None
    return spec


def _not_vmware(spec: str, found: Detection) -> TransportUnavailable:
    return TransportUnavailable(
        f"--transport {spec} needs a VMware VM, and this is not one ({found.reason}). "
        "Outside VMware use --simulate (an embedded simulated VMX), or --transport unix:PATH "
        "(or tcp:HOST:PORT) to reach a running `vmtools-sim serve`."
    )


def make_channel(
    spec: str,
    reactor: Any,
    *,
    detection: Callable[[], Detection] | None = None,
    backdoor: Backdoor | None = None,
    vsock_connector: Connector | None = None,
    clock: IReactorTime | None = None,
) -> IGuestChannel:
    """The `IGuestChannel` that ``--transport spec`` names.

    ``detection``, ``backdoor`` (an executor) and ``vsock_connector`` default
    to the real ones; tests inject theirs.  ``clock`` defaults to ``reactor``.
    Only the chosen transport's modules are imported: a guest on the stream
    transport never loads the backdoor or vsock code, nor one on the backdoor vsock's.
    """
    if check_transport(spec) not in VMWARE_TRANSPORTS:
        from .stream import StreamChannel

        return StreamChannel(reactor, spec)
    if detection is None:
        from .detect import detected

        detection = detected
    found = detection()
    if not found.vmware:
        raise _not_vmware(spec, found)
    clock = clock if clock is not None else reactor
    if spec == "vsock":
        from .vsock import VsockChannel

        return VsockChannel(reactor, clock=clock, connector=vsock_connector)
    from .backdoor import BackdoorChannel, hardware_executor

    executor = backdoor
    if executor is None:
        assert found.interface is not None
        executor = hardware_executor(found.interface)
    if spec == "backdoor":
        return BackdoorChannel(executor, clock)
    from .auto import AutoChannel
    from .vsock import VsockChannel

    vsock = VsockChannel(reactor, clock=clock, connector=vsock_connector)
    return AutoChannel(vsock, BackdoorChannel(executor, clock), clock)
