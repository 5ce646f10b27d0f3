"""The backdoor's register contract: constants and the register file.

A backdoor call is a set of general-purpose registers going in and a set
coming out.  Everything that speaks the backdoor (the C extension on the
guest side, the trap engine and the simulated VMX on the host side) uses
`Registers` so the message-channel state machines never know which of them
they are talking to.
"""

from __future__ import annotations

from typing import NamedTuple

BDOOR_MAGIC = 0x564D5868  # "VMXh"
BDOOR_PORT = 0x5658  # low bandwidth: `in eax, dx`
BDOORHB_PORT = 0x5659  # high bandwidth: `rep insb` / `rep outsb`
BDOORHB_CMD_MESSAGE = 0

# Hypercall (vmcall/vmmcall) flags carried in DX instead of a port.
BDOOR_FLAGS_HB = 1
BDOOR_FLAGS_WRITE = 2

# Low-bandwidth commands (ECX low 16).
CMD_GETMHZ = 1
CMD_GETVERSION = 10
CMD_GETHWVERSION = 17
CMD_GETTIME = 23
CMD_STOPCATCHUP = 24
CMD_MESSAGE = 30
CMD_GETTIMEFULL = 46
CMD_GETTIMEFULL_WITH_LAG = 55
CMD_NESTING_CONTROL = 63
CMD_GET_VCPU_INFO = 68
CMD_GETBUILDNUM = 100

VERSION_MAGIC = 6  # what GETVERSION returns in EAX
VMX_TYPE_SCALABLE_SERVER = 2  # ESX; some plugins refuse to load otherwise

# The message channel's protocol numbers (EBX of the open call), also the stream transport's
# preamble: here rather than in message.py so the stream transport need not load the backdoor's codec.
PROTO_RPCI = 0x49435052  # b"RPCI" as a little-endian u32
PROTO_TCLO = 0x4F4C4354  # b"TCLO"

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF


def low16(value: int) -> int:
    return value & 0xFFFF


def high16(value: int) -> int:
    return (value >> 16) & 0xFFFF


def pack16(high: int, low: int) -> int:
    """A 32-bit register value from its two 16-bit halves."""
    return ((high & 0xFFFF) << 16) | (low & 0xFFFF)


class Registers(NamedTuple):
    """The registers a backdoor call reads and writes (64-bit values).

    Only the low 32 bits (or 16-bit halves) carry meaning; the guest's C code
    leaves stack garbage in the upper halves, so readers must mask.  ``bp``
    is used only by the high-bandwidth calls, where it carries a cookie.
    A named tuple rather than a dataclass: one is built per backdoor call,
    and construction cost shows in the per-RPC profile.
    """

    ax: int = 0
    bx: int = 0
    cx: int = 0
    dx: int = 0
    si: int = 0
    di: int = 0
    bp: int = 0

    def with_(self, **changes: int) -> Registers:
        return self._replace(**{k: v & MASK64 for k, v in changes.items()})

    @property
    def command(self) -> int:
        return low16(self.cx)

    @property
    def port(self) -> int:
        return low16(self.dx)
