"""The core TCLO handlers every toolbox answers: reset, ping, capabilities, options."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger

from .. import __version__
from ..protocols.rpci import RPCI, RPCIError
from ..protocols.tclo import TCLODispatcher, TCLOHandlerError

APP_NAME = b"toolbox"  # what `reset` answers for the system service (vmsvc)
UNMANAGED_VERSION = 2147483647  # tools.set.version: "not managed by the VMX"
INVALID_OPTION = b"Unknown or invalid option"

# What a Linux toolbox announces on Capabilities_Register, in vmtoolsd's order.
# The HGFS server capability tells the VMX it may send `f` packets.
LINUX_CAPABILITIES: tuple[bytes, ...] = (
    b"tools.capability.hgfs_server toolbox 1",
    b"tools.capability.statechange ",
    b"tools.capability.softpowerop_retry ",
    b"tools.capability.guest_conf_directory /etc/vmware-tools",
)


def version_number(version: str) -> int:
    """open-vm-tools' packed version: major << 10 | minor << 5 | base."""
    parts = [int(p) for p in (version.split(".") + ["0", "0"])[:3]]
    return parts[0] << 10 | parts[1] << 5 | parts[2]


class CoreHandlers:
    """reset, ping, Capabilities_Register and Set_Option.

    Options are kept in ``options``; hooks registered with `on_option` run
    when one is set (``broadcastIP`` is built in).  ``primary_ip`` is a
    callable so an embedding application can say which address to report.
    """

    log = Logger()

    def __init__(
        self,
        rpci: RPCI,
        *,
        primary_ip: Callable[[], str | None],
        capabilities: tuple[bytes, ...] = LINUX_CAPABILITIES,
    ) -> None:
        self.rpci = rpci
        self.primary_ip = primary_ip
        self.capabilities = capabilities
        self.options: dict[bytes, bytes] = {}
        self._option_hooks: dict[bytes, list[Callable[[bytes], object]]] = {}
        self._reset_logged = False
        self.on_option(b"broadcastIP", self._broadcast_ip)

    def install(self, dispatcher: TCLODispatcher) -> None:
        dispatcher.register(b"reset", self.reset)
        dispatcher.register(b"ping", self.ping)
        dispatcher.register(b"Capabilities_Register", self.capabilities_register)
        dispatcher.register(b"Set_Option", self.set_option)

    def on_option(self, name: bytes, hook: Callable[[bytes], object]) -> None:
        self._option_hooks.setdefault(name, []).append(hook)

    async def _send(self, request: bytes) -> bytes | None:
        """Send an RPC whose failure must not fail the command that caused it."""
        try:
            return await self.rpci.call(request)
        except RPCIError as error:
            self.log.info("VMX refused {request!r}: {error}", request=request, error=str(error))
        except Exception as error:
            self.log.warn("RPC {request!r} failed: {error}", request=request, error=str(error))
        return None

    async def announce_version(self) -> None:
        """The guestinfo.vmtools.* keys vmtoolsd sets at start-up."""
        for key, value in (
            (b"description", f"twisted_vmtools {__version__}".encode()),
            (b"versionString", __version__.encode()),
            (b"versionNumber", str(version_number(__version__)).encode()),
            (b"buildNumber", b"0"),
        ):
            await self._send(b"info-set guestinfo.vmtools." + key + b" " + value)

    def reset(self, args: bytes) -> bytes:
        ensureDeferred(self._after_reset())
        return b"ATR " + APP_NAME

    async def _after_reset(self) -> None:
        await self._send(b"vmx.capability.unified_loop " + APP_NAME)
        if not self._reset_logged:
            self._reset_logged = True
            await self._send(b"log " + APP_NAME + b": Version: twisted_vmtools " + __version__.encode())
        # What vmtoolsd announces only once at start-up: a VMX that restarted, or came up
        # after the guest, would otherwise never learn it.  Every VMX sends reset first.
        await self.announce_version()

    def ping(self, args: bytes) -> bytes:
        return b""

    async def capabilities_register(self, args: bytes) -> bytes:
        for capability in self.capabilities:
            await self._send(capability)
        await self._send(b"tools.set.version %d" % UNMANAGED_VERSION)
        return b""

    async def set_option(self, args: bytes) -> bytes:
        name, _, value = args.strip().partition(b" ")
        value = value.strip()
        if not name or not value:
            raise TCLOHandlerError(INVALID_OPTION)
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
        await self._send(b"info-set guestinfo.ip " + ip.encode())
