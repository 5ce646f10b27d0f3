"""The VMX's HGFS client: what ESXi does to move a file for InitiateFileTransferTo/FromGuest.

A V4-header session (CreateSessionV4 … DestroySessionV4), large packets where
the channel carries them, and transfers pipelined: ``pipeline`` ReadV3 (or
WriteV3) at successive offsets are queued at once, so the guest always has the
next one waiting.  Where the TCLO channel takes several commands in flight (the
stream transport, docs/stream-transport.md) they travel together and the two
processes work at once; elsewhere the queue delivers them one at a time, and
only the client's own round trip leaves the path.  Data reaches the caller in
offset order, and at most ``pipeline`` packets are outstanding.
Data moves through callables (``write(chunk)`` for downloads, ``read(size)``
for uploads), so a caller streams to and from files, sockets or Twisted
consumers without holding a file in memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.python.failure import Failure

from ..codecs import hgfs
from ..codecs.hgfs import AttrV2, FileNameV3, Header, Op, OpenFlags, OpenMode, Status
from ..codecs.tclo import HGFS_PREFIX, OK_PREFIX, TCLOError, parse_reply

Sender = Callable[[bytes], "Deferred[hgfs.Data]"]
DEFAULT_PIPELINE = 4


class HGFSClientError(Exception):
    """The guest answered an HGFS request with an error status (or not at all as HGFS)."""

    def __init__(self, op: int, status: int, path: str = "") -> None:
        name = Status(status).name if status in Status._value2member_map_ else str(status)
        super().__init__(f"HGFS {Op(op).name if op in Op._value2member_map_ else op}: {name} {path}".rstrip())
        self.op = op
        self.status = status
        self.path = path


def tclo_sender(send_tclo: Callable[[bytes], Deferred[bytes]]) -> Sender:
    """Carry packets in ``f `` TCLO commands; ``send_tclo`` is e.g. ``VMX.send``."""
    return TCLOSender(send_tclo)


class TCLOSender:
    """A `Sender` over TCLO that also takes a packet in pieces (`send_pieces`), as `HGFSClient` makes them."""

    def __init__(self, send_tclo: Callable[[bytes], Deferred[bytes]]) -> None:
        self._send_tclo = send_tclo

    def __call__(self, packet: bytes) -> Deferred[hgfs.Data]:
        return self.send_pieces([packet])

    def send_pieces(self, pieces: list[hgfs.Data]) -> Deferred[hgfs.Data]:
        # One join behind the ``f ``: a WriteV3's 520 KB of data is copied once into the command.
        return self._send_tclo(b"".join([HGFS_PREFIX, *pieces])).addCallback(_unwrap)


def _unwrap(reply: bytes) -> hgfs.Data:
    if reply.startswith(OK_PREFIX):
        return memoryview(reply)[len(OK_PREFIX) :]  # a view: a 520 KB ReadV3 reply is not copied here
    try:
        parsed = parse_reply(reply)
    except TCLOError as error:
        raise HGFSClientError(0, Status.TRANSPORT_ERROR, str(error)) from error
    raise HGFSClientError(0, Status.TRANSPORT_ERROR, parsed.body.decode("utf-8", "replace"))


class HGFSClient:
    """One HGFS session with a guest."""

    def __init__(self, send: Sender, *, max_packet: int = hgfs.LARGE_PACKET_MAX, pipeline: int = DEFAULT_PIPELINE):
        self._send = send
        self.max_packet = max_packet
        self.pipeline = max(1, pipeline)
        self.session_id: int | None = None
        self._next_id = 0x80000000  # where the VMX starts its request ids

    @property
    def io_size(self) -> int:
        """The data one ReadV3/WriteV3 packet carries in this session."""
        return min(hgfs.LARGE_IO_MAX, self.max_packet - hgfs.V4_HEADER_SIZE - 25)

    async def request(self, op: int, message: Any, path: str = "") -> Any:
        return await self.call(op, message, path)

    def call(self, op: int, message: Any, path: str = "") -> Deferred[Any]:
        """Send one request: a Deferred of the decoded reply (`HGFSClientError` for an error status).

        A plain Deferred chain rather than a coroutine: transfers make one per packet, and
        the coroutine machinery showed in the VMX's CPU per packet.
        """
        if self.session_id is None and op != Op.CREATE_SESSION_V4:
            return fail(RuntimeError("no HGFS session: call start() first"))
        header = Header(op, self._request_id(), self.session_id if self.session_id is not None else 0)
        pieces = hgfs.request_pieces(header, message)
        send_pieces = getattr(self._send, "send_pieces", None)
        sending = send_pieces(pieces) if send_pieces is not None else self._send(b"".join(pieces))
        return sending.addCallback(self._decode, op, path)

    def _request_id(self) -> int:
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        return self._next_id

    def _decode(self, reply: hgfs.Data, op: int, path: str) -> Any:
        try:
            head, body = hgfs.decode_reply_header(reply, op)
            if head.status != Status.SUCCESS:
                raise HGFSClientError(op, head.status, path)
            return hgfs.decode_reply_body(op, body)
        except hgfs.HGFSError as error:
            raise HGFSClientError(op, Status.PROTOCOL_ERROR, f"{path} ({error})") from error

    # --- session ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        reply = await self.request(Op.CREATE_SESSION_V4, hgfs.CreateSessionRequest(self.max_packet))
        self.session_id = reply.session_id
        if reply.flags & hgfs.SESSION_MAXPACKETSIZE_VALID:
            self.max_packet = min(self.max_packet, reply.max_packet_size)

    async def stop(self) -> None:
        if self.session_id is not None:
            try:
                await self.request(Op.DESTROY_SESSION_V4, hgfs.Reserved())
            finally:
                self.session_id = None

    # --- single ops -------------------------------------------------------------------------------------------

    async def getattr(self, path: str) -> AttrV2:
        reply = await self.request(Op.GETATTR_V3, hgfs.NameRequest(FileNameV3(hgfs.cpname(path))), path)
        return reply.attr  # type: ignore[no-any-return]

    async def open(self, path: str, mode: int, flags: int = OpenFlags.OPEN, permissions: int | None = None) -> int:
        mask = hgfs.OPEN_VALID_MODE | hgfs.OPEN_VALID_FLAGS | hgfs.OPEN_VALID_FILE_NAME
        perms = (0, 0, 0, 0)
        if permissions is not None:
            mask |= (
                hgfs.OPEN_VALID_SPECIAL_PERMS | hgfs.OPEN_VALID_OWNER_PERMS
                | hgfs.OPEN_VALID_GROUP_PERMS | hgfs.OPEN_VALID_OTHER_PERMS
            )
            perms = ((permissions >> 9) & 7, (permissions >> 6) & 7, (permissions >> 3) & 7, permissions & 7)
        request = hgfs.OpenRequest(FileNameV3(hgfs.cpname(path)), mode, flags, mask, *perms)
        reply = await self.request(Op.OPEN_V3, request, path)
        return reply.handle  # type: ignore[no-any-return]

    async def read(self, handle: int, offset: int, size: int) -> bytes:
        return await self._read(handle, offset, size)

    async def write(self, handle: int, offset: int, data: bytes) -> int:
        return await self._write(handle, offset, data)

    # What transfers pipeline, one per packet.
    def _read(self, handle: int, offset: int, size: int) -> Deferred[bytes]:
        return self.call(Op.READ_V3, hgfs.ReadRequest(handle, offset, size)).addCallback(_read_data)

    def _write(self, handle: int, offset: int, data: bytes) -> Deferred[int]:
        return self.call(Op.WRITE_V3, hgfs.WriteRequest(handle, offset, data)).addCallback(_written, len(data))

    async def close(self, handle: int) -> None:
        await self.request(Op.CLOSE_V3, hgfs.CloseRequest(handle))

    async def setattr(self, path: str, attr: AttrV2) -> None:
        await self.request(Op.SETATTR_V3, hgfs.SetattrRequest(FileNameV3(hgfs.cpname(path)), attr), path)

    async def listdir(self, path: str) -> list[tuple[str, AttrV2]]:
        reply = await self.request(Op.SEARCH_OPEN_V3, hgfs.ReservedNameRequest(FileNameV3(hgfs.cpname(path))), path)
        entries: list[tuple[str, AttrV2]] = []
        try:
            while True:
                page = await self.request(Op.SEARCH_READ_V3, hgfs.SearchReadRequest(reply.handle, len(entries)))
                if page.end:
                    return entries
                entry = page.entries[0]
                entries.append((entry.name.decode("utf-8", "surrogateescape"), entry.attr))
        finally:
            await self.request(Op.SEARCH_CLOSE_V3, hgfs.CloseRequest(reply.handle))

    # --- transfers --------------------------------------------------------------------------------------------

    async def download(self, path: str, write: Callable[[bytes], object]) -> int:
        """Stream ``path`` from the guest into ``write``; returns the byte count.

        As the VMX does: Getattr, Open, reads, Close.  A regular file is read at
        increasing offsets with ``pipeline`` reads in flight until a short read.
        A virtual file (a directory's archive, process output) reports no size:
        it is read one packet after the other until the guest returns nothing.
        """
        attr = await self.getattr(path)
        streamed = attr.type != hgfs.FileType.REGULAR or attr.size >= hgfs.UNKNOWN_SIZE
        handle = await self.open(path, OpenMode.READ_ONLY)
        try:
            count = await self._read_all(handle, write, 1 if streamed else self.pipeline, streamed)
        except HGFSClientError as error:
            if error.status == Status.TRANSPORT_ERROR:
                self.session_id = None  # nobody to close it with: the guest drops the session itself
            else:
                await self.close(handle)
            raise
        except BaseException:
            await self.close(handle)
            raise
        await self.close(handle)
        return count

    async def _read_all(self, handle: int, write: Callable[[bytes], object], depth: int, streamed: bool) -> int:
        size = self.io_size
        offset = 0
        # At most ``depth`` reads in flight: what the client holds is bounded by depth x size, and
        # ``write`` returning a Deferred (a consumer that is full) holds the next reads back.
        inflight: deque[Deferred[bytes]] = deque()
        try:
            while True:
                while len(inflight) < depth:
                    inflight.append(self._read(handle, offset + len(inflight) * size, size))
                chunk = await inflight.popleft()
                if chunk:
                    result = write(chunk)
                    if isinstance(result, Deferred):
                        await result
                    offset += len(chunk)
                if not chunk or (len(chunk) < size and not streamed):
                    while inflight:  # reads queued past the end come back empty: wait them out
                        await inflight.popleft()
                    return offset
        except BaseException:
            _quiet(inflight)  # the first failure is the one raised
            raise

    async def upload(
        self,
        path: str,
        read: Callable[[int], bytes | Awaitable[bytes]],
        *,
        overwrite: bool = False,
        permissions: int | None = 0o644,
    ) -> int:
        """Stream ``read(n)`` (until it returns b"") into ``path`` in the guest.

        Without ``overwrite`` an existing file is refused (FILE_EXISTS), checked
        again by the guest when it moves the finished upload into place.
        """
        flags = OpenFlags.CREATE_EMPTY if overwrite else OpenFlags.CREATE_SAFE
        handle = await self.open(path, OpenMode.WRITE_ONLY, flags, permissions)
        offset = 0
        # Writes are pipelined too, at most ``pipeline`` in flight (bounded memory): the guest
        # finds the next one queued when it answers.
        inflight: deque[Deferred[int]] = deque()
        reading = False
        try:
            if permissions is not None:
                # The guest's umask filtered the mode at open; the VMX sets the asked-for attributes.
                await self.setattr(path, permissions_attr(permissions))
            while True:
                reading = True
                chunk = read(self.io_size)
                if not isinstance(chunk, bytes):
                    chunk = await chunk
                reading = False
                if not chunk:
                    break
                inflight.append(self._write(handle, offset, chunk))
                offset += len(chunk)
                if len(inflight) >= self.pipeline:
                    await inflight.popleft()
            while inflight:
                await inflight.popleft()
        except BaseException as error:
            await self._cut_off(error, inflight, local=reading)
            raise
        await self.close(handle)
        return offset

    async def _cut_off(self, error: BaseException, inflight: deque[Deferred[int]], *, local: bool) -> None:
        """An upload stopped midway: the session's end discards it (the guest keeps no half-written file).

        A guest that answered is told at once, after the writes already sent (a local
        error, such as the source failing to read, waits for them to settle); one that is
        gone drops the session itself (restart or idle expiry).
        """
        told = local or (isinstance(error, HGFSClientError) and error.status != Status.TRANSPORT_ERROR)
        if local and inflight:
            outcomes = await DeferredList(list(inflight), consumeErrors=True)
            told = all(ok or _answered(result) for ok, result in outcomes)  # type: ignore[arg-type]
        else:
            _quiet(inflight)  # the first failure is the one raised
        if not told:
            self.session_id = None
            return
        try:
            await self.stop()
        except Exception:  # the error being raised says what went wrong first
            self.session_id = None


def _quiet(pending: Iterable[Deferred[Any]]) -> None:
    for deferred in pending:
        deferred.addErrback(lambda _: None)


def _answered(failure: Failure) -> bool:
    """A failed request that the guest answered (an error status), not one lost on the way."""
    return bool(failure.check(HGFSClientError)) and failure.value.status != Status.TRANSPORT_ERROR  # type: ignore[union-attr]


def _read_data(reply: hgfs.ReadReply) -> bytes:
    return bytes(reply.data)  # the one copy out of the reply packet, for the caller to keep


def _written(reply: hgfs.WriteReply, size: int) -> int:
    if reply.written != size:
        raise HGFSClientError(Op.WRITE_V3, Status.NO_SPACE, f"short write: {reply.written} of {size}")
    return reply.written


def permissions_attr(mode: int) -> AttrV2:
    """Attributes that set exactly the POSIX permission bits ``mode``."""
    mask = (hgfs.ATTR_VALID_SPECIAL_PERMS | hgfs.ATTR_VALID_OWNER_PERMS | hgfs.ATTR_VALID_GROUP_PERMS
            | hgfs.ATTR_VALID_OTHER_PERMS)
    return AttrV2(mask=mask, special_perms=(mode >> 9) & 7, owner_perms=(mode >> 6) & 7,
                  group_perms=(mode >> 3) & 7, other_perms=mode & 7)


async def with_session(send: Sender, work: Callable[[HGFSClient], Awaitable[Any]], **options: Any) -> Any:
    """Run ``work`` inside one HGFS session, destroyed afterwards whatever happens."""
    client = HGFSClient(send, **options)
    await client.start()
    try:
        return await work(client)
    finally:
        if client.session_id is not None:
            await client.stop()
