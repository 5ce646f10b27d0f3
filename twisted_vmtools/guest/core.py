"""The core feature every toolbox has: reset, ping, options, and the version it announces."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from zope.interface import implementer

from .. import __version__
from ..codecs.rpci import CAPABILITY_PREFIX, LOG, SET_VERSION, UNIFIED_LOOP, UNMANAGED_VERSION, RPCIRequest, info_set
from ..codecs.tclo import CAPABILITIES_REGISTER, PING, RESET, RESET_REPLY_PREFIX, SET_OPTION, TCLOError, parse_option
from ..protocols.rpci import RPCI
from ..protocols.tclo import TCLODispatcher, TCLOHandlerError
from .feature import IGuestFeature, send_quietly

APP_NAME = b"toolbox"  # what `reset` answers for the system service (vmsvc)
INVALID_OPTION = b"Unknown or invalid option"

# What the core announces on Capabilities_Register; the other capabilities belong to the
# features that provide them (hgfs_server to the HGFS server, statechange to power operations).
CORE_CAPABILITIES: tuple[bytes, ...] = (CAPABILITY_PREFIX + b"guest_conf_directory /etc/vmware-tools",)


def version_number(version: str) -> int:
    """open-vm-tools' packed version: major << 10 | minor << 5 | base."""
    parts = [int(p) for p in (version.split(".") + ["0", "0"])[:3]]
    return parts[0] << 10 | parts[1] << 5 | parts[2]


@implementer(IGuestFeature)
class CoreFeature(Service):
    """reset, ping and Set_Option; the version, at start and after Capabilities_Register.

    Options are kept in ``options``; hooks registered with `on_option` run
    when one is set (``broadcastIP`` is built in); other features observe
    ``Set_Option`` on the dispatcher instead.  ``primary_ip`` is a callable
    so an embedding application can say which address to report.
    """

    log = Logger()
    name = "core"
    rpci: RPCI  # given by install

    def __init__(
        self,
        *,
        primary_ip: Callable[[], str | None],
        capabilities: Sequence[bytes] = CORE_CAPABILITIES,
    ) -> None:
        self.primary_ip = primary_ip
        self.capabilities = tuple(capabilities)
        self.options: dict[bytes, bytes] = {}
        self._option_hooks: dict[bytes, list[Callable[[bytes], object]]] = {}
        self._reset_logged = False
        self._announcing: Deferred[None] | None = None
        self.on_option(b"broadcastIP", self._broadcast_ip)

    def install(self, dispatcher: TCLODispatcher, rpci: RPCI) -> None:
        self.rpci = rpci
        dispatcher.register(RESET, self.reset)
        dispatcher.register(PING, self.ping)
        dispatcher.register(SET_OPTION, self.set_option)
        # The version follows the capabilities every feature announced, as vmtoolsd's does.
        dispatcher.observe(CAPABILITIES_REGISTER, self._announce_unmanaged)

    def startService(self) -> None:
        super().startService()
        self._announcing = ensureDeferred(self.announce_version())

    def on_option(self, name: bytes, hook: Callable[[bytes], object]) -> None:
        self._option_hooks.setdefault(name, []).append(hook)

    async def _send(self, request: bytes) -> bytes | None:
        return await send_quietly(self.rpci, request)

    async def announce_version(self) -> None:
        """The guestinfo.vmtools.* keys vmtoolsd sets at start-up."""
        for key, value in (
            (b"description", f"twisted_vmtools {__version__}".encode()),
            (b"versionString", __version__.encode()),
            (b"versionNumber", str(version_number(__version__)).encode()),
            (b"buildNumber", b"0"),
        ):
            await self._send(info_set(b"guestinfo.vmtools." + key, value))

    def reset(self, args: bytes) -> bytes:
        ensureDeferred(self._after_reset())
        return RESET_REPLY_PREFIX + APP_NAME

    async def _after_reset(self) -> None:
        await self._send(RPCIRequest(UNIFIED_LOOP, APP_NAME).encode())
        if not self._reset_logged:
            self._reset_logged = True
            version = APP_NAME + b": Version: twisted_vmtools " + __version__.encode()
            await self._send(RPCIRequest(LOG, version).encode())
        # What vmtoolsd announces only once at start-up: a VMX that restarted, or came up
        # after the guest, would otherwise never learn it.  Every VMX sends reset first.
        await self.announce_version()

    def ping(self, args: bytes) -> bytes:
        return b""

    async def _announce_unmanaged(self, args: bytes) -> None:
        await self._send(RPCIRequest(SET_VERSION, b"%d" % UNMANAGED_VERSION).encode())

    async def set_option(self, args: bytes) -> bytes:
        try:
            name, value = parse_option(args)
        except TCLOError:
            raise TCLOHandlerError(INVALID_OPTION) from None
        self.options[name] = value
        for hook in self._option_hooks.get(name, []):
            result = hook(value)
            if hasattr(result, "__await__"):
                await result  # type: ignore[misc]
        return b""

    async def _broadcast_ip(self, value: bytes) -> None:
        if value != b"1":
            return
        ip = self.primary_ip()
        if ip is None:
            self.log.warn("broadcastIP: this guest has no usable IPv4 address")
            return
        await self._send(info_set(b"guestinfo.ip", ip.encode()))
