"""The VMX's answers to RPCI requests, as a registry of handlers."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field

from twisted.logger import Logger

from ..codecs import diskinfo, powerops, rpci
from ..codecs.guestinfo import COMMAND as SET_GUEST_INFO
from ..codecs.guestinfo import GuestInfoError, parse_arguments
from ..codecs.rpci import GUESTINFO_PREFIX, UNKNOWN_COMMAND, RPCIFormatError, RPCIReply, parse_request
from .guestinfo_view import BadReport, check_disk_report, check_report
from .ratelimit import RateLimitedLog
from .stores import GuestInfoRefused, ToolsLog, guestinfo_key

NO_VALUE = b"No value found"

RPCIHandler = Callable[[bytes], RPCIReply]

CAPABILITIES_LIMIT = 256  # vmtoolsd announces a few dozen
CAPABILITY_TEXT_LIMIT = 1024  # name or value
STATE_CHANGES_KEPT = 64
VERSION_LIMIT = 1 << 32  # versions are u32 on the wire


@dataclass
class ToolsState:
    """What the VMX knows of the guest's tools (what vSphere shows under guest.*)."""

    version: int | None = None
    version_type: int | None = None
    capabilities: dict[str, str] = field(default_factory=dict)
    guest_info: dict[int, bytes] = field(default_factory=dict)  # SetGuestInfo key → raw value
    disk_info: bytes | None = None
    state_changes: deque[tuple[int, int]] = field(
        default_factory=lambda: deque(maxlen=STATE_CHANGES_KEPT)
    )  # (success, state id), the last few
    health: str | None = None
    log: ToolsLog = field(default_factory=ToolsLog)


class RPCIServer:
    """Answers RPCI requests: the guestinfo store, tools state and capabilities.

    Handlers take the request's arguments and return an `RPCIReply`.  An
    unknown request gets ``0 Unknown command``, as a VMX answers; a handler
    that raises is logged and answered ``0 <error>`` so the guest goes on.
    """

    log = Logger()

    def __init__(self, guestinfo: MutableMapping[str, bytes], tools: ToolsState) -> None:
        self.guestinfo = guestinfo
        self.tools = tools
        self._bad_reports = RateLimitedLog(self.log)
        self._handlers: dict[bytes, RPCIHandler] = {}
        self._raw_handlers: dict[bytes, RPCIHandler] = {}
        self._prefix_handlers: list[tuple[bytes, Callable[[bytes, bytes], RPCIReply]]] = []
        for name, handler in {
            rpci.INFO_SET: self._info_set,
            rpci.INFO_GET: self._info_get,
            rpci.LOG: self._log,
            rpci.UNIFIED_LOOP: _ok,
            rpci.SET_VERSION: self._set_version,
            rpci.SET_VERSION_TYPE: self._set_version_type,
            diskinfo.COMMAND: self._set_disk_info,
            powerops.STATUS_COMMAND: self._state_change,
            b"update.tools.health": self._health,
            # Refusing keeps vmtoolsd from streaming its whole log over RPCI.
            b"guest.log.state": lambda args: RPCIReply(False, b"disabled"),
        }.items():
            self.register(name, handler)
        self.register_prefix(rpci.CAPABILITY_PREFIX, self._capability)
        self.register(SET_GUEST_INFO, self._set_guest_info, raw=True)

    def register(self, name: bytes, handler: RPCIHandler, *, raw: bool = False) -> None:
        """Answer ``name`` with ``handler``; ``raw`` handlers get the arguments byte-exact
        (for binary payloads), others without the sender's trailing NUL."""
        (self._raw_handlers if raw else self._handlers)[name] = handler
        (self._handlers if raw else self._raw_handlers).pop(name, None)

    def handler(self, name: bytes) -> RPCIHandler | None:
        return self._raw_handlers.get(name) or self._handlers.get(name)

    def register_prefix(self, prefix: bytes, handler: Callable[[bytes, bytes], RPCIReply]) -> None:
        self._prefix_handlers.append((prefix, handler))

    def handle(self, request: bytes) -> bytes:
        try:
            parsed = parse_request(request)
        except RPCIFormatError:
            return RPCIReply(False, UNKNOWN_COMMAND).encode()
        try:
            if parsed.name in self._raw_handlers:
                return self._raw_handlers[parsed.name](parsed.raw_args).encode()
            return self._dispatch(parsed.name, parsed.args).encode()
        except Exception as error:
            if self._bad_reports.allow():  # a guest must not be able to fill the log with tracebacks
                self.log.failure("RPCI handler for {name!r} failed", name=parsed.name)
            return RPCIReply(False, str(error).encode()).encode()

    def _dispatch(self, name: bytes, args: bytes) -> RPCIReply:
        handler = self._handlers.get(name)
        if handler is not None:
            return handler(args)
        for prefix, prefixed in self._prefix_handlers:
            if name.startswith(prefix):
                return prefixed(name[len(prefix) :], args)
        return RPCIReply(False, UNKNOWN_COMMAND)

    # -- handlers

    def _info_set(self, args: bytes) -> RPCIReply:
        key, sep, value = args.partition(b" ")
        if not key.startswith(GUESTINFO_PREFIX) or not sep:
            return RPCIReply(False, b"Invalid key")
        try:
            self.guestinfo[guestinfo_key(key)] = value
        except GuestInfoRefused as error:
            return RPCIReply(False, str(error).encode())
        return RPCIReply(True)

    def _info_get(self, args: bytes) -> RPCIReply:
        value = self.guestinfo.get(guestinfo_key(args.strip()))
        if value is None:
            return RPCIReply(False, NO_VALUE)
        return RPCIReply(True, value)

    def _log(self, args: bytes) -> RPCIReply:
        self.tools.log.append(args.decode("utf-8", "replace"))
        return RPCIReply(True)

    def _set_version(self, args: bytes) -> RPCIReply:
        numbers = _u32s(args, 1)
        if numbers is None:
            return RPCIReply(False, b"Invalid version")
        self.tools.version = numbers[0]
        return RPCIReply(True)

    def _set_version_type(self, args: bytes) -> RPCIReply:
        numbers = _u32s(args, 2)
        if numbers is None:
            return RPCIReply(False, b"Invalid version type")
        self.tools.version, self.tools.version_type = numbers
        return RPCIReply(True)

    def _capability(self, name: bytes, args: bytes) -> RPCIReply:
        key, value = name.decode("utf-8", "replace"), args.strip().decode("utf-8", "replace")
        if len(key) > CAPABILITY_TEXT_LIMIT or len(value) > CAPABILITY_TEXT_LIMIT:
            return RPCIReply(False, b"Capability too long")
        if key not in self.tools.capabilities and len(self.tools.capabilities) >= CAPABILITIES_LIMIT:
            return RPCIReply(False, b"Too many capabilities")
        self.tools.capabilities[key] = value
        return RPCIReply(True)

    def _set_guest_info(self, raw_args: bytes) -> RPCIReply:
        try:
            number, value = parse_arguments(raw_args)
            check_report(number, value)
        except (GuestInfoError, BadReport) as error:
            # Logged and dropped here, where it is decoded: never stored where it breaks status.
            self._bad_reports.warn("dropping guest report: {error}", error=str(error))
            return RPCIReply(False, str(error).encode())
        self.tools.guest_info[number] = value
        return RPCIReply(True)

    def _set_disk_info(self, args: bytes) -> RPCIReply:
        try:
            check_disk_report(args)
        except BadReport as error:
            self._bad_reports.warn("dropping guest report: {error}", error=str(error))
            return RPCIReply(False, str(error).encode())
        self.tools.disk_info = args
        return RPCIReply(True)

    def _state_change(self, args: bytes) -> RPCIReply:
        numbers = _u32s(args, 2)
        if numbers is None:
            return RPCIReply(False, b"Invalid arguments")
        self.tools.state_changes.append((numbers[0], numbers[1]))
        return RPCIReply(True)

    def _health(self, args: bytes) -> RPCIReply:
        self.tools.health = args.strip().decode("utf-8", "replace")
        return RPCIReply(True)


def _ok(args: bytes) -> RPCIReply:
    return RPCIReply(True)


def _u32s(args: bytes, count: int) -> list[int] | None:
    """The first ``count`` words of ``args`` as unsigned 32-bit numbers, or None.

    ASCII digits only (``int`` also takes ``²``-like digits, signs and ``_``), at
    most ten each: what a guest reports is checked before anything keeps it.
    """
    words = args.split()[:count]
    if len(words) != count or not all(word.isascii() and word.isdigit() and len(word) <= 10 for word in words):
        return None
    numbers = [int(word) for word in words]
    return numbers if all(n < VERSION_LIMIT for n in numbers) else None
