"""The guest's HGFS server, driven packet by packet (and by the VMX's client) in memory."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.task import Clock

from tests.support import failure_of, result_of
from twisted_vmtools.codecs import hgfs
from twisted_vmtools.codecs.hgfs import FileNameV3, Header, Op, OpenFlags, OpenMode, Status
from twisted_vmtools.guest.hgfs_files import TEMP_MARK, UploadJournal, is_upload_temp
from twisted_vmtools.guest.hgfs_server import NO_ARGUMENT, HGFSServer
from twisted_vmtools.protocols.tclo import TCLODispatcher, TCLOHandlerError
from twisted_vmtools.vmx.hgfs_client import HGFSClient, HGFSClientError, tclo_sender


def make_server(tmp_path: Path, **options: Any) -> tuple[HGFSServer, Clock]:
    clock = Clock()
    journal = UploadJournal(str(tmp_path / "journal"))
    return HGFSServer(clock, journal=journal, **options), clock


def client_of(server: HGFSServer, **options: Any) -> HGFSClient:
    client = HGFSClient(lambda packet: maybeDeferred(server.packet, packet), **options)  # type: ignore[call-overload]
    result_of(ensureDeferred(client.start()))
    return client


def run(coroutine: Any) -> Any:
    return result_of(ensureDeferred(coroutine))


def call(server: HGFSServer, header: Header, message: Any) -> tuple[Header, Any]:
    reply = server.packet(hgfs.encode_request(header, message))
    if isinstance(reply, Deferred):
        reply = result_of(reply)
    head, body = hgfs.decode_reply_header(reply, header.op)
    return head, (hgfs.decode_reply_body(header.op, body) if head.status == Status.SUCCESS else body)


def name(path: Path | str) -> FileNameV3:
    return FileNameV3(hgfs.cpname(str(path)))


def upload(client: HGFSClient, path: Path, data: bytes, **options: Any) -> int:
    chunks = [data[i : i + client.io_size] for i in range(0, len(data), client.io_size)]
    feed = iter(chunks)
    return run(client.upload(str(path), lambda n: next(feed, b""), **options))  # type: ignore[no-any-return]


def download(client: HGFSClient, path: Path) -> bytes:
    parts: list[bytes] = []
    run(client.download(str(path), parts.append))
    return b"".join(parts)


@pytest.mark.parametrize("size", [0, 1, hgfs.LARGE_IO_MAX - 1, hgfs.LARGE_IO_MAX, hgfs.LARGE_IO_MAX + 1, 3_000_000])
def test_upload_download_round_trip(tmp_path: Path, size: int) -> None:
    server, _ = make_server(tmp_path)
    client = client_of(server)
    data = os.urandom(size)
    assert upload(client, tmp_path / "f", data) == size
    assert hashlib.sha256((tmp_path / "f").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert download(client, tmp_path / "f") == data
    assert not [p for p in tmp_path.iterdir() if TEMP_MARK in p.name]


@pytest.mark.parametrize("size", [hgfs.LEGACY_LARGE_PACKET_MAX - 77 - 1, hgfs.LEGACY_LARGE_PACKET_MAX - 77 + 1])
def test_legacy_packet_size_transfers(tmp_path: Path, size: int) -> None:
    server, _ = make_server(tmp_path)
    client = client_of(server, max_packet=hgfs.LEGACY_LARGE_PACKET_MAX)
    assert client.io_size == hgfs.LEGACY_LARGE_PACKET_MAX - 77
    data = os.urandom(size)
    upload(client, tmp_path / "f", data)
    assert download(client, tmp_path / "f") == data


def test_overwrite_refused_without_the_flag(tmp_path: Path) -> None:
    server, _ = make_server(tmp_path)
    client = client_of(server)
    (tmp_path / "f").write_bytes(b"old")
    with pytest.raises(HGFSClientError) as caught:
        upload(client, tmp_path / "f", b"new")
    assert caught.value.status == Status.FILE_EXISTS
    assert (tmp_path / "f").read_bytes() == b"old"
    upload(client, tmp_path / "f", b"new", overwrite=True)
    assert (tmp_path / "f").read_bytes() == b"new"


def test_upload_keeps_requested_mode(tmp_path: Path) -> None:
    server, _ = make_server(tmp_path)
    upload(client_of(server), tmp_path / "x", b"#!/bin/sh\n", permissions=0o751)
    assert (tmp_path / "x").stat().st_mode & 0o7777 == 0o751


def cut_off_upload(tmp_path: Path) -> tuple[HGFSServer, Clock, HGFSClient, int]:
    server, clock = make_server(tmp_path, idle_timeout=60)
    (tmp_path / "f").write_bytes(b"the old file")
    client = client_of(server)
    handle = run(client.open(str(tmp_path / "f"), OpenMode.WRITE_ONLY, OpenFlags.CREATE_EMPTY, 0o600))
    run(client.write(handle, 0, b"half of the new"))
    assert [p.name for p in tmp_path.iterdir() if TEMP_MARK in p.name]
    return server, clock, client, handle


def no_temporaries(tmp_path: Path) -> bool:
    return not [p for p in tmp_path.iterdir() if is_upload_temp(p.name)] and not list((tmp_path / "journal").iterdir())


def test_cut_off_by_idle_expiry(tmp_path: Path) -> None:
    server, clock, client, handle = cut_off_upload(tmp_path)
    clock.advance(59)
    assert server.sessions
    clock.advance(2)
    assert not server.sessions
    assert (tmp_path / "f").read_bytes() == b"the old file"
    assert no_temporaries(tmp_path)
    with pytest.raises(HGFSClientError) as caught:
        run(client.write(handle, 15, b"more"))
    assert caught.value.status == Status.STALE_SESSION


def test_cut_off_by_session_end_and_stop(tmp_path: Path) -> None:
    server, _, client, _ = cut_off_upload(tmp_path)
    run(client.stop())
    assert (tmp_path / "f").read_bytes() == b"the old file" and no_temporaries(tmp_path)
    server, _, client, _ = cut_off_upload(tmp_path)
    server.stop()
    assert (tmp_path / "f").read_bytes() == b"the old file" and no_temporaries(tmp_path)


def test_cut_off_by_a_crash_is_cleaned_at_the_next_start(tmp_path: Path) -> None:
    server, _, client, _ = cut_off_upload(tmp_path)
    # The tools die: nothing runs.  The next start finds the journal.
    (tmp_path / "bystander.vmtools-upload-x").write_bytes(b"not ours")
    restarted, _ = make_server(tmp_path)
    restarted.install(TCLODispatcher())
    assert (tmp_path / "f").read_bytes() == b"the old file"
    assert no_temporaries(tmp_path)
    assert (tmp_path / "bystander.vmtools-upload-x").exists()


def test_a_name_that_is_not_utf8_is_uploaded_and_journaled(tmp_path: Path) -> None:
    server, _ = make_server(tmp_path)
    client = client_of(server)
    path = os.fsdecode(bytes(tmp_path) + b"/caf\xe9")
    handle = run(client.open(path, OpenMode.WRITE_ONLY, OpenFlags.CREATE_EMPTY, 0o600))
    (entry,) = (tmp_path / "journal").iterdir()  # the temporary noted for a restart, by its bytes
    assert os.fsdecode(entry.read_bytes()).startswith(os.fsdecode(bytes(tmp_path) + b"/.caf\xe9."))
    run(client.write(handle, 0, b"data"))
    run(client.close(handle))
    assert Path(path).read_bytes() == b"data" and no_temporaries(tmp_path)


def test_sparse_file_past_4_gib(tmp_path: Path) -> None:
    server, _ = make_server(tmp_path)
    client = client_of(server)
    path = str(tmp_path / "big")
    far = (5 << 30) + 12345
    handle = run(client.open(path, OpenMode.WRITE_ONLY, OpenFlags.CREATE_SAFE, 0o600))
    run(client.write(handle, far, b"beyond four gigabytes"))
    run(client.write(handle, 7, b"near"))
    run(client.close(handle))
    assert os.path.getsize(path) == far + 21
    handle = run(client.open(path, OpenMode.READ_ONLY))
    assert run(client.read(handle, far + 7, 100)) == b"four gigabytes"
    assert run(client.read(handle, 7, 4)) == b"near"
    assert run(client.read(handle, (4 << 30) + 1, 3)) == b"\0\0\0"
    run(client.close(handle))
    assert run(client.getattr(path)).size == far + 21


def test_write_in_place_keeps_the_rest(tmp_path: Path) -> None:
    server, _ = make_server(tmp_path)
    client = client_of(server)
    (tmp_path / "f").write_bytes(b"0123456789")
    handle = run(client.open(str(tmp_path / "f"), OpenMode.READ_WRITE, OpenFlags.OPEN))
    run(client.write(handle, 3, b"abc"))
    assert run(client.read(handle, 0, 100)) == b"012abc6789"
    run(client.close(handle))


def test_sessions_are_limited_and_checked(tmp_path: Path) -> None:
    server, _ = make_server(tmp_path, max_sessions=2)
    client_of(server), client_of(server)
    with pytest.raises(HGFSClientError) as caught:
        client_of(server)
    assert caught.value.status == Status.TOO_MANY_SESSIONS
    head, _ = call(server, Header(Op.GETATTR_V3, 1, 12345), hgfs.NameRequest(name(tmp_path)))
    assert head.status == Status.STALE_SESSION


def test_create_session_reply_is_vmtoolsds(tmp_path: Path) -> None:
    server, _ = make_server(tmp_path, random_id=lambda: 77)
    head, reply = call(server, Header(Op.CREATE_SESSION_V4, 5, 0), hgfs.CreateSessionRequest(65536))
    assert head.session_id == hgfs.INVALID_SESSION_ID and head.flags == hgfs.FLAG_REPLY
    assert reply.session_id == 77 and reply.max_packet_size == 65536
    assert {c.op for c in reply.capabilities} >= {Op.OPEN_V3, Op.READ_V3, Op.SEARCH_READ_V3}


def test_handles_belong_to_their_session(tmp_path: Path) -> None:
    server, _ = make_server(tmp_path)
    (tmp_path / "f").write_bytes(b"data")
    one, two = client_of(server), client_of(server)
    handle = run(one.open(str(tmp_path / "f"), OpenMode.READ_ONLY))
    with pytest.raises(HGFSClientError) as caught:
        run(two.read(handle, 0, 4))
    assert caught.value.status == Status.INVALID_HANDLE
    assert run(one.read(handle, 0, 4)) == b"data"


def test_legacy_header_session(tmp_path: Path) -> None:
    server, _ = make_server(tmp_path)
    (tmp_path / "f").write_bytes(b"legacy")
    head, opened = call(server, Header(Op.OPEN_V3, 1), hgfs.OpenRequest(name(tmp_path / "f")))
    assert head.legacy and head.status == Status.SUCCESS
    _, read = call(server, Header(Op.READ_V3, 2), hgfs.ReadRequest(opened.handle, 0, 100))
    assert read.data == b"legacy"
    head, _ = call(server, Header(Op.CLOSE, 3), hgfs.LegacyCloseRequest(opened.handle))
    assert head.status == Status.SUCCESS
    head, _ = call(server, Header(Op.CLOSE, 4), hgfs.LegacyCloseRequest(opened.handle))
    assert head.status == Status.INVALID_HANDLE


def test_getattr_setattr(tmp_path: Path) -> None:
    server, _ = make_server(tmp_path)
    client = client_of(server)
    (tmp_path / "f").write_bytes(b"12345")
    os.symlink("f", tmp_path / "link")
    attr = run(client.getattr(str(tmp_path / "f")))
    assert (attr.type, attr.size, attr.mode) == (hgfs.FileType.REGULAR, 5, (tmp_path / "f").stat().st_mode & 0o7777)
    assert attr.mask == 0x2FBFF
    assert hgfs.unix_ns(attr.write_time) // 1000 == (tmp_path / "f").stat().st_mtime_ns // 1000
    assert run(client.getattr(str(tmp_path))).type == hgfs.FileType.DIRECTORY
    _, reply = call(server, Header(Op.GETATTR_V3, 1, client.session_id), hgfs.NameRequest(name(tmp_path / "link")))
    assert reply.attr.type == hgfs.FileType.SYMLINK and reply.symlink_target.name == b"f"
    new = hgfs.AttrV2(
        mask=hgfs.ATTR_VALID_OWNER_PERMS | hgfs.ATTR_VALID_GROUP_PERMS | hgfs.ATTR_VALID_OTHER_PERMS
        | hgfs.ATTR_VALID_WRITE_TIME | hgfs.ATTR_VALID_SIZE,
        owner_perms=6, group_perms=4, other_perms=0, write_time=hgfs.nt_time(1_600_000_000 * 10**9), size=2,
    )
    run(client.setattr(str(tmp_path / "f"), new))
    info = (tmp_path / "f").stat()
    assert (info.st_mode & 0o777, info.st_mtime, info.st_size) == (0o640, 1_600_000_000, 2)
    head, _ = call(server, Header(Op.SETATTR_V2, 1, client.session_id), hgfs.SetattrV2Request(b"root\0nowhere", new))
    assert head.status == Status.NO_SUCH_FILE_OR_DIR


def test_directories_rename_delete_search_volume(tmp_path: Path) -> None:
    server, _ = make_server(tmp_path)
    client = client_of(server)
    sid = client.session_id

    def op(operation: int, message: Any) -> Any:
        head, reply = call(server, Header(operation, 1, sid), message)
        return head.status, reply

    assert op(Op.CREATE_DIR_V3, hgfs.CreateDirRequest(name(tmp_path / "d"), owner_perms=7, group_perms=5,
              mask=0xF | hgfs.CREATE_DIR_VALID_FILE_NAME))[0] == Status.SUCCESS
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750
    (tmp_path / "d" / "b").write_bytes(b"bb")
    (tmp_path / "d" / "a").write_bytes(b"a")
    assert op(Op.CREATE_DIR_V3, hgfs.CreateDirRequest(name(tmp_path / "d")))[0] == Status.FILE_EXISTS
    listing = run(client.listdir(str(tmp_path / "d")))
    assert [(n, a.size) for n, a in listing if n not in (".", "..")] == [("a", 1), ("b", 2)]
    assert [n for n, _ in listing[:2]] == [".", ".."]
    assert op(Op.DELETE_DIR_V3, hgfs.NameRequest(name(tmp_path / "d")))[0] == Status.DIR_NOT_EMPTY
    rename = hgfs.RenameRequest(name(tmp_path / "d" / "a"), name(tmp_path / "d" / "b"),
                                hgfs.RENAME_HINT_NO_REPLACE_EXISTING)
    assert op(Op.RENAME_V3, rename)[0] == Status.FILE_EXISTS
    assert op(Op.RENAME_V3, hgfs.RenameRequest(rename.old, name(tmp_path / "d" / "c")))[0] == Status.SUCCESS
    assert sorted(os.listdir(tmp_path / "d")) == ["b", "c"]
    assert op(Op.DELETE_FILE_V3, hgfs.NameRequest(name(tmp_path / "d")))[0] == Status.ACCESS_DENIED
    for leaf in ("b", "c"):
        assert op(Op.DELETE_FILE_V3, hgfs.NameRequest(name(tmp_path / "d" / leaf)))[0] == Status.SUCCESS
    assert op(Op.DELETE_DIR_V3, hgfs.NameRequest(name(tmp_path / "d")))[0] == Status.SUCCESS
    status, volume = op(Op.QUERY_VOLUME_INFO_V3, hgfs.ReservedNameRequest(name(tmp_path)))
    assert status == Status.SUCCESS and 0 < volume.free_bytes <= volume.total_bytes
    assert op(Op.SEARCH_READ_V3, hgfs.SearchReadRequest(999, 0))[0] == Status.INVALID_HANDLE


def test_errors_are_statuses(tmp_path: Path) -> None:
    server, _ = make_server(tmp_path)
    client = client_of(server)
    for path, status in ((tmp_path / "missing", Status.NO_SUCH_FILE_OR_DIR), (tmp_path, Status.ACCESS_DENIED)):
        with pytest.raises(HGFSClientError) as caught:
            run(client.open(str(path), OpenMode.READ_WRITE))
        assert caught.value.status == status
    head, _ = call(server, Header(Op.GETATTR_V3, 1, client.session_id), hgfs.NameRequest(FileNameV3(b"root\0..\0x")))
    assert head.status == Status.PROTOCOL_ERROR
    head, _ = call(server, Header(Op.CREATE_SYMLINK_V3, 1, client.session_id), hgfs.Reserved())
    assert head.status == Status.OPERATION_NOT_SUPPORTED


@pytest.mark.parametrize(
    "packet",
    [
        b"\x01",
        b"\x07\0\0\0",
        struct.pack("<II", 9, 200),  # op beyond the V3 range in a legacy header
        struct.pack("<II", 9, Op.READ_V3) + b"\0" * 5,  # ReadV3 fields cut short
        struct.pack("<II", 9, Op.OPEN_V3) + b"\xff" * 200,  # a name longer than the packet
    ],
)
def test_malformed_packets_get_an_error_status(tmp_path: Path, packet: bytes) -> None:
    server, _ = make_server(tmp_path)
    reply = server.packet(packet)
    assert isinstance(reply, bytes)
    request_id = struct.unpack_from("<I", packet.ljust(4, b"\0"))[0] if len(packet) >= 4 else 0
    assert struct.unpack("<II", reply[:8]) == (request_id, Status.PROTOCOL_ERROR)


def test_v4_packet_size_beyond_the_data(tmp_path: Path) -> None:
    server, _ = make_server(tmp_path)
    packet = bytearray(hgfs.encode_request(Header(Op.GETATTR_V3, 4, 1), hgfs.NameRequest(name(tmp_path))))
    struct.pack_into("<I", packet, 8, len(packet) + 100)
    head, _ = hgfs.decode_reply_header(server.packet(bytes(packet)), Op.GETATTR_V3)  # type: ignore[arg-type]
    assert (head.request_id, head.status) == (4, Status.PROTOCOL_ERROR)


def test_tclo_command(tmp_path: Path) -> None:
    server, _ = make_server(tmp_path)
    dispatcher = TCLODispatcher()
    server.install(dispatcher)
    assert result_of(dispatcher.handle(b"f")) == b"ERROR " + NO_ARGUMENT
    packet = hgfs.encode_request(Header(Op.CREATE_SESSION_V4, 1, 0), hgfs.CreateSessionRequest())
    reply = result_of(dispatcher.handle(b"f " + packet))
    assert reply.startswith(b"OK ") and hgfs.decode_reply_header(reply[3:], Op.CREATE_SESSION_V4)[0].status == 0
    failure_of(maybeDeferred(server.command, b"")).trap(TCLOHandlerError)


def test_handles_per_session_are_limited(tmp_path: Path) -> None:
    server, _ = make_server(tmp_path, max_handles=3)
    (tmp_path / "f").write_bytes(b"x")
    client = client_of(server)
    handles = [run(client.open(str(tmp_path / "f"), OpenMode.READ_ONLY)) for _ in range(3)]
    with pytest.raises(HGFSClientError) as caught:
        run(client.open(str(tmp_path / "f"), OpenMode.READ_ONLY))
    assert caught.value.status == Status.GENERIC_ERROR
    run(client.close(handles[0]))
    run(client.open(str(tmp_path / "f"), OpenMode.READ_ONLY))  # a closed handle frees its place
    assert len(set(handles)) == 3


def test_round_trip_through_tclo_and_the_dispatcher(tmp_path: Path) -> None:
    """The VMX's `tclo_sender` (packets joined behind ``f ``) and the guest's dispatcher (replies joined behind OK)."""
    server, _ = make_server(tmp_path)
    dispatcher = TCLODispatcher()
    server.install(dispatcher)
    commands: list[bytes] = []

    def send_tclo(command: bytes) -> Deferred[bytes]:
        commands.append(command[:2])
        return dispatcher.handle(command)

    client = HGFSClient(tclo_sender(send_tclo))
    result_of(ensureDeferred(client.start()))
    data = os.urandom(2 * hgfs.LARGE_IO_MAX + 5)
    assert upload(client, tmp_path / "t", data) == len(data)
    assert download(client, tmp_path / "t") == data
    assert set(commands) == {b"f "}
