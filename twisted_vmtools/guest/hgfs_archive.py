"""The archive handler: a directory moves over HGFS as a tar (or tgz) stream.

Read (guest → host): the tar is made as the VMX reads, one packet's worth of
files at a time.  Written (host → guest): the stream is unpacked as it
arrives, by a worker thread reading from a bounded pipe (tarfile reads
blocking), with tarfile's data filter refusing escaping members; Close
reports whether the whole archive was unpacked.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import deque
from collections.abc import Iterator

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads
from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer

from ..archive import ArchiveError, check_format, extract, tar_stream
from ..codecs import hgfs
from ..codecs.hgfs import AttrV2, FileType, OpenFlags, OpenMode, Status
from .hgfs_files import IFileHandle
from .hgfs_handlers import IFileHandler
from .hgfs_server import StatusError
from .virtual_paths import ARCHIVE_SCHEME

SCHEME = ARCHIVE_SCHEME  # /archive:/path (virtual_paths declares it)
PIPE_LIMIT = 4 * 1024 * 1024  # bytes waiting for the unpacking thread before writes wait too


@implementer(IFileHandler)
class ArchiveHandler:
    """``/archive:/path[?format=tar|tgz&prefix=…]``, and any existing directory opened as a file."""

    def __init__(self, reactor: IReactorThreads, *, chunk_size: int = hgfs.LARGE_IO_MAX) -> None:
        self.reactor = reactor
        self.chunk_size = chunk_size

    def claims(self, path: str, query: dict[str, str], opening: bool) -> bool:
        # Getattr of a plain directory describes the directory; opening it, or naming a format, is the archive.
        return (opening or bool(query)) and os.path.isdir(path)

    def stat(self, path: str, query: dict[str, str]) -> AttrV2:
        _gzip(query)
        # No size can be known before the archive is made: the VMX reads until an empty read.
        return AttrV2(
            mask=hgfs.ATTR_VALID_TYPE | hgfs.ATTR_VALID_SIZE | hgfs.ATTR_VALID_OWNER_PERMS,
            type=FileType.REGULAR, size=hgfs.UNKNOWN_SIZE, owner_perms=6,
        )

    def open(self, path: str, query: dict[str, str], mode: int, flags: int, permissions: int | None) -> IFileHandle:
        gzip = _gzip(query)
        if mode == OpenMode.READ_ONLY:
            if not os.path.lexists(path):
                raise FileNotFoundError(errno.ENOENT, "no such file or directory", path)
            return ArchiveReader(path, tar_stream(path, prefix=query.get("prefix", ""), gzip=gzip,
                                                  chunk_size=self.chunk_size))
        if mode == OpenMode.WRITE_ONLY:
            if os.path.exists(path) and not os.path.isdir(path):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
            if flags == OpenFlags.CREATE_SAFE and os.path.exists(path):
                raise FileExistsError(errno.EEXIST, "exists (unpacking into it needs overwrite)", path)
            return ArchiveWriter(self.reactor, path)
        raise StatusError(Status.INVALID_PARAMETER, "an archive is read or written, not both")


def _gzip(query: dict[str, str]) -> bool:
    try:
        return check_format(query.get("format", ""))
    except ArchiveError as error:
        raise StatusError(Status.INVALID_PARAMETER, str(error)) from error


@implementer(IFileHandle)
class ArchiveReader:
    """The tar of a tree, read strictly in order (each read continues where the last ended)."""

    def __init__(self, name: str, pieces: Iterator[bytes]) -> None:
        self.name = name
        self._pieces = pieces
        self._pending = b""
        self.position = 0

    def read(self, offset: int, size: int) -> bytes:
        if offset != self.position:
            raise StatusError(Status.INVALID_PARAMETER, f"archive read at {offset}, the stream is at {self.position}")
        parts = [self._pending]
        have = len(self._pending)
        while have < size:
            piece = next(self._pieces, None)
            if piece is None:
                break
            parts.append(piece)
            have += len(piece)
        data = b"".join(parts)
        self._pending = data[size:]
        chunk = data[:size]
        self.position += len(chunk)
        return chunk

    def write(self, offset: int, data: bytes, append: bool) -> int:
        raise StatusError(Status.ACCESS_DENIED, "an archive opened for reading")

    def close(self) -> None:
        self._pieces.close()  # type: ignore[attr-defined]

    def abort(self) -> None:
        self.close()


class _Pipe:
    """Bytes from the reactor to one reading thread, bounded: `feed` returns a Deferred when full."""

    def __init__(self, reactor: IReactorFromThreads, limit: int = PIPE_LIMIT) -> None:
        self.reactor = reactor
        self.limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._closed = False
        self._lock = threading.Condition()
        self._waiting: list[Deferred[None]] = []

    def feed(self, data: bytes) -> Deferred[None] | None:
        with self._lock:
            self._chunks.append(data)
            self._size += len(data)
            self._lock.notify()
            if self._size <= self.limit:
                return None
            waiting: Deferred[None] = Deferred()
            self._waiting.append(waiting)
            return waiting

    def finish(self) -> None:
        """In the reactor: no more data; writers still waiting go on (nothing will drain for them)."""
        with self._lock:
            self._closed = True
            self._lock.notify()
            waiting, self._waiting = self._waiting, []
        for writer in waiting:
            writer.callback(None)

    def read(self, size: int = -1) -> bytes:
        """In the thread: up to ``size`` bytes, blocking until some arrive; b"" at the end."""
        with self._lock:
            while not self._chunks and not self._closed:
                self._lock.wait()
            if not self._chunks:
                return b""
            chunk = self._chunks.popleft()
            if 0 <= size < len(chunk):
                self._chunks.appendleft(chunk[size:])
                chunk = chunk[:size]
            self._size -= len(chunk)
            if self._waiting and self._size <= self.limit // 2:
                waiting, self._waiting = self._waiting, []
                for writer in waiting:
                    self.reactor.callFromThread(writer.callback, None)
            return chunk

    def drain(self) -> None:
        """In the thread, after the archive's end: take what else comes, so the writer never waits."""
        while self.read(1 << 20):
            pass


@implementer(IFileHandle)
class ArchiveWriter:
    """Unpacks into ``target`` what the VMX writes; Close says whether it all went in."""

    def __init__(self, reactor: IReactorThreads, target: str) -> None:
        self.name = target
        self.position = 0
        self._pipe = _Pipe(reactor)  # type: ignore[arg-type]
        self._done = deferToThreadPool(reactor, reactor.getThreadPool(), self._unpack, target)  # type: ignore[arg-type]
        self._done.addErrback(self._keep)
        self._error: BaseException | None = None

    def _unpack(self, target: str) -> None:
        try:
            extract(self._pipe, target)  # type: ignore[arg-type]
        finally:
            self._pipe.drain()

    def _keep(self, failure: object) -> None:
        self._error = failure.value  # type: ignore[attr-defined]

    def read(self, offset: int, size: int) -> bytes:
        raise StatusError(Status.ACCESS_DENIED, "an archive opened for writing")

    def write(self, offset: int, data: bytes, append: bool) -> int | Deferred[int]:
        if not append and offset != self.position:
            raise StatusError(Status.INVALID_PARAMETER, f"archive write at {offset}, the stream is at {self.position}")
        self.position += len(data)
        waiting = self._pipe.feed(data)
        if waiting is None:
            return len(data)
        return waiting.addCallback(lambda _: len(data))

    def close(self) -> Deferred[None]:
        self._pipe.finish()
        return self._done.addCallback(self._result)

    def _result(self, _: object) -> None:
        if self._error is not None:
            raise StatusError(Status.INVALID_PARAMETER, f"archive not unpacked: {self._error}")

    def abort(self) -> None:
        self._pipe.finish()
