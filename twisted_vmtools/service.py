"""`ToolsService`: the guest tools as one Twisted service, made of guest features."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .channels.interfaces import IGuestChannel
from .codecs.tclo import CAPABILITIES_REGISTER
from .guest.auth import IAuthenticator
from .guest.core import CoreFeature
from .guest.feature import IGuestFeature, check_features, send_quietly
from .guest.guestinfo import DEFAULT_INTERVAL, GuestInfo
from .guest.hgfs_feature import HGFSFeature
from .guest.hgfs_files import UploadJournal
from .guest.hgfs_users_feature import UserHGFSFeature
from .guest.netinfo import primary_ip as default_primary_ip
from .guest.power_handlers import CommandPowerHandler, ProcessRunner, script_paths
from .guest.powerops import IPowerHandler, PowerOps
from .guest.sysinfo import IGuestInfoSource
from .guest.vix_feature import VixFeature
from .protocols.rpci import RPCI
from .protocols.tclo import TCLODispatcher

if TYPE_CHECKING:
    from .guest.hgfs_handlers import FileHandlerRegistry
    from .guest.hgfs_proc import IProcessTable

FeatureT = TypeVar("FeatureT")


def default_features(
    reactor: object,
    *,
    primary_ip: Callable[[], str | None] | str | None = None,
    guest_info_interval: float | None = DEFAULT_INTERVAL,
    guest_info_source: IGuestInfoSource | None = None,
    power_handler: IPowerHandler | None = None,
    upload_journal: UploadJournal | None = None,
    guest_auth: IAuthenticator | None = None,
    guest_operations_disabled: frozenset[str] = frozenset(),
) -> list[IGuestFeature]:
    """What ``twistd vmtools`` runs: the core, guest info (unless its interval is None), power operations, HGFS.

    ``power_handler`` does what OS_Halt, OS_Reboot… ask (default: vmtoolsd's
    scripts in /etc/vmware-tools and ``/sbin/shutdown``).
    """
    if isinstance(primary_ip, str):
        fixed = primary_ip
        primary_ip = lambda: fixed  # noqa: E731
    features: list[IGuestFeature] = [CoreFeature(primary_ip=primary_ip or default_primary_ip)]
    if guest_info_interval is not None:
        features.append(GuestInfo(reactor, interval=guest_info_interval, source=guest_info_source))  # type: ignore[arg-type]
    features.append(PowerOps(power_handler or default_power_handler(reactor)))
    journal = upload_journal or UploadJournal.default()
    # Guest operations (logins checked by ``guest_auth``, PAM by default); HGFS serves the
    # /proc/<pid>/std* of the processes they start.
    vix = VixFeature(reactor, authenticator=guest_auth, disabled=guest_operations_disabled)
    features.append(vix)
    # Both build their servers on first use (see guest/hgfs_feature.py): an idle guest loads neither.
    handlers = lambda: default_file_handlers(reactor, vix.processes)  # noqa: E731
    hgfs = HGFSFeature(reactor, handlers=handlers, journal=journal)
    features.append(hgfs)
    # The VMX's transfer packets (Vix HGFS_SEND_PACKET), each performed as the account that logged in.
    features.append(UserHGFSFeature(reactor, hgfs=hgfs, vix=vix))
    return features


def default_file_handlers(reactor: object, processes: IProcessTable | None = None) -> FileHandlerRegistry:
    """The HGFS server's virtual paths: directories as archives (``/archive:/…``), procfs files, and
    with a process table, the ``/proc/<pid>/stdin|stdout|stderr`` of the processes it started."""
    from .guest.hgfs_archive import SCHEME as ARCHIVE_SCHEME
    from .guest.hgfs_archive import ArchiveHandler
    from .guest.hgfs_handlers import FileHandlerRegistry
    from .guest.hgfs_proc import ProcessIOHandler, ProcFilesHandler

    registry = FileHandlerRegistry()
    if processes is not None:
        registry.register("proc", ProcessIOHandler(reactor, processes))  # type: ignore[arg-type]
    registry.register("procfs", ProcFilesHandler())
    registry.register(ARCHIVE_SCHEME, ArchiveHandler(reactor))  # type: ignore[arg-type]
    return registry


def default_power_handler(reactor: object) -> IPowerHandler:
    """vmtoolsd's: the default scripts if installed, then ``/sbin/shutdown -h|-r now``."""
    return CommandPowerHandler(ProcessRunner(reactor), script_paths())  # type: ignore[arg-type]


class ToolsService(MultiService):
    """A channel, the RPCI client, the TCLO dispatcher, and the guest features on them.

    ``reactor`` is passed in (tests give a `Clock`-driven one); ``channel``
    is any `IGuestChannel`.  ``features`` is the list of `IGuestFeature`s,
    installed in order: each registers its TCLO handlers and observers, and
    runs as a child service.  Without it, `default_features` builds the core
    and guest info from ``primary_ip`` (the address reported for ``Set_Option
    broadcastIP 1``), ``guest_info_interval`` (None: no guest info),
    ``guest_info_source`` and ``power_handler``.  On ``Capabilities_Register`` the features'
    capabilities are announced in feature order.  Extra TCLO handlers can be
    added with ``service.dispatcher.register`` before or after start.
    """

    log = Logger()

    def __init__(
        self,
        reactor: object,
        channel: IGuestChannel,
        *,
        features: Sequence[IGuestFeature] | None = None,
        primary_ip: Callable[[], str | None] | str | None = None,
        guest_info_interval: float | None = DEFAULT_INTERVAL,
        guest_info_source: IGuestInfoSource | None = None,
        power_handler: IPowerHandler | None = None,
        upload_journal: UploadJournal | None = None,
        trace: bool = False,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.channel = channel
        self.rpci = RPCI(channel, trace=trace)
        self.dispatcher = TCLODispatcher(trace=trace)
        if features is None:
            features = default_features(
                reactor,
                primary_ip=primary_ip,
                guest_info_interval=guest_info_interval,
                guest_info_source=guest_info_source,
                power_handler=power_handler,
                upload_journal=upload_journal,
            )
        elif (
            primary_ip is not None
            or guest_info_source is not None
            or power_handler is not None
            or guest_info_interval != DEFAULT_INTERVAL
        ):
            raise TypeError(
                "primary_ip, guest_info_* and power_handler configure the default features: pass them to those instead"
            )
        check_features(features)
        self.features: tuple[IGuestFeature, ...] = tuple(features)
        self.dispatcher.register(CAPABILITIES_REGISTER, self._capabilities_register)
        for feature in self.features:
            feature.install(self.dispatcher, self.rpci)
            feature.setServiceParent(self)

    def feature(self, kind: type[FeatureT]) -> FeatureT | None:
        """The installed feature of class ``kind``, if any."""
        return next((f for f in self.features if isinstance(f, kind)), None)

    @property
    def core(self) -> CoreFeature | None:
        return self.feature(CoreFeature)

    @property
    def guest_info(self) -> GuestInfo | None:
        return self.feature(GuestInfo)

    @property
    def power(self) -> PowerOps | None:
        return self.feature(PowerOps)

    async def _capabilities_register(self, args: bytes) -> bytes:
        # Each feature announces what it provides; the core's version and guest info's
        # first report follow as observers of the same command.
        for feature in self.features:
            for capability in feature.capabilities:
                await send_quietly(self.rpci, capability)
        return b""

    def startService(self) -> None:
        self.log.info("guest tools starting on {channel}", channel=self.channel.name)
        # The channel first, so that what the features send at start-up finds it open.
        self.channel.start(self.dispatcher)
        super().startService()

    def stopService(self) -> Deferred[None]:
        stopping: Deferred[object] = super().stopService()
        return stopping.addCallback(lambda _: self.channel.stop())
