"""The HGFS codec: headers in both forms, every op's messages, and garbage."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_vmtools.codecs import hgfs
from twisted_vmtools.codecs.hgfs import (
    AttrV2,
    FileNameV3,
    Header,
    HGFSError,
    HGFSMalformedError,
    HGFSPacketError,
    Op,
)

U8 = st.integers(0, 0xFF)
U32 = st.integers(0, 0xFFFFFFFF)
U64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
NAMES = st.binary(max_size=40)

file_names = st.builds(FileNameV3, NAMES, U32, U32, U32)
attrs = st.builds(AttrV2, *([U64, U32] + [U64] * 5 + [U8] * 4 + [U64, U64, U32, U32, U64, U32, U32]))
capabilities = st.lists(st.builds(hgfs.Capability, U32, U32), max_size=5).map(tuple)

MESSAGES = {
    "LegacyCloseRequest": st.builds(hgfs.LegacyCloseRequest, U32),
    "Empty": st.just(hgfs.Empty()),
    "GetattrV2Request": st.builds(hgfs.GetattrV2Request, NAMES, U64, U32),
    "GetattrV2Reply": st.builds(hgfs.GetattrV2Reply, attrs, NAMES),
    "SetattrV2Request": st.builds(hgfs.SetattrV2Request, NAMES, attrs, U64, U32),
    "OpenRequest": st.builds(
        hgfs.OpenRequest, file_names, U32, U32, U64, U8, U8, U8, U8, U64, U64, U32, U32, U32
    ),
    "OpenReply": st.builds(hgfs.OpenReply, U32, U32, U32),
    "ReadRequest": st.builds(hgfs.ReadRequest, U32, U64, U32),
    "ReadReply": st.builds(hgfs.ReadReply, st.binary(max_size=300)),
    "WriteRequest": st.builds(hgfs.WriteRequest, U32, U64, st.binary(max_size=300), U8),
    "WriteReply": st.builds(hgfs.WriteReply, U32),
    "CloseRequest": st.builds(hgfs.CloseRequest, U32),
    "Reserved": st.just(hgfs.Reserved()),
    "ReservedNameRequest": st.builds(hgfs.ReservedNameRequest, file_names),
    "SearchOpenReply": st.builds(hgfs.SearchOpenReply, U32),
    "SearchReadRequest": st.builds(hgfs.SearchReadRequest, U32, U32, U32),
    "SearchReadReply": st.builds(
        hgfs.SearchReadReply, st.lists(st.builds(hgfs.DirEntry, NAMES, attrs), max_size=3).map(tuple)
    ),
    "NameRequest": st.builds(hgfs.NameRequest, file_names, U64),
    "GetattrReply": st.builds(hgfs.GetattrReply, attrs, file_names),
    "SetattrRequest": st.builds(hgfs.SetattrRequest, file_names, attrs, U64),
    "CreateDirRequest": st.builds(hgfs.CreateDirRequest, file_names, U64, U8, U8, U8, U8, U64),
    "RenameRequest": st.builds(hgfs.RenameRequest, file_names, file_names, U64),
    "QueryVolumeReply": st.builds(hgfs.QueryVolumeReply, U64, U64),
    "CreateSessionRequest": st.builds(hgfs.CreateSessionRequest, U32, U32, capabilities),
    "CreateSessionReply": st.builds(hgfs.CreateSessionReply, U64, U32, U32, capabilities, U32),
}


def test_every_op_message_has_a_strategy() -> None:
    used = {cls.__name__ for pair in hgfs.MESSAGES.values() for cls in pair}
    assert used == set(MESSAGES)


any_message = st.one_of(*MESSAGES.values())


@given(any_message)
def test_message_round_trip(message: hgfs.Message) -> None:
    assert type(message).decode(message.encode()) == message  # type: ignore[attr-defined]


@given(any_message, st.data())
def test_truncated_message_is_malformed_not_a_crash(message: hgfs.Message, data: st.DataObject) -> None:
    encoded = message.encode()
    if not encoded:
        return
    cut = data.draw(st.integers(0, len(encoded) - 1))
    try:
        type(message).decode(encoded[:cut])  # type: ignore[attr-defined]
    except HGFSMalformedError:
        pass


ops = st.sampled_from(sorted(hgfs.MESSAGES))


@given(op=ops, request_id=U32, session=st.none() | U64, body=st.binary(max_size=64))
def test_request_header_round_trip(op: int, request_id: int, session: int | None, body: bytes) -> None:
    if session is None and op >= hgfs.FIRST_V4_OP:
        return  # V4 ops exist only with the V4 header
    header = Header(op, request_id, session)
    packet = hgfs.encode_packet(header, body, reply=False)
    assert hgfs.decode_request_header(packet) == (header, body)


@given(op=ops, request_id=U32, session=st.none() | U64, status=st.integers(0, 19), body=st.binary(max_size=64))
def test_reply_header_round_trip(op: int, request_id: int, session: int | None, status: int, body: bytes) -> None:
    header = Header(op, request_id, session).reply(status)
    packet = hgfs.encode_packet(header, body, reply=True)
    assert hgfs.decode_reply_header(packet, op) == (header, body)


def test_v4_header_layout_is_vmtoolsds() -> None:
    packet = hgfs.encode_request(Header(Op.CREATE_SESSION_V4, 0x80000000, 0), hgfs.CreateSessionRequest(65536))
    assert len(packet) == 52 + 16
    version, dummy, size, head, rid, op, status, flags = struct.unpack_from("<B3xIIIIIII", packet)
    assert (version, dummy, size, head, rid, op, status, flags) == (1, 0xFF, 68, 52, 0x80000000, 41, 0, 1)


def test_v1_ops_keep_their_inner_header_in_v4_packets() -> None:
    packet = hgfs.encode_request(Header(Op.CLOSE, 7, 42), hgfs.LegacyCloseRequest(5))
    assert packet[52:] == struct.pack("<III", 7, Op.CLOSE, 5)
    legacy = hgfs.encode_request(Header(Op.CLOSE, 7), hgfs.LegacyCloseRequest(5))
    assert legacy == struct.pack("<III", 7, Op.CLOSE, 5)


def test_legacy_v3_request() -> None:
    packet = hgfs.encode_request(Header(Op.READ_V3, 3), hgfs.ReadRequest(9, 5 << 32, 100))
    header, body = hgfs.decode_request_header(packet)
    assert header == Header(Op.READ_V3, 3)
    assert hgfs.decode_request_body(header.op, body) == hgfs.ReadRequest(9, 5 << 32, 100)


def test_cpname() -> None:
    assert hgfs.cpname("/etc/hostname") == b"root\0etc\0hostname"
    assert hgfs.path_of(b"root\0etc\0hostname") == "/etc/hostname"
    assert hgfs.path_of(b"root\0etc\0hostname\0") == "/etc/hostname"
    assert hgfs.path_of(b"root") == "/"
    assert hgfs.path_of(b"root\0srv\0dir?format=tgz") == "/srv/dir?format=tgz"
    for bad in (b"other\0etc", b"root\0..\0etc", b"root\0a\0\0b", b"root\0a/b", b"root\0."):
        with pytest.raises(HGFSMalformedError):
            hgfs.path_of(bad)


def test_nt_time() -> None:
    assert hgfs.nt_time(0) == hgfs.NT_EPOCH_OFFSET
    assert hgfs.unix_ns(hgfs.nt_time(1_700_000_000_123_456_700)) == 1_700_000_000_123_456_700


def test_short_packets_have_no_header() -> None:
    for data in (b"", b"\0", b"1234567"):
        with pytest.raises(HGFSPacketError):
            hgfs.decode_request_header(data)
    with pytest.raises(HGFSPacketError):
        hgfs.decode_request_header(struct.pack("<II", 1, Op.CREATE_SESSION_V4))  # V4 op in a legacy header
    assert hgfs.error_reply(b"\x05\0\0\0xyz") == struct.pack("<II", 5, hgfs.Status.PROTOCOL_ERROR)


def test_v4_size_beyond_data_is_malformed_with_its_header() -> None:
    packet = bytearray(hgfs.encode_request(Header(Op.GETATTR_V3, 1, 9), hgfs.NameRequest(FileNameV3(b"root"))))
    struct.pack_into("<I", packet, 8, len(packet) + 1)  # the Go toolbox panics on this
    with pytest.raises(HGFSMalformedError) as caught:
        hgfs.decode_request_header(bytes(packet))
    assert caught.value.header.session_id == 9  # type: ignore[attr-defined]


def test_unsupported_op() -> None:
    with pytest.raises(hgfs.HGFSUnsupportedOp):
        hgfs.decode_request_body(Op.CREATE_SYMLINK_V3, b"")


@given(st.binary(max_size=300))
def test_garbage_only_raises_hgfs_errors(data: bytes) -> None:
    try:
        header, body = hgfs.decode_request_header(data)
        hgfs.decode_request_body(header.op, body)
    except HGFSError:
        pass
    for op in hgfs.MESSAGES:
        try:
            hgfs.decode_reply_body(op, hgfs.decode_reply_header(data, op)[1])
        except HGFSError:
            pass


@given(op=ops, data=st.binary(max_size=200))
def test_garbage_bodies_only_raise_hgfs_errors(op: int, data: bytes) -> None:
    for decode in (hgfs.decode_request_body, hgfs.decode_reply_body):
        try:
            decode(op, data)
        except HGFSError:
            pass


def test_file_data_is_a_view_into_its_packet_and_names_are_bytes() -> None:
    data = bytes(range(256)) * 2000
    packet = hgfs.encode_request(Header(Op.WRITE_V3, 7, 1), hgfs.WriteRequest(3, 1 << 33, data))
    header, body = hgfs.decode_request_header(packet)
    request = hgfs.decode_request_body(header.op, body)
    assert isinstance(request, hgfs.WriteRequest) and (request.handle, request.offset) == (3, 1 << 33)
    assert isinstance(request.data, memoryview) and request.data.obj is packet and request.data == data
    reply = hgfs.encode_reply(header, hgfs.Status.SUCCESS, hgfs.ReadReply(memoryview(data)[5:]))
    decoded = hgfs.decode_reply_body(Op.READ_V3, hgfs.decode_reply_header(reply, Op.READ_V3)[1])
    assert isinstance(decoded, hgfs.ReadReply) and decoded.data == data[5:]
    opened = hgfs.encode_request(header, hgfs.OpenRequest(hgfs.FileNameV3(b"root\0tmp\0x"), 0, 0))
    name = hgfs.decode_request_body(Op.OPEN_V3, hgfs.decode_request_header(opened)[1]).name.name  # type: ignore[attr-defined]
    assert type(name) is bytes and name == b"root\0tmp\0x"


def test_request_pieces_are_the_request() -> None:
    header = Header(Op.WRITE_V3, 9, 4)
    message = hgfs.WriteRequest(3, 7, b"data" * 100)
    pieces = hgfs.request_pieces(header, message)
    assert b"".join(pieces) == hgfs.encode_request(header, message)
    assert pieces[-1] is message.data  # the file data is not copied before the carrier's join
