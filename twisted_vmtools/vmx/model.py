"""The simulated VMX: guestinfo, tools status, the TCLO queue, and a log of every RPC."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..codecs.rpci import UNMANAGED_VERSION
from ..codecs.tclo import PING, TCLOError, is_reply, parse_reply
from .guestinfo_view import first_ipv4, guest_fields, ip_address_text
from .lifecycle import MANAGED_OPTIONS, greet
from .rpci_server import RPCIServer, ToolsState
from .stores import ARROWS as ARROWS  # re-exported: the log's arrows are part of the model's interface
from .stores import GuestInfoStore, RPCLog, guestinfo_key_bytes
from .stores import RPCRecord as RPCRecord
from .tclo_queue import DEFAULT_TIMEOUT, GuestGone, NoGuest, TCLOQueue

RUNNING = "guestToolsRunning"
NOT_RUNNING = "guestToolsNotRunning"
PING_INTERVAL = 5.0
STALE_AFTER = 15.0  # three missed pings: the tools are no longer running


class VMX:
    """One virtual machine's VMX, as the guest tools see it.

    Channels (stream connections, backdoor message channels) report to it
    with `rpci`, `tclo_connected`, `tclo_disconnected` and `guest_alive`.
    Observers added with `observe` see every `RPCRecord` (``--trace``).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        *,
        ping_interval: float = PING_INTERVAL,
        stale_after: float = STALE_AFTER,
        tclo_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.clock = clock
        self.guestinfo = GuestInfoStore()
        self.tools = ToolsState()
        self.rpci_server = RPCIServer(self.guestinfo, self.tools)
        self.tclo = TCLOQueue(clock)
        self.tclo_timeout = tclo_timeout
        self.records = RPCLog()
        self._observers: list[Callable[[RPCRecord], None]] = []
        self._ping_interval = ping_interval
        self._stale_after = stale_after
        self._last_alive: float | None = None
        self._ping_garbled = False  # the guest's last answer to ping was not a TCLO reply
        self._pinger = LoopingCall(self._ping)
        self._pinger.clock = clock
        self.connected_channels: set[str] = set()
        self.managed_options: tuple[tuple[bytes, bytes], ...] = MANAGED_OPTIONS
        self.greeting: Deferred[None] | None = None  # the start sequence of the newest TCLO channel

    # -- what channels call

    def rpci(self, request: bytes, channel: str = "rpci") -> bytes:
        self._record("rpci-in", channel, request)
        reply = self.rpci_server.handle(request)
        self._record("rpci-out", channel, reply)
        return reply

    def tclo_connected(self, channel: str) -> None:
        """A TCLO channel appeared: greet the guest the way a VMX does, then keep pinging.

        The greeting (docs/vmx-lifecycle.md) is the same for a guest that
        started, restarted, or found this VMX after the VMX restarted.
        """
        self.connected_channels.add(channel)
        self._ping_garbled = False
        self.greeting = ensureDeferred(self._greet())

    async def _greet(self) -> None:
        if await greet(self.send, self.managed_options):
            ensureDeferred(self._ping_once())
            if not self._pinger.running and self.connected_channels:
                self._pinger.start(self._ping_interval, now=False)

    def tclo_disconnected(self, channel: str) -> None:
        self.connected_channels.discard(channel)
        if not self.connected_channels:
            self._last_alive = None
            if self._pinger.running:
                self._pinger.stop()

    def guest_alive(self) -> None:
        """A reply, a heartbeat or a poll: the tools are there."""
        self._last_alive = self.clock.seconds()

    def tclo_reply(self, data: bytes, channel: str = "tclo") -> bool:
        """The guest's reply to the command in flight; False (and dropped) if none was."""
        self._record("tclo-in", channel, data)
        if is_reply(data):  # checked without copying a 520 KB HGFS reply's body
            self.guest_alive()  # garbage is not a sign of running tools
        if not self.tclo.reply(data):
            self.log.info("dropping TCLO reply nobody waits for: {data!r}", data=data[:60])
            return False
        return True

    def tclo_sent(self, command: bytes, channel: str = "tclo") -> None:
        self._record("tclo-out", channel, command)

    # -- what users call

    def send(self, command: bytes, timeout: float | None = None) -> Deferred[bytes]:
        """Queue a TCLO command; fires with the guest's whole reply."""
        return self.tclo.send(command, self.tclo_timeout if timeout is None else timeout)

    def require_guest(self) -> None:
        """`NoGuest` unless a guest's TCLO channel is connected.

        What a command from outside (a control client) checks before `send`:
        queued for a guest that is not there, it would wait out its whole timeout.
        """
        if not self.connected_channels:
            raise NoGuest("no guest is connected to the simulator")

    def observe(self, observer: Callable[[RPCRecord], None]) -> None:
        self._observers.append(observer)

    def unobserve(self, observer: Callable[[RPCRecord], None]) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    @property
    def running(self) -> bool:
        """Alive and registered: tools that never answered Capabilities_Register are not "running",
        so status never shows them running and not installed at once."""
        if self._last_alive is None or not self.connected_channels or self.tools.version is None:
            return False
        if self._ping_garbled:
            return False
        return self.clock.seconds() - self._last_alive <= self._stale_after

    def status(self) -> dict[str, object]:
        """What vSphere would show: guest.* keys, plus the guestinfo store."""
        version = self.tools.version
        reported = guest_fields(self.tools.guest_info, self.tools.disk_info)
        net = reported["guest.net"]
        status: dict[str, object] = {
            "guest.toolsRunningStatus": RUNNING if self.running else NOT_RUNNING,
            "guest.toolsVersionStatus": _version_status(version),
            "guest.toolsVersion": str(version if version is not None else 0),
            "guest.ipAddress": ip_address_text(self.guestinfo.get("guestinfo.ip"))
            or first_ipv4(net if isinstance(net, list) else None),
            "guest.toolsCapabilities": dict(self.tools.capabilities),
            "vmx.tcloChannels": sorted(self.connected_channels),
            **reported,
        }
        for key, value in sorted(self.guestinfo.items()):
            # A key that is not UTF-8 is shown with its odd bytes escaped (guestinfo.caf\xe9): JSON and a
            # terminal take it, and it still says which bytes it has.
            shown = guestinfo_key_bytes(key).decode("utf-8", "backslashreplace")
            status[shown] = value.decode("utf-8", "replace")
        return status

    def stop(self) -> None:
        """The VMX goes away: stop pinging, and fail every command still waiting."""
        if self._pinger.running:
            self._pinger.stop()
        self.tclo.fail_all(GuestGone("the VMX stopped"))

    # -- internals

    def _ping(self) -> None:
        if self.tclo.busy:
            return  # the guest is working on a command; its reply will count as alive
        ensureDeferred(self._ping_once())

    async def _ping_once(self) -> None:
        try:
            reply = await self.send(PING, timeout=self._stale_after)
            parse_reply(reply)
            self._ping_garbled = False
        except TCLOError:
            # Counted as not answering: tools that cannot say OK to ping are not running.
            self._ping_garbled = True
            self.log.warn("guest answered ping with garbage")
        except Exception as error:
            self.log.info("ping failed: {error}", error=str(error))

    def _record(self, direction: str, channel: str, data: bytes) -> None:
        record = RPCRecord(self.clock.seconds(), direction, channel, data)  # the model's clock, not the wall's
        self.records.append(record)  # cut to the log's caps; observers (--trace) see it whole
        for observer in list(self._observers):  # one may leave while being told
            observer(record)




def _version_status(version: int | None) -> str:
    # vSphere's names; the unmanaged marker is what open-vm-tools reports by default.
    if version is None:
        return "guestToolsNotInstalled"
    if version == UNMANAGED_VERSION:
        return "guestToolsUnmanaged"
    return "guestToolsCurrent"
