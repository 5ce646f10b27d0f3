"""What the engine tracks about traced processes: address spaces, threads.

Breakpoints live in the address space, not the process: threads share one,
a vfork child shares its parent's until it execs, a fork child gets a copy
(it inherits the int3 bytes, so it inherits the table too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum


class BreakpointKind(Enum):
    CPUID = "cpuid"  # an int3 over a `cpuid`: emulate it
    LOADER = "loader"  # ld.so's _dl_debug_state (r_brk): emulate `ret`, rescan


@dataclass(frozen=True)
class Breakpoint:
    kind: BreakpointKind
    length: int  # of the instruction replaced, for resuming after it
    original: bytes  # the instruction's bytes, to verify the site on a hit
    key: tuple[int, int]  # (device, inode) of the object it belongs to


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    offset: int
    inode: int
    device: int
    path: str

    @property
    def key(self) -> tuple[int, int]:
        return (self.device, self.inode)


def read_maps(tid: int) -> list[Mapping]:
    mappings = []
    with open(f"/proc/{tid}/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) < 5:
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            major, minor = (int(x, 16) for x in fields[3].split(":"))
            path = fields[5].rstrip("\n") if len(fields) > 5 else ""
            mappings.append(
                Mapping(start, end, fields[1], int(fields[2], 16), int(fields[4]), os.makedev(major, minor), path)
            )
    return mappings


def read_auxv(tid: int) -> dict[int, int]:
    with open(f"/proc/{tid}/auxv", "rb") as auxv:
        data = auxv.read()
    words = memoryview(data).cast("Q")
    return {words[i]: words[i + 1] for i in range(0, len(words) - 1, 2)}


class AddressSpace:
    """One mm: its breakpoints and the objects already scanned in it."""

    def __init__(self, tid: int) -> None:
        # /proc/PID/mem pins the mm at open time, so it stays usable even if
        # the opening thread exits, and is reopened after exec.
        self.mem_fd: int | None = os.open(f"/proc/{tid}/mem", os.O_RDWR | os.O_CLOEXEC)
        self.breakpoints: dict[int, Breakpoint] = {}
        self.objects: set[tuple[int, int]] = set()
        self.cpuid_faulting = False
        self.users = 0

    def fork(self, child: int) -> AddressSpace:
        copy = AddressSpace(child)
        copy.breakpoints = dict(self.breakpoints)
        copy.objects = set(self.objects)
        copy.cpuid_faulting = self.cpuid_faulting
        return copy

    def read(self, address: int, size: int) -> bytes:
        assert self.mem_fd is not None
        return os.pread(self.mem_fd, size, address)

    def write(self, address: int, data: bytes) -> None:
        assert self.mem_fd is not None
        os.pwrite(self.mem_fd, data, address)

    def forget_objects(self, present: set[tuple[int, int]]) -> None:
        """Drop breakpoints of objects that are no longer mapped (dlclose)."""
        gone = self.objects - present
        if gone:
            self.objects -= gone
            self.breakpoints = {a: b for a, b in self.breakpoints.items() if b.key not in gone}

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0 and self.mem_fd is not None:
            os.close(self.mem_fd)
            self.mem_fd = None


@dataclass
class Process:
    tgid: int
    space: AddressSpace
    threads: set[int] = field(default_factory=set)
    used_backdoor: bool = False


@dataclass
class Thread:
    tid: int
    process: Process
