"""The Vix codec: requests, bodies, credentials, replies and results round-trip; garbage is a VixCodecError."""

from __future__ import annotations

import base64
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_vmtools.codecs import vix

text = st.text(st.characters(exclude_characters="\0", exclude_categories=["Cs"]), max_size=40)
i32 = st.integers(-(2**31), 2**31 - 1)
u32 = st.integers(0, 2**31 - 1)

bodies = st.one_of(
    st.builds(vix.ListFiles, text.filter(bool), st.none() | text.filter(bool), i32, i32, st.integers(0, 2**63), i32),
    st.builds(vix.PathRequest, text, st.booleans(), i32, st.binary(max_size=20)),
    st.builds(vix.SimpleFile, text, i32),
    st.builds(vix.Move, text, text, st.booleans(), i32, st.binary(max_size=20)),
    st.builds(vix.CreateTemporary, text, text, text, i32, st.binary(max_size=20)),
    st.builds(vix.SetAttributes, text, i32, st.integers(-(2**63), 2**63 - 1), st.integers(-(2**63), 2**63 - 1),
              i32, i32, i32, st.booleans(), st.booleans()),
    st.builds(vix.StartProgram, text.filter(bool), st.none() | text, st.none() | text,
              st.lists(text, max_size=5).map(tuple), st.booleans()),
    st.builds(vix.ListProcesses, st.lists(st.integers(-(2**63), 2**63 - 1), max_size=10).map(tuple), u32, u32),
    st.builds(vix.KillProcess, st.integers(-(2**63), 2**63 - 1), u32),
    st.builds(vix.ReadEnvironment, st.lists(text, max_size=5).map(tuple)),
    st.builds(vix.TransferToGuest, text, st.booleans(), i32),
)


@given(bodies)
def test_bodies_round_trip(body: vix.Body) -> None:
    for op in body.OPS:
        assert vix.decode_body(op, body.encode()) == body


@given(bodies, st.none() | st.builds(vix.Credentials, text, text))
def test_requests_round_trip(body: vix.Body, credentials: vix.Credentials | None) -> None:
    request = vix.build_request(body.OPS[0], body, credentials, cookie=7)
    decoded = vix.decode_request(request.encode())
    assert decoded == request
    assert vix.decode_body(decoded.op, decoded.body) == body
    if credentials is not None:
        assert vix.decode_credentials(decoded.credential_type, decoded.credential) == credentials


@given(st.binary(max_size=200))
def test_garbage_is_only_ever_a_codec_error(data: bytes) -> None:
    for candidate in (data, vix.Request(op=vix.Op.LIST_FILES, body=data).encode()):
        try:
            request = vix.decode_request(candidate)
            vix.decode_body(request.op, request.body)
        except vix.VixCodecError as error:
            assert error.code in set(vix.VixCode)


@given(bodies, st.data())
def test_truncated_bodies_are_refused(body: vix.Body, data: st.DataObject) -> None:
    encoded = body.encode()
    cut = data.draw(st.integers(0, max(0, len(encoded) - 1)))
    if cut == len(encoded) or isinstance(body, vix.NoBody):
        return
    with pytest.raises(vix.VixCodecError):
        vix.decode_body(body.OPS[0], encoded[:cut])


@given(st.integers(0, 50), st.binary(max_size=200))
def test_any_body_bytes_for_any_op_are_decoded_or_refused(op_index: int, data: bytes) -> None:
    op = list(vix.BODIES)[op_index % len(vix.BODIES)]
    try:
        vix.decode_body(op, data)
    except vix.VixCodecError:
        pass


def test_header_layout_is_vmtoolsds() -> None:
    request = vix.build_request(vix.Op.DELETE_GUEST_FILE_EX, vix.SimpleFile("/tmp/x"), vix.Credentials("user", "pass"))
    raw = request.encode()
    magic, version, total, header, body, cred, flags, op = struct.unpack_from("<IHIIIIBI", raw)
    assert (magic, version, header, flags, op) == (0xD00D0001, 5, 51, 1, 194)
    assert total == len(raw) == 51 + body + cred
    # the credential: two lengths, then base64("user\0pass\0") and a NUL (protocol.md §7.2)
    assert raw[51 + body :] == struct.pack("<II", 4, 4) + base64.b64encode(b"user\0pass\0") + b"\0"
    # DeleteGuestFileEx body: options, length without the NUL, then the path and its NUL
    assert raw[51 : 51 + body] == struct.pack("<iI", 0, 6) + b"/tmp/x\0"


def test_start_program_strings_count_their_nul() -> None:
    raw = vix.StartProgram("/bin/true", "-x", None, ("A=1", "B=2")).encode()
    assert struct.unpack_from("<BIIIII", raw) == (0, 10, 3, 0, 2, 8)
    assert raw[21:] == b"/bin/true\0-x\0A=1\0B=2\0"


@pytest.mark.parametrize(
    "mutate, code",
    [
        (lambda raw: b"\0" + raw[1:], vix.VixCode.INVALID_MESSAGE_HEADER),
        (lambda raw: raw[:-1], vix.VixCode.INVALID_MESSAGE_BODY),
        (lambda raw: raw[:30], vix.VixCode.INVALID_MESSAGE_BODY),
        (lambda raw: raw[:6] + struct.pack("<I", len(raw) + 1) + raw[10:], vix.VixCode.INVALID_MESSAGE_HEADER),
        (lambda raw: raw[:4] + struct.pack("<H", 4) + raw[6:], vix.VixCode.INVALID_MESSAGE_HEADER),
        (lambda raw: raw[:20], vix.VixCode.INVALID_MESSAGE_HEADER),
    ],
)
def test_bad_headers(mutate: object, code: int) -> None:
    raw = vix.build_request(vix.Op.LIST_FILES, vix.ListFiles("/")).encode()
    with pytest.raises(vix.VixCodecError) as caught:
        vix.decode_request(mutate(raw))  # type: ignore[operator]
    assert caught.value.code == code


def test_bytes_beyond_the_total_are_ignored_as_vmtoolsd_ignores_them() -> None:
    request = vix.build_request(vix.Op.LIST_FILES, vix.ListFiles("/"))
    assert vix.decode_request(request.encode() + b"\0") == request


def test_unknown_opcode_is_unrecognized() -> None:
    with pytest.raises(vix.VixCodecError) as caught:
        vix.decode_body(999, b"")
    assert caught.value.code == vix.VixCode.UNRECOGNIZED_COMMAND_IN_GUEST


def test_credentials_of_other_types_are_not_supported() -> None:
    with pytest.raises(vix.VixCodecError) as caught:
        vix.decode_credentials(vix.CredentialType.TICKETED_SESSION, b"\0" * 12)
    assert caught.value.code == vix.VixCode.NOT_SUPPORTED


def test_credentials_repr_hides_the_password() -> None:
    assert "secret" not in repr(vix.Credentials("u", "secret"))


def test_relayed_command_framing() -> None:
    command = vix.relayed_command(b"REQ", b"name-1")
    assert command == b'Vix_1_Relayed_Command "name-1"\0REQ'
    assert vix.split_relayed(command[len(b"Vix_1_Relayed_Command ") :]) == (b"name-1", b"REQ")
    with pytest.raises(vix.VixCodecError):
        vix.split_relayed(b'"no nul"')


def test_reply_forms() -> None:
    assert vix.Reply(0, 0, b"1234").encode() == b"0 0 1234\0"
    assert vix.Reply(3050, 0).encode() == b"3050 0 \0"
    assert vix.Reply(0, 0, b"\x01\0\x02", binary=True).encode() == b"0 0 \x01\0\x02"
    assert vix.decode_reply(b"-1 2 abc\0") == vix.Reply(-1, 2, b"abc")
    with pytest.raises(vix.VixCodecError):
        vix.decode_reply(b"Unknown Command")


@given(st.lists(st.builds(vix.FileInfo, text, st.sampled_from([0, 1, 2, 3]), st.integers(0, 2**40),
                          st.integers(0, 2**33), st.integers(0, 2**33), u32, u32, u32, text), max_size=5),
       st.integers(0, 10**6), st.booleans())
def test_file_listing_round_trip(files: list[vix.FileInfo], remaining: int, truncated: bool) -> None:
    listing = vix.FileListing(tuple(files), remaining, truncated)
    assert vix.decode_file_listing(listing.encode()) == listing


def test_file_names_are_escaped() -> None:
    encoded = vix.FileInfo('a<b>&"%\'').encode()
    assert "<Name>a%3Cb%3E%26%22%25%27</Name>" in encoded


@given(st.lists(st.builds(vix.ProcessInfo, st.integers(0, 2**40), text, text, st.integers(0, 2**33),
                          st.none() | text, i32, st.integers(0, 2**33)), max_size=5))
def test_processes_round_trip(processes: list[vix.ProcessInfo]) -> None:
    assert vix.decode_processes("".join(p.encode() for p in processes)) == processes


@given(st.lists(text, max_size=5))
def test_environment_round_trip(entries: list[str]) -> None:
    assert vix.decode_environment(vix.encode_environment(entries)) == entries


def test_process_pages() -> None:
    first = vix.ProcessPage(b"<proc>", 10, key=3, total_size=16)
    assert vix.decode_process_page(first.encode()) == first
    later = vix.ProcessPage(b"</proc>", 0)
    assert vix.decode_process_page(later.encode()) == later
    assert vix.decode_process_page(b"<proc></proc>") is None


def test_property_list_bytes() -> None:
    # protocol.md / toolbox-behaviour.md §6.7 example bytes
    encoded = vix.encode_properties([
        (4503, vix.PropertyType.STRING, "linux-amd64"),
        (4502, vix.PropertyType.INTEGER, 1),
        (4540, vix.PropertyType.BOOL, True),
    ])
    assert encoded == (
        bytes.fromhex("97110000 02000000 0c000000") + b"linux-amd64\0"
        + bytes.fromhex("96110000 01000000 04000000 01000000")
        + bytes.fromhex("bc110000 03000000 01000000 01")
    )
    assert vix.decode_properties(encoded) == {4503: "linux-amd64", 4502: 1, 4540: True}


@given(st.binary(max_size=100))
def test_property_garbage(data: bytes) -> None:
    try:
        vix.decode_properties(data)
    except vix.VixCodecError:
        pass


def test_fault_names() -> None:
    assert vix.fault_name(vix.VixCode.FILE_NOT_FOUND) == "FileNotFound"
    assert vix.fault_name(vix.VixCode.INVALID_LOGIN_CREDENTIALS) == "InvalidGuestLogin"
    assert vix.fault_name(424242) == "GuestOperationsFault"


def test_text_that_is_not_utf8_is_refused_or_listed_as_vmtoolsd_does() -> None:
    # From a command line or the file system, bytes that are not UTF-8 arrive as surrogate escapes.
    for body, credentials in [(vix.PathRequest("/tmp/caf\udce9"), vix.Credentials("user", "pass")),
                              (vix.SimpleFile("/tmp/x"), vix.Credentials("us\udcffer", "pass"))]:
        with pytest.raises(vix.VixCodecError) as refused:
            vix.build_request(vix.Op.CREATE_DIRECTORY_EX, body, credentials)
        assert refused.value.code == vix.VixCode.INVALID_ARG and "is not UTF-8" in str(refused.value)
    listing = vix.FileListing((vix.FileInfo("caf\udce9"), vix.FileInfo("link", symlink_target="\udcff"))).encode()
    assert [(f.name, f.symlink_target) for f in vix.decode_file_listing(listing).files] == [
        ("\ufffd\ufffd\ufffd", ""), ("link", "\ufffd\ufffd\ufffd")
    ]


@pytest.mark.parametrize("body", [vix.HgfsPacket(b"\x01\x02" * 100, 7), vix.ListFiles("/tmp", "x", 1, 2),
                                  vix.TransferToGuest("/a", True)])
@pytest.mark.parametrize("login", [None, vix.Credentials("u", "p")])
def test_a_relayed_request_in_one_join_is_the_same_bytes(body: vix.Body, login: vix.Credentials | None) -> None:
    op = body.OPS[0]
    joined = vix.relayed_request(op, body, login, cookie=9, name=b"9")
    assert joined == vix.relayed_command(vix.build_request(op, body, login, cookie=9).encode(), b"9")


def test_a_binary_reply_in_pieces_is_the_same_bytes_with_its_data_uncopied() -> None:
    data = memoryview(b"0123456789")[2:]
    pieces = vix.Reply(0, 0, binary=True, marked=True).pieces([b"hdr", data])
    assert b"".join(pieces) == vix.Reply(0, 0, b"hdr23456789", binary=True, marked=True).encode() == b"0 0 #hdr23456789"
    assert pieces[-1] is data
    assert b"".join(vix.Reply(0, 0, b"x", binary=True).pieces([b"y"])) == b"0 0 xy"
    assert b"".join(vix.Reply(5, 2, b"text").pieces()) == b"5 2 text\0"
    with pytest.raises(vix.VixCodecError):
        vix.Reply(0, 0, b"text").pieces([b"more"])  # a string result comes whole


def test_a_relayed_command_split_from_a_view_keeps_its_request_a_view() -> None:
    command = b'"name-1"\0' + b"R" * 1000
    name, request = vix.split_relayed(memoryview(command))
    assert name == b"name-1" and request.obj is command and request == command[9:]
    with pytest.raises(vix.VixCodecError):
        vix.split_relayed(memoryview(b'"no nul"'))


def test_a_binary_relayed_reply_is_a_view_after_its_mark() -> None:
    reply = vix.decode_reply(b"0 0 #\x00\x01rest", binary=True, marked=True)
    assert isinstance(reply.result, memoryview) and bytes(reply.result) == b"\x00\x01rest"
    assert vix.decode_reply(b"3015 0 #", binary=True, marked=True).error == 3015
