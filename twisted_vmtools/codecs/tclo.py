"""TCLO text: the commands a VMX sends a guest and the guest's replies.

A command is ``name`` optionally followed by a space and arguments (text or
binary: ``f <hgfs packet>``, ``Vix_1_Relayed_Command "..."\\0<vix>``).  A
reply is ``OK <body>`` or ``ERROR <body>``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import CodecError

UNKNOWN_COMMAND = b"Unknown Command"
BAD_COMMAND = b"Bad command"
OK_PREFIX = b"OK "
ERROR_PREFIX = b"ERROR "

# The commands a VMX sends every guest when its TCLO channel appears (docs/vmx-lifecycle.md).
RESET = b"reset"
PING = b"ping"
CAPABILITIES_REGISTER = b"Capabilities_Register"
SET_OPTION = b"Set_Option"
RESET_REPLY_PREFIX = b"ATR "  # "OK ATR <app name>": the guest's answer to reset

# The commands the optional features own, declared here rather than in their codecs so that a
# guest can register them without importing the Vix and HGFS codecs before the first one arrives.
VIX_RELAYED_COMMAND = b"Vix_1_Relayed_Command"
VIX_GET_TOOLS_PROPERTIES = b"Vix_1_Get_ToolsProperties"
HGFS_COMMAND = b"f"  # ``f <HGFS request packet>``
HGFS_PREFIX = HGFS_COMMAND + b" "
HGFS_CAPABILITY = b"tools.capability.hgfs_server toolbox 1"  # the VMX may send `f` packets


def set_option(name: bytes, value: bytes) -> bytes:
    """``Set_Option <name> <value>``."""
    return SET_OPTION + b" " + name + b" " + value


class TCLOError(CodecError):
    """A TCLO command or reply that does not follow the format."""


@dataclass(frozen=True)
class TCLOCommand:
    name: bytes
    args: bytes = b""

    def encode(self) -> bytes:
        return self.name + (b" " + self.args if self.args else b"")


@dataclass(frozen=True)
class TCLOReply:
    ok: bool
    body: bytes = b""

    def encode(self) -> bytes:
        return (OK_PREFIX if self.ok else ERROR_PREFIX) + self.body


def parse_command(data: bytes) -> TCLOCommand:
    """Split a command into its name and arguments (one separating space removed).

    A trailing NUL after a bare name, which some senders include, is not part
    of it; arguments stay byte-exact (they may be binary).
    """
    name, start = command_name(data)
    return TCLOCommand(name, data[start:])


def command_name(data: bytes) -> tuple[bytes, int]:
    """A command's name and where its arguments start, without copying them (`parse_command`'s rules)."""
    space = data.find(b" ")
    if space < 0:
        name, start = (data[:-1] if data.endswith(b"\0") else data), len(data)
    else:
        name, start = data[:space], space + 1
    if not name or b"\0" in name:
        raise TCLOError("TCLO command has no name")
    return name, start


def parse_option(args: bytes) -> tuple[bytes, bytes]:
    """``Set_Option``'s arguments as (name, value); `TCLOError` if either is missing."""
    name, _, value = args.strip().partition(b" ")
    value = value.strip()
    if not name or not value:
        raise TCLOError("Set_Option needs a name and a value")
    return name, value


def is_reply(data: bytes) -> bool:
    """Whether ``data`` parses as a reply (`parse_reply` would not raise), without copying its body."""
    return data.startswith((OK_PREFIX, ERROR_PREFIX)) or data in (b"OK", b"ERROR")


def parse_reply(data: bytes) -> TCLOReply:
    if data.startswith(OK_PREFIX):
        return TCLOReply(True, data[len(OK_PREFIX) :])
    if data.startswith(ERROR_PREFIX):
        return TCLOReply(False, data[len(ERROR_PREFIX) :])
    # vmtoolsd never sends a bare "OK", but tolerate it: it is unambiguous.
    if data in (b"OK", b"ERROR"):
        return TCLOReply(data == b"OK")
    raise TCLOError(f"TCLO reply does not start with 'OK ' or 'ERROR ': {data[:32]!r}")
