"""HGFS conformance steps: one session through the ``f`` command, the same against each guest.

The steps run in order in one session (later ones use the session id and the
handles earlier ones obtained) over a small tree made for the run.  What is
compared is what a client relies on: statuses, sizes, types, permissions,
data and directory listings; session ids, handles, times and inode numbers
differ by nature and are left out.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..codecs import hgfs
from ..codecs.hgfs import FileNameV3, Header, Op, OpenFlags, OpenMode, Status
from ..codecs.tclo import HGFS_COMMAND, HGFS_PREFIX, OK_PREFIX

HELLO = b"hello world"


@dataclass
class Context:
    """What the steps share: where the tree is, and what the guest handed out."""

    root: str
    session: int = 0
    handles: dict[str, int] = field(default_factory=dict)

    def name(self, *parts: str) -> FileNameV3:
        return FileNameV3(hgfs.cpname(os.path.join(self.root, *parts)))


def make_tree(root: str) -> None:
    os.makedirs(os.path.join(root, "d"), exist_ok=True)
    with open(os.path.join(root, "hello.txt"), "wb") as f:
        f.write(HELLO)
    os.chmod(os.path.join(root, "hello.txt"), 0o640)
    for leaf in ("a", "b"):
        with open(os.path.join(root, "d", leaf), "wb") as f:
            f.write(leaf.encode() * 3)


@dataclass(frozen=True)
class Step:
    name: str
    what: str
    request: Callable[[Context], bytes | list[bytes] | None]  # the packet(s) (None: a bare `f`)
    op: int = 0
    after: Callable[[Context, object], None] = lambda ctx, reply: None  # keep ids for later steps


def _v4(op: int, message: object, ctx: Context) -> bytes:
    return hgfs.encode_request(Header(op, 0x80000001, ctx.session), message)  # type: ignore[arg-type]


def _keep_session(ctx: Context, reply: object) -> None:
    ctx.session = reply.session_id  # type: ignore[attr-defined]


def _keep(key: str) -> Callable[[Context, object], None]:
    def keep(ctx: Context, reply: object) -> None:
        ctx.handles[key] = reply.handle  # type: ignore[attr-defined]

    return keep


def _open(ctx: Context, leaf: str, mode: int, flags: int, perms: int | None = None) -> bytes:
    mask = hgfs.OPEN_VALID_MODE | hgfs.OPEN_VALID_FLAGS | hgfs.OPEN_VALID_FILE_NAME
    owner = 0
    if perms is not None:
        mask |= hgfs.OPEN_VALID_OWNER_PERMS
        owner = perms
    return _v4(Op.OPEN_V3, hgfs.OpenRequest(ctx.name(leaf), mode, flags, mask, owner_perms=owner), ctx)


STEPS: tuple[Step, ...] = (
    Step("hgfs-no-packet", "HGFS `f` without a packet", lambda ctx: None),
    Step("hgfs-create-session", "HGFS CreateSessionV4 (max packet 65536)",
         lambda ctx: _v4(Op.CREATE_SESSION_V4, hgfs.CreateSessionRequest(65536), ctx),
         Op.CREATE_SESSION_V4, _keep_session),
    Step("hgfs-getattr", "HGFS GetattrV3 of a 0640 file",
         lambda ctx: _v4(Op.GETATTR_V3, hgfs.NameRequest(ctx.name("hello.txt")), ctx), Op.GETATTR_V3),
    Step("hgfs-getattr-dir", "HGFS GetattrV3 of a directory",
         lambda ctx: _v4(Op.GETATTR_V3, hgfs.NameRequest(ctx.name("d")), ctx), Op.GETATTR_V3),
    Step("hgfs-getattr-missing", "HGFS GetattrV3 of a missing file",
         lambda ctx: _v4(Op.GETATTR_V3, hgfs.NameRequest(ctx.name("missing")), ctx), Op.GETATTR_V3),
    Step("hgfs-open-read", "HGFS OpenV3 read-only",
         lambda ctx: _open(ctx, "hello.txt", OpenMode.READ_ONLY, OpenFlags.OPEN), Op.OPEN_V3, _keep("read")),
    Step("hgfs-read", "HGFS ReadV3 at 6, 100 bytes",
         lambda ctx: _v4(Op.READ_V3, hgfs.ReadRequest(ctx.handles.get("read", 0), 6, 100), ctx), Op.READ_V3),
    Step("hgfs-read-past-end", "HGFS ReadV3 past the end",
         lambda ctx: _v4(Op.READ_V3, hgfs.ReadRequest(ctx.handles.get("read", 0), 1 << 33, 100), ctx), Op.READ_V3),
    Step("hgfs-close", "HGFS CloseV3",
         lambda ctx: _v4(Op.CLOSE_V3, hgfs.CloseRequest(ctx.handles.get("read", 0)), ctx), Op.CLOSE_V3),
    Step("hgfs-read-closed", "HGFS ReadV3 on the closed handle",
         lambda ctx: _v4(Op.READ_V3, hgfs.ReadRequest(ctx.handles.get("read", 0), 0, 10), ctx), Op.READ_V3),
    Step("hgfs-create-existing", "HGFS OpenV3 create-safe of an existing file",
         lambda ctx: _open(ctx, "hello.txt", OpenMode.WRITE_ONLY, OpenFlags.CREATE_SAFE, 6), Op.OPEN_V3),
    Step("hgfs-open-create", "HGFS OpenV3 create-safe write-only, owner rw",
         lambda ctx: _open(ctx, "new.txt", OpenMode.WRITE_ONLY, OpenFlags.CREATE_SAFE, 6), Op.OPEN_V3,
         _keep("write")),
    Step("hgfs-write", "HGFS WriteV3 of 11 bytes at 0",
         lambda ctx: _v4(Op.WRITE_V3, hgfs.WriteRequest(ctx.handles.get("write", 0), 0, HELLO), ctx), Op.WRITE_V3),
    Step("hgfs-close-written", "HGFS CloseV3 of the written file",
         lambda ctx: _v4(Op.CLOSE_V3, hgfs.CloseRequest(ctx.handles.get("write", 0)), ctx), Op.CLOSE_V3),
    Step("hgfs-getattr-written", "HGFS GetattrV3 of the written file",
         lambda ctx: _v4(Op.GETATTR_V3, hgfs.NameRequest(ctx.name("new.txt")), ctx), Op.GETATTR_V3),
    Step("hgfs-search-open", "HGFS SearchOpenV3 of a directory",
         lambda ctx: _v4(Op.SEARCH_OPEN_V3, hgfs.ReservedNameRequest(ctx.name("d")), ctx), Op.SEARCH_OPEN_V3,
         _keep("search")),
    # Entries come in the directory's order, which differs between file systems: compared sorted.
    Step("hgfs-search-read", "HGFS SearchReadV3 of indexes 0–4, sorted",
         lambda ctx: [_v4(Op.SEARCH_READ_V3, hgfs.SearchReadRequest(ctx.handles.get("search", 0), index), ctx)
                      for index in range(5)],
         Op.SEARCH_READ_V3),
    Step("hgfs-search-close", "HGFS SearchCloseV3",
         lambda ctx: _v4(Op.SEARCH_CLOSE_V3, hgfs.CloseRequest(ctx.handles.get("search", 0)), ctx),
         Op.SEARCH_CLOSE_V3),
    Step("hgfs-stale-session", "HGFS GetattrV3 in a session that does not exist",
         lambda ctx: hgfs.encode_request(Header(Op.GETATTR_V3, 7, ctx.session ^ 0x5A5A),
                                         hgfs.NameRequest(ctx.name("hello.txt"))), Op.GETATTR_V3),
    Step("hgfs-bad-handle", "HGFS ReadV3 of a handle never given",
         lambda ctx: _v4(Op.READ_V3, hgfs.ReadRequest(0x7FFFFFF0, 0, 10), ctx), Op.READ_V3),
    Step("hgfs-legacy-getattr", "HGFS GetattrV3 with the legacy header",
         lambda ctx: hgfs.encode_request(Header(Op.GETATTR_V3, 9), hgfs.NameRequest(ctx.name("hello.txt"))),
         Op.GETATTR_V3),
    Step("hgfs-short-body", "HGFS ReadV3 with its fields cut short (sizes consistent)",
         lambda ctx: hgfs.encode_packet(Header(Op.READ_V3, 11, ctx.session), hgfs.ReadRequest(0, 0, 0).encode()[:10],
                                        reply=False), Op.READ_V3),
    Step("hgfs-size-beyond-data", "HGFS ReadV3 whose header claims more bytes than sent",
         lambda ctx: _v4(Op.READ_V3, hgfs.ReadRequest(0, 0, 0), ctx)[:-10], Op.READ_V3),
    Step("hgfs-legacy-garbage", "HGFS 8 bytes naming op 200 (no such op)",
         lambda ctx: struct.pack("<II", 12, 200), Op.READ_V3),
    Step("hgfs-destroy-session", "HGFS DestroySessionV4",
         lambda ctx: _v4(Op.DESTROY_SESSION_V4, hgfs.Reserved(), ctx), Op.DESTROY_SESSION_V4),
)


async def run_steps(send: Callable[[bytes], Awaitable[bytes]], root: str) -> dict[str, str]:
    """Every step against one guest (``send`` delivers a TCLO command, returns the reply)."""
    make_tree(root)
    ctx = Context(root)
    results: dict[str, str] = {}
    for step in STEPS:
        packets = step.request(ctx)
        if isinstance(packets, list):
            shown = [summary(step, await _send(send, HGFS_PREFIX + packet))[0] for packet in packets]
            results[step.name] = "; ".join(sorted(shown))
            continue
        command = HGFS_COMMAND if packets is None else HGFS_PREFIX + packets
        text, message = summary(step, await _send(send, command))
        results[step.name] = text
        if message is not None:
            step.after(ctx, message)
    return results


async def _send(send: Callable[[bytes], Awaitable[bytes]], command: bytes) -> bytes:
    try:
        return await send(command)
    except Exception as error:
        return f"no reply ({type(error).__name__})".encode()


def summary(step: Step, reply: bytes) -> tuple[str, object | None]:
    """What is compared of a reply; and the decoded reply, for the step's ``after``."""
    if not reply.startswith(OK_PREFIX):
        return repr(reply.decode("utf-8", "replace")), None
    packet = reply[len(OK_PREFIX) :]
    try:
        head, body = hgfs.decode_reply_header(packet, step.op)
    except hgfs.HGFSError:
        return f"OK, {len(packet)} bytes, not an HGFS reply", None
    form = "legacy" if head.legacy else "V4"
    status = Status(head.status).name if head.status in Status._value2member_map_ else str(head.status)
    if head.status != Status.SUCCESS:
        return f"{form} {status}", None
    try:
        message = hgfs.decode_reply_body(step.op, body)
    except hgfs.HGFSError as error:
        return f"{form} SUCCESS, undecodable: {error}", None
    return f"{form} SUCCESS{_fields(message, head)}", message


def _fields(message: object, head: Header) -> str:
    if isinstance(message, hgfs.CreateSessionReply):
        sid = "all-ones" if head.session_id == hgfs.INVALID_SESSION_ID else "other"
        return f", header session {sid}, max packet {message.max_packet_size}, flags {message.flags}"
    if isinstance(message, hgfs.GetattrReply):
        a = message.attr
        kind = hgfs.FileType(a.type).name if a.type in hgfs.FileType._value2member_map_ else a.type
        size = f", size {a.size}" if a.type != hgfs.FileType.DIRECTORY else ""
        return f", {kind}{size}, perms {a.owner_perms}{a.group_perms}{a.other_perms}"
    if isinstance(message, hgfs.ReadReply):
        return f", data {bytes(message.data)!r}"
    if isinstance(message, hgfs.WriteReply):
        return f", wrote {message.written}"
    if isinstance(message, hgfs.SearchReadReply):
        if message.end:
            return ", end"
        entry = message.entries[0]
        kind = hgfs.FileType(entry.attr.type).name if entry.attr.type in hgfs.FileType._value2member_map_ else "?"
        return f", {entry.name.decode('utf-8', 'replace')!r} {kind}"
    return ""
