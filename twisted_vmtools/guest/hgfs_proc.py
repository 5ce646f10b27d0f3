"""``/proc`` over HGFS: a started process's stdin/stdout/stderr, and procfs files.

``/proc/<pid>/stdin`` (write-only) feeds the process; closing it is EOF.
``/proc/<pid>/stdout`` and ``stderr`` (read-only) give what it wrote: while it
runs, a read waits (on the reactor clock, never blocking) for output or its
end; once it has ended and its output is drained, a read returns nothing (EOF).
Unlike the Go toolbox, output can be read while the process still runs, and
nothing is lost to a 1 s timeout.

Procfs files report size 0 although they have content; they are reported
with an unknown size so that the VMX reads them until a read comes back empty.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import replace

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from zope.interface import Interface, implementer

from ..codecs import hgfs
from ..codecs.hgfs import AttrV2, FileType, OpenMode, Status
from .hgfs_files import IFileHandle
from .hgfs_handlers import IFileHandler
from .hgfs_server import StatusError, attr_of

STREAM_PATH = re.compile(r"^/proc/(\d+)/(stdin|stdout|stderr)$")
POLL_INTERVAL = 0.01  # how often a read waiting for output looks again
READ_WAIT = 10.0  # the longest a read waits for output: well inside the VMX's TCLO timeout


class IProcessTable(Interface):
    """The processes guest operations started (the Vix process manager provides it)."""

    def get(pid: int) -> object | None:
        """The process with ``pid``, or None.  It has ``running`` (bool), ``when_ended()``
        (a Deferred) and ``io`` (None for a process started without I/O, else ``stdin``
        with ``write(bytes)``/``close()``/``closed``, ``stdout`` and ``stderr`` with
        ``read(size)``, ``size``)."""


@implementer(IFileHandler)
class ProcessIOHandler:
    """``/proc/<pid>/stdin|stdout|stderr`` of the processes in ``table`` started with I/O."""

    def __init__(self, clock: IReactorTime, table: IProcessTable, *, read_wait: float = READ_WAIT) -> None:
        self.clock = clock
        self.table = table
        self.read_wait = read_wait

    def _stream(self, path: str) -> tuple[object, str] | None:
        match = STREAM_PATH.match(path)
        if match is None:
            return None
        process = self.table.get(int(match.group(1)))
        if process is None or getattr(process, "io", None) is None:
            return None
        return process, match.group(2)

    def claims(self, path: str, query: dict[str, str], opening: bool) -> bool:
        return self._stream(path) is not None

    def stat(self, path: str, query: dict[str, str]) -> AttrV2:
        process, name = self._found(path)
        if name == "stdin":
            return AttrV2(mask=hgfs.ATTR_VALID_TYPE | hgfs.ATTR_VALID_OWNER_PERMS, type=FileType.REGULAR, owner_perms=2)
        ended = not process.running  # type: ignore[attr-defined]
        size = getattr(process.io, name).size if ended else hgfs.UNKNOWN_SIZE  # type: ignore[attr-defined]
        return AttrV2(
            mask=hgfs.ATTR_VALID_TYPE | hgfs.ATTR_VALID_SIZE | hgfs.ATTR_VALID_OWNER_PERMS,
            type=FileType.REGULAR, size=size, owner_perms=4,
        )

    def _found(self, path: str) -> tuple[object, str]:
        found = self._stream(path)
        if found is None:
            raise FileNotFoundError(errno.ENOENT, "no such process stream", path)
        return found

    def open(self, path: str, query: dict[str, str], mode: int, flags: int, permissions: int | None) -> IFileHandle:
        process, name = self._found(path)
        io = process.io  # type: ignore[attr-defined]
        if name == "stdin":
            if mode != OpenMode.WRITE_ONLY:
                raise StatusError(Status.ACCESS_DENIED, "stdin is write-only")
            if io.stdin.closed:
                raise StatusError(Status.ACCESS_DENIED, "stdin already closed")
            return StdinFile(path, io.stdin)
        if mode != OpenMode.READ_ONLY:
            raise StatusError(Status.ACCESS_DENIED, f"{name} is read-only")
        return OutputFile(path, process, getattr(io, name), self.clock, self.read_wait)


@implementer(IFileHandle)
class StdinFile:
    """Writes go to the process's stdin in order; Close is its EOF."""

    def __init__(self, name: str, stdin: object) -> None:
        self.name = name
        self.stdin = stdin
        self.position = 0

    def read(self, offset: int, size: int) -> bytes:
        raise StatusError(Status.ACCESS_DENIED, "stdin is write-only")

    def write(self, offset: int, data: bytes, append: bool) -> int:
        if not append and offset != self.position:
            raise StatusError(Status.INVALID_PARAMETER, f"stdin written at {offset}, it is at {self.position}")
        self.stdin.write(data)  # type: ignore[attr-defined]
        self.position += len(data)
        return len(data)

    def close(self) -> None:
        self.stdin.close()  # type: ignore[attr-defined]

    def abort(self) -> None:
        # Cut off: the process still gets its EOF rather than waiting for ever.
        self.stdin.close()  # type: ignore[attr-defined]


@implementer(IFileHandle)
class OutputFile:
    """A process's stdout or stderr, read in order as it is produced."""

    def __init__(self, name: str, process: object, stream: object, clock: IReactorTime, wait: float) -> None:
        self.name = name
        self.process = process
        self.stream = stream
        self.clock = clock
        self.wait = wait
        self.position = 0

    def read(self, offset: int, size: int) -> bytes | Deferred[bytes]:
        ended = not self.process.running  # type: ignore[attr-defined]
        if offset > self.position and ended and not self.stream.size:  # type: ignore[attr-defined]
            return b""  # past the end of a finished output (a pipelined read of a sized file)
        if offset != self.position:
            raise StatusError(Status.INVALID_PARAMETER, f"output read at {offset}, it is at {self.position}")
        if self.stream.size or not self.process.running:  # type: ignore[attr-defined]
            return self._take(size)
        return self._wait(size, self.clock.seconds() + self.wait)

    def _take(self, size: int) -> bytes:
        data: bytes = self.stream.read(size)  # type: ignore[attr-defined]
        self.position += len(data)
        return data

    def _wait(self, size: int, deadline: float) -> Deferred[bytes]:
        def again(_: object) -> bytes | Deferred[bytes]:
            if self.stream.size or not self.process.running:  # type: ignore[attr-defined]
                return self._take(size)
            if self.clock.seconds() >= deadline:
                # An empty read would mean the end: say instead that nothing came yet.
                raise StatusError(Status.SHARING_VIOLATION, "no output yet from a running process")
            return self._wait(size, deadline)

        return deferLater(self.clock, POLL_INTERVAL, lambda: None).addCallback(again)

    def write(self, offset: int, data: bytes, append: bool) -> int:
        raise StatusError(Status.ACCESS_DENIED, "process output is read-only")

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


@implementer(IFileHandler)
class ProcFilesHandler:
    """Procfs files: a stat with an unknown size (they say 0), so the VMX reads until empty.

    Opening falls through to the file system (reads at offsets work on procfs).
    """

    def claims(self, path: str, query: dict[str, str], opening: bool) -> bool:
        if opening or not path.startswith("/proc/"):
            return False
        try:
            info = os.stat(path)
        except OSError:
            return False
        return info.st_size == 0 and not os.path.isdir(path)

    def stat(self, path: str, query: dict[str, str]) -> AttrV2:
        return replace(attr_of(os.stat(path)), size=hgfs.UNKNOWN_SIZE)

    def open(self, path: str, query: dict[str, str], mode: int, flags: int, permissions: int | None) -> IFileHandle:
        raise FileNotFoundError(errno.ENOENT, "opened through the file system", path)
