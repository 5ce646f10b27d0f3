"""RPCI text: requests a guest sends the VMX and the VMX's ``1 `` / ``0 `` replies."""

from __future__ import annotations

from dataclasses import dataclass

from .datamap import MAX_PAYLOAD
from .errors import CodecError

SUCCESS_PREFIX = b"1 "
FAILURE_PREFIX = b"0 "
UNKNOWN_COMMAND = b"Unknown command"

# Requests a guest sends and a VMX answers (the guest's core and the simulated VMX share them).
INFO_SET = b"info-set"
INFO_GET = b"info-get"
LOG = b"log"
UNIFIED_LOOP = b"vmx.capability.unified_loop"  # "<app name>": this app's TCLO loop handles everything
SET_VERSION = b"tools.set.version"
SET_VERSION_TYPE = b"tools.set.versiontype"
CAPABILITY_PREFIX = b"tools.capability."
UNMANAGED_VERSION = 2147483647  # tools.set.version's "not managed by the VMX" (vSphere: guestToolsUnmanaged)

SET_INFO_SIZE_LIMIT = 1 << 20  # a VMX's tools.setInfo.sizeLimit: 1 MB per guest-set value
# The largest guestinfo value a guest can read back: ``1 <value>`` must fit one stream packet.
MAX_GUESTINFO_VALUE = min(SET_INFO_SIZE_LIMIT, MAX_PAYLOAD - len(SUCCESS_PREFIX))
GUESTINFO_PREFIX = b"guestinfo."  # every key of the store info-set and info-get reach


class RPCIFormatError(CodecError):
    """An RPCI reply that is neither ``1 …`` nor ``0 …``, or an empty request."""


@dataclass(frozen=True)
class RPCIRequest:
    """``args`` has the sender's trailing NUL removed; ``raw_args`` is byte-exact,
    for binary payloads (``SetGuestInfo  10 <XDR>``), whose last byte may be a zero."""

    name: bytes
    args: bytes = b""
    raw_args: bytes = b""

    def encode(self) -> bytes:
        """``name`` alone, or ``name <arguments>`` (``raw_args`` if set, else ``args``)."""
        arguments = self.raw_args or self.args
        return self.name + b" " + arguments if arguments else self.name


def info_set(key: bytes, value: bytes) -> bytes:
    """``info-set <key> <value>``."""
    return RPCIRequest(INFO_SET, key + b" " + value).encode()


@dataclass(frozen=True)
class RPCIReply:
    ok: bool
    body: bytes = b""

    def encode(self) -> bytes:
        return (SUCCESS_PREFIX if self.ok else FAILURE_PREFIX) + self.body


def parse_request(data: bytes) -> RPCIRequest:
    """Split a request into name and arguments.

    Senders differ: vmtoolsd appends a NUL to text requests, rpctool may drop
    the space after a bare name, capability RPCs end in a space.  All of them
    name the same request.  Binary arguments (``SetGuestInfo  10 <XDR>``) are
    kept byte-exact in ``raw_args``.
    """
    name, _, raw_args = data.partition(b" ")
    name = name.rstrip(b"\0")
    if not name:
        raise RPCIFormatError("empty RPCI request")
    args = raw_args[:-1] if raw_args.endswith(b"\0") else raw_args
    return RPCIRequest(name, args, raw_args)


def parse_reply(data: bytes) -> RPCIReply:
    if data.endswith(b"\0"):
        data = data[:-1]
    if len(data) < 2 or data[:2] not in (SUCCESS_PREFIX, FAILURE_PREFIX):
        raise RPCIFormatError(f"invalid RPCI reply format: {data[:32]!r}")
    return RPCIReply(data[:2] == SUCCESS_PREFIX, data[2:])
