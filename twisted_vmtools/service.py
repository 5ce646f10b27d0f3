"""`ToolsService`: the guest tools as one Twisted service."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from .channels.interfaces import IGuestChannel
from .codecs.powerops import SCRIPT_OPTIONS
from .guest.core import CoreHandlers
from .guest.guestinfo import GuestInfo
from .guest.netinfo import primary_ip as default_primary_ip
from .guest.power_handlers import CommandPowerHandler, ProcessRunner, script_paths
from .guest.powerops import IPowerHandler, PowerOps
from .guest.sysinfo import IGuestInfoSource
from .protocols.rpci import RPCI
from .protocols.tclo import TCLODispatcher


class ToolsService(MultiService):
    """Wires a channel, the RPCI client, the TCLO dispatcher and the guest services.

    ``reactor`` is passed in (tests give a `Clock`-driven one); ``channel``
    is any `IGuestChannel`.  ``primary_ip`` overrides the address reported
    for ``Set_Option broadcastIP 1``.  ``guest_info_interval`` is how often
    NICs, host name, OS and uptime are reported (None: never), from
    ``guest_info_source`` (default: this machine).  ``power_handler`` does
    what OS_Halt, OS_Reboot… ask (default: vmtoolsd's scripts in
    /etc/vmware-tools and ``/sbin/shutdown``).  Extra TCLO handlers can
    be added with ``service.dispatcher.register`` before or after start.
    """

    log = Logger()

    def __init__(
        self,
        reactor: object,
        channel: IGuestChannel,
        *,
        primary_ip: Callable[[], str | None] | str | None = None,
        guest_info_interval: float | None = 30.0,
        guest_info_source: IGuestInfoSource | None = None,
        power_handler: IPowerHandler | None = None,
        trace: bool = False,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.channel = channel
        self.rpci = RPCI(channel, trace=trace)
        self.dispatcher = TCLODispatcher(trace=trace)
        if isinstance(primary_ip, str):
            fixed = primary_ip
            primary_ip = lambda: fixed  # noqa: E731
        self.core = CoreHandlers(self.rpci, primary_ip=primary_ip or default_primary_ip)
        self.core.install(self.dispatcher)
        self.guest_info: GuestInfo | None = None
        if guest_info_interval is not None:
            self.guest_info = GuestInfo(
                reactor, self.rpci, interval=guest_info_interval, source=guest_info_source  # type: ignore[arg-type]
            )
            self.guest_info.install(self.dispatcher, self.core)
            self.guest_info.setServiceParent(self)
        self.power = PowerOps(self.rpci, power_handler or default_power_handler(reactor))
        self.power.install(self.dispatcher)
        for option in sorted(set(SCRIPT_OPTIONS.values())):
            self.core.on_option(option, partial(self.power.set_option, option))
        self._announcing: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self.log.info("guest tools starting on {channel}", channel=self.channel.name)
        self.channel.start(self.dispatcher)
        self._announcing = ensureDeferred(self.core.announce_version())

    def stopService(self) -> Deferred[None]:
        stopping: Deferred[object] = super().stopService()
        return stopping.addCallback(lambda _: self.channel.stop())


def default_power_handler(reactor: object) -> IPowerHandler:
    """vmtoolsd's: the default scripts if installed, then ``/sbin/shutdown -h|-r now``."""
    return CommandPowerHandler(ProcessRunner(reactor), script_paths())  # type: ignore[arg-type]
