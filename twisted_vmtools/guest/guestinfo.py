"""`GuestInfo`: what vSphere shows under guest.* — NICs, IPs, routes and DNS, host name, OS, disks, uptime.

Every ``interval`` seconds on the reactor's clock the facts are gathered
from an `IGuestInfoSource` and sent with ``SetGuestInfo``, as vmtoolsd's
guestInfo plugin does (protocol.md §4.3, §5).  Only values that changed
since they were last accepted are sent; a ``reset`` from the VMX forgets
what was sent, since a new VMX (after a migration or a simulator restart)
has forgotten it too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from ..codecs.diskinfo import DiskEntry, DiskInfoError, encode_disk_info
from ..codecs.guestinfo import GuestInfoKey, binary_request, text_request
from ..codecs.guestos import GuestOSError, encode_detailed_data
from ..codecs.nicinfo import (
    NicInfoError,
    NicInfoV3,
    encode_nic_info,
    to_v2,
    truncate_ips,
)
from ..codecs.tclo import CAPABILITIES_REGISTER, RESET
from ..protocols.rpci import RPCI, RPCIError
from ..protocols.tclo import TCLODispatcher
from .feature import IGuestFeature
from .sysinfo import IGuestInfoSource, SystemGuestInfoSource

DEFAULT_INTERVAL = 30.0  # vmtoolsd's [guestinfo] poll-interval


@implementer(IGuestFeature)
class GuestInfo(Service):
    """Sends the guest's facts to the VMX on a timer; only what changed, as vmtoolsd does.

    ``interval`` is the poll interval in seconds; the first round runs as
    soon as the VMX sends ``Capabilities_Register`` (or one interval after
    start, if it never does).  The NIC report goes out as XDR NicInfoV3 on key
    10; if the VMX refuses it, as V3 with at most 64 addresses per NIC on
    key 9, then as V2 on key 9 — and the method that worked is kept.
    """

    log = Logger()
    name = "guestinfo"
    capabilities: tuple[bytes, ...] = ()
    rpci: RPCI  # given by install

    def __init__(
        self,
        reactor: IReactorTime,
        *,
        interval: float = DEFAULT_INTERVAL,
        source: IGuestInfoSource | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"guest info interval must be positive, not {interval}")
        self.reactor = reactor
        self.interval = interval
        self.source: IGuestInfoSource = source if source is not None else SystemGuestInfoSource()
        self._sent: dict[GuestInfoKey, str] = {}
        self._sent_nics: NicInfoV3 | None = None
        self._nic_method = 0
        self._send_detailed = True
        self._sent_detailed: bytes | None = None
        self._sent_disks: tuple[DiskEntry, ...] | None = None
        self._round = DeferredLock()
        self._loop = LoopingCall(self.gather)
        self._loop.clock = reactor

    def install(self, dispatcher: TCLODispatcher, rpci: RPCI) -> None:
        """Observe ``reset`` (forget what was sent: a new VMX has forgotten it too) and
        ``Capabilities_Register`` (report the uptime, which the VMX uses to detect a soft
        reset, then a full round at once rather than one poll interval later)."""
        self.rpci = rpci
        dispatcher.observe(RESET, lambda args: self.forget())
        dispatcher.observe(CAPABILITIES_REGISTER, self._registered)

    async def _registered(self, args: bytes) -> None:
        await self.send_uptime()
        self.report_now()

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=False).addErrback(
            lambda failure: self.log.failure("guest info loop stopped", failure)
        )

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def report_now(self) -> Deferred[None]:
        """A round now, and the next one a whole interval later (a running round finishes first)."""
        if self._loop.running:
            self._loop.reset()  # does nothing while the loop's own round is in progress
        return self.gather()

    def forget(self) -> None:
        """Send everything again next time, starting over with the newest NIC format."""
        self._sent.clear()
        self._sent_nics = None
        self._nic_method = 0
        self._send_detailed = True
        self._sent_detailed = None
        self._sent_disks = None

    def gather(self) -> Deferred[None]:
        """One round: OS, disks, host name, NICs, uptime (vmtoolsd's order); rounds never overlap."""
        return self._round.run(lambda: ensureDeferred(self._gather()))

    async def _gather(self) -> None:
        await self._send_os()
        disks = self._ask("disks", self.source.disks)
        if disks is not None:
            await self._send_disks(tuple(disks))
        host_name = self._ask("host name", self.source.host_name)
        if host_name is not None:
            await self._send_text(GuestInfoKey.DNS_NAME, host_name)
        nics = self._ask("NICs", self.source.nic_info)
        if nics is not None:
            await self.send_nic_info(nics)
        await self.send_uptime()

    async def _send_os(self) -> None:
        """Key 11 (detailed data), as vmtoolsd 12 does; keys 5 and 6 if the VMX refuses it."""
        if self._send_detailed:
            detailed = self._ask("OS details", self.source.os_detailed)
            if detailed is not None:
                try:
                    payload = encode_detailed_data(detailed)
                except GuestOSError as error:
                    self.log.warn("cannot encode the OS details: {error}", error=str(error))
                else:
                    if payload == self._sent_detailed or await self._call(binary_request(GuestInfoKey.OS_DETAILED,
                                                                                          payload)):
                        self._sent_detailed = payload
                        return
                self._send_detailed = False  # until the next reset, as vmtoolsd
        os_names = self._ask("OS names", self.source.os_names)
        if os_names is not None:
            await self._send_text(GuestInfoKey.OS_NAME_FULL, os_names[0])
            await self._send_text(GuestInfoKey.OS_NAME, os_names[1])

    async def _send_disks(self, disks: tuple[DiskEntry, ...]) -> None:
        if disks == self._sent_disks:
            return
        try:
            request = encode_disk_info(disks)
        except DiskInfoError as error:
            self.log.warn("cannot encode the disk report: {error}", error=str(error))
            return
        if await self._call(request):
            self._sent_disks = disks

    async def send_uptime(self) -> None:
        uptime = self._ask("uptime", self.source.uptime)
        if uptime is not None:
            await self._send_text(GuestInfoKey.UPTIME, str(int(uptime * 100)))  # in 1/100 s

    async def send_nic_info(self, info: NicInfoV3) -> bool:
        """Report NICs if they changed, falling back through the formats an older VMX knows."""
        if info == self._sent_nics:
            return True
        methods = self._nic_methods(info)
        for method in range(self._nic_method, len(methods)):
            key, build = methods[method]
            try:
                request = binary_request(key, build())
            except NicInfoError as error:
                self.log.warn("cannot encode the NIC report for key {key}: {error}", key=int(key), error=str(error))
                continue
            if await self._call(request):
                self._nic_method = method
                self._sent_nics = info
                return True
        self._nic_method = 0
        return False

    @staticmethod
    def _nic_methods(info: NicInfoV3) -> list[tuple[GuestInfoKey, Callable[[], bytes]]]:
        return [
            (GuestInfoKey.IPADDRESS_V3, lambda: encode_nic_info(info)),
            (GuestInfoKey.IPADDRESS_V2, lambda: encode_nic_info(truncate_ips(info))),
            (GuestInfoKey.IPADDRESS_V2, lambda: encode_nic_info(to_v2(truncate_ips(info)))),
        ]

    async def _send_text(self, key: GuestInfoKey, value: str) -> bool:
        if self._sent.get(key) == value:
            return True
        if await self._call(text_request(key, value)):
            self._sent[key] = value
            return True
        self._sent.pop(key, None)
        return False

    async def _call(self, request: bytes) -> bool:
        """True if the VMX took the value: a reply of exactly ``1 `` (anything else: not updated)."""
        name = request[:20]
        try:
            body = await self.rpci.call(request)
        except RPCIError as error:
            self.log.info("VMX refused {request!r}: {error}", request=name, error=str(error))
            return False
        except Exception as error:
            self.log.warn("{request!r} failed: {error}", request=name, error=str(error))
            return False
        if body:
            self.log.info("VMX did not take {request!r}: {body!r}", request=name, body=body[:80])
        return not body

    def _ask(self, what: str, fact: Callable[[], Any]) -> Any:
        # A broken source loses one fact for one round, never the loop.
        try:
            return fact()
        except Exception:
            self.log.failure("gathering the guest's {what} failed", what=what)
            return None

