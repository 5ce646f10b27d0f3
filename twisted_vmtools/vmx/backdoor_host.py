"""The VMX's answer to backdoor calls: GETVERSION, time, and the message channels.

This is the register-level VMX that the trap engine (and a test's in-memory
backdoor) calls.  It implements `IBackdoorHost`; the message channels come
from `HostChannels`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from twisted.logger import Logger
from zope.interface import implementer

from ..backdoor_interface import IBackdoorHost
from ..codecs import registers as bd
from ..codecs.message import EndpointFactory, HostChannels
from ..codecs.registers import Registers

UNIMPLEMENTED = 0xFFFFFFFF


@implementer(IBackdoorHost)
class BackdoorHost:
    """A VMX's backdoor, as ESX (VMX type 2) answers it.

    Unknown commands come back with EAX = 0xFFFFFFFF, which is how the tools
    learn a command is not there.
    """

    log = Logger()

    def __init__(
        self,
        endpoints: EndpointFactory,
        *,
        high_bandwidth: bool = True,
        max_channels: int = 8,
        hardware_version: int = 21,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.channels = HostChannels(endpoints, high_bandwidth=high_bandwidth, max_channels=max_channels)
        self.hardware_version = hardware_version
        self._clock = wall_clock
        self.counts: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def low_bandwidth(self, owner: int, regs: Registers) -> Registers | None:
        if regs.ax & bd.MASK32 != bd.BDOOR_MAGIC or regs.port != bd.BDOOR_PORT:
            return None
        command = regs.command
        self._count(f"lb.{command}")
        if command == bd.CMD_MESSAGE:
            return self.channels.low_bandwidth(owner, regs)
        if command == bd.CMD_GETVERSION:
            return regs.with_(ax=bd.VERSION_MAGIC, bx=bd.BDOOR_MAGIC, cx=bd.VMX_TYPE_SCALABLE_SERVER)
        if command == bd.CMD_GETHWVERSION:
            return regs.with_(ax=self.hardware_version, bx=bd.BDOOR_MAGIC)
        if command in (bd.CMD_GETTIMEFULL, bd.CMD_GETTIMEFULL_WITH_LAG):
            return self._time_full(regs)
        if command == bd.CMD_GETMHZ:
            return regs.with_(ax=2000, bx=bd.BDOOR_MAGIC)
        if command == bd.CMD_STOPCATCHUP:
            return regs
        if command == bd.CMD_GET_VCPU_INFO:
            return regs.with_(ax=0x80000000)  # bit 31: not implemented
        self.log.debug("unknown backdoor command {command}", command=command)
        return regs.with_(ax=UNIMPLEMENTED)

    def _time_full(self, regs: Registers) -> Registers:
        now = self._clock()
        seconds = int(now)
        micros = int((now - seconds) * 1_000_000)
        # EAX left as the magic is how the guest knows the call is supported.
        return regs.with_(
            si=(seconds >> 32) & bd.MASK32,
            dx=seconds & bd.MASK32,
            bx=micros,
            cx=1_000_000,
            di=0,
        )

    def high_bandwidth_out(self, owner: int, regs: Registers, data: bytes) -> Registers:
        self._count("hb.out")
        return self.channels.high_bandwidth_out(owner, regs, data)

    def high_bandwidth_in(self, owner: int, regs: Registers) -> tuple[Registers, bytes]:
        self._count("hb.in")
        return self.channels.high_bandwidth_in(owner, regs)

    def owner_exited(self, owner: int) -> None:
        self.channels.close_owner(owner)


