"""The VMX's answers to RPCI requests, as a registry of handlers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.logger import Logger

from ..codecs.rpci import UNKNOWN_COMMAND, RPCIFormatError, RPCIReply, parse_request

NO_VALUE = b"No value found"
TEXT_GUEST_INFO = frozenset({1, 4, 5, 6, 7})  # host name, build, OS names, uptime

RPCIHandler = Callable[[bytes], RPCIReply]


@dataclass
class ToolsState:
    """What the VMX knows of the guest's tools (what vSphere shows under guest.*)."""

    version: int | None = None
    version_type: int | None = None
    capabilities: dict[str, str] = field(default_factory=dict)
    guest_info: dict[int, bytes] = field(default_factory=dict)  # SetGuestInfo key → raw value
    disk_info: bytes | None = None
    state_changes: list[tuple[int, int]] = field(default_factory=list)  # (success, state id)
    health: str | None = None
    log: list[str] = field(default_factory=list)


class RPCIServer:
    """Answers RPCI requests: the guestinfo store, tools state and capabilities.

    Handlers take the request's arguments and return an `RPCIReply`.  An
    unknown request gets ``0 Unknown command``, as a VMX answers; a handler
    that raises is logged and answered ``0 <error>`` so the guest goes on.
    """

    log = Logger()

    def __init__(self, guestinfo: dict[str, bytes], tools: ToolsState) -> None:
        self.guestinfo = guestinfo
        self.tools = tools
        self._handlers: dict[bytes, RPCIHandler] = {}
        self._raw_handlers: dict[bytes, RPCIHandler] = {}
        self._prefix_handlers: list[tuple[bytes, Callable[[bytes, bytes], RPCIReply]]] = []
        for name, handler in {
            b"info-set": self._info_set,
            b"info-get": self._info_get,
            b"log": self._log,
            b"vmx.capability.unified_loop": _ok,
            b"tools.set.version": self._set_version,
            b"tools.set.versiontype": self._set_version_type,
            b"SetGuestDiskInfo": self._set_disk_info,
            b"tools.os.statechange.status": self._state_change,
            b"update.tools.health": self._health,
            # Refusing keeps vmtoolsd from streaming its whole log over RPCI.
            b"guest.log.state": lambda args: RPCIReply(False, b"disabled"),
        }.items():
            self.register(name, handler)
        self.register_prefix(b"tools.capability.", self._capability)
        self.register(b"SetGuestInfo", self._set_guest_info, raw=True)

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
        if not key.startswith(b"guestinfo.") or not sep:
            return RPCIReply(False, b"Invalid key")
        self.guestinfo[key.decode("utf-8", "replace")] = value
        return RPCIReply(True)

    def _info_get(self, args: bytes) -> RPCIReply:
        value = self.guestinfo.get(args.strip().decode("utf-8", "replace"))
        if value is None:
            return RPCIReply(False, NO_VALUE)
        return RPCIReply(True, value)

    def _log(self, args: bytes) -> RPCIReply:
        self.tools.log.append(args.decode("utf-8", "replace"))
        return RPCIReply(True)

    def _set_version(self, args: bytes) -> RPCIReply:
        try:
            self.tools.version = int(args.split()[0])
        except (ValueError, IndexError):
            return RPCIReply(False, b"Invalid version")
        return RPCIReply(True)

    def _set_version_type(self, args: bytes) -> RPCIReply:
        try:
            version, kind = (int(x) for x in args.split()[:2])
        except ValueError:
            return RPCIReply(False, b"Invalid version type")
        self.tools.version, self.tools.version_type = version, kind
        return RPCIReply(True)

    def _capability(self, name: bytes, args: bytes) -> RPCIReply:
        self.tools.capabilities[name.decode("utf-8", "replace")] = args.strip().decode("utf-8", "replace")
        return RPCIReply(True)

    def _set_guest_info(self, raw_args: bytes) -> RPCIReply:
        # "SetGuestInfo  <key> <value>": two spaces, so args start with one more.  Text
        # values end in the sender's NUL; binary ones (XDR, structs) are length-exact.
        key, _, value = raw_args.lstrip(b" ").partition(b" ")
        try:
            number = int(key)
            if number in TEXT_GUEST_INFO and value.endswith(b"\0"):
                value = value[:-1]
            self.tools.guest_info[number] = value
        except ValueError:
            return RPCIReply(False, b"Invalid key")
        return RPCIReply(True)

    def _set_disk_info(self, args: bytes) -> RPCIReply:
        self.tools.disk_info = args
        return RPCIReply(True)

    def _state_change(self, args: bytes) -> RPCIReply:
        try:
            success, state = (int(x) for x in args.split()[:2])
        except ValueError:
            return RPCIReply(False, b"Invalid arguments")
        self.tools.state_changes.append((success, state))
        return RPCIReply(True)

    def _health(self, args: bytes) -> RPCIReply:
        self.tools.health = args.strip().decode("utf-8", "replace")
        return RPCIReply(True)


def _ok(args: bytes) -> RPCIReply:
    return RPCIReply(True)
