"""The vsock packet codec: DataMap entries, whole packets, and the incremental decoder.

Deliberately no ``__init__.py`` in this directory: a package named ``codecs``
would shadow the standard library's ``codecs`` module for the whole session.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from twisted_vmtools.codecs.datamap import (
    MAX_PACKET,
    FieldId,
    FieldType,
    PacketDecoder,
    PacketType,
    Value,
    VsockPacket,
    VsockPacketError,
    decode_datamap,
    decode_packet,
    encode_datamap,
)

INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
FIELD_IDS = st.integers(0, 0xFFFFFFFF)


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def entry_values() -> st.SearchStrategy[tuple[FieldType, Value]]:
    return st.one_of(
        st.tuples(st.just(FieldType.INT64), INT64),
        st.tuples(st.just(FieldType.STRING), st.binary(max_size=64)),
        st.tuples(st.just(FieldType.INT64LIST), st.lists(INT64, max_size=8).map(tuple)),
        st.tuples(st.just(FieldType.STRINGLIST), st.lists(st.binary(max_size=16), max_size=8).map(tuple)),
    )


DATAMAPS = st.dictionaries(FIELD_IDS, entry_values(), max_size=8)

PACKETS = st.one_of(
    st.builds(VsockPacket.data, st.binary(max_size=256), st.booleans()),
    st.just(VsockPacket.ping()),
)


def encode_entries(entries: list[tuple[int, FieldType, Value]]) -> bytes:
    """Encode entries in exactly the given order (encode_datamap would merge duplicates)."""
    return b"".join(encode_datamap({field_id: (ftype, value)}) for field_id, ftype, value in entries)


# -- DataMap content


@given(DATAMAPS)
def test_datamap_round_trip(entries: dict[int, tuple[FieldType, Value]]) -> None:
    assert decode_datamap(encode_datamap(entries)) == entries


@given(DATAMAPS, st.randoms(use_true_random=False))
def test_datamap_entry_order_does_not_matter(entries: dict[int, tuple[FieldType, Value]], rng: random.Random) -> None:
    # DataMap writes entries in hash-table order, so the reader must take any order.
    items = list(entries.items())
    rng.shuffle(items)
    assert decode_datamap(encode_datamap(dict(items))) == entries


def test_int64_is_low_word_first() -> None:
    encoded = encode_datamap({7: (FieldType.INT64, 0x1122334455667788)})
    assert encoded == u32(1) + u32(7) + u32(0x55667788) + u32(0x11223344)


def test_int64_is_signed_on_decode() -> None:
    assert decode_datamap(u32(1) + u32(1) + u32(0xFFFFFFFF) + u32(0xFFFFFFFF)) == {1: (FieldType.INT64, -1)}


def test_string_has_no_padding_and_no_nul() -> None:
    assert encode_datamap({2: (FieldType.STRING, b"abc")}) == u32(2) + u32(2) + u32(3) + b"abc"


@given(FIELD_IDS, entry_values(), entry_values())
def test_duplicate_field_ids_are_rejected(field_id: int, first: tuple[FieldType, Value],
                                          second: tuple[FieldType, Value]) -> None:
    content = encode_entries([(field_id, *first), (field_id, *second)])
    with pytest.raises(VsockPacketError, match="twice"):
        decode_datamap(content)


@given(st.integers(0, 0xFFFFFFFF).filter(lambda t: t not in tuple(FieldType)), FIELD_IDS, st.binary(max_size=16))
def test_unknown_field_type_is_rejected(raw_type: int, field_id: int, rest: bytes) -> None:
    with pytest.raises(VsockPacketError):
        decode_datamap(u32(raw_type) + u32(field_id) + rest)


@pytest.mark.parametrize(
    "content",
    [
        u32(2) + u32(2) + u32(10) + b"short",  # string longer than what follows
        u32(3) + u32(1) + u32(0xFFFFFFFF),  # list count that cannot fit
        u32(4) + u32(1) + u32(0x40000000),  # string list count that cannot fit
        u32(1) + u32(1) + u32(5),  # half an int64
        u32(1) + b"\0\0",  # half a field id
    ],
)
def test_truncated_content_is_rejected(content: bytes) -> None:
    with pytest.raises(VsockPacketError):
        decode_datamap(content)


@given(DATAMAPS.filter(bool), st.data())
def test_every_truncation_is_rejected(entries: dict[int, tuple[FieldType, Value]], data: st.DataObject) -> None:
    content = encode_datamap(entries)
    cut = data.draw(st.integers(1, len(content)))
    try:
        decoded = decode_datamap(content[:-cut])
    except VsockPacketError:
        return
    # A cut exactly between entries is a valid, smaller DataMap.
    assert decoded.items() <= entries.items()


@given(st.binary(max_size=512))
@example(b"")
@example(u32(4) + u32(1) + u32(0xFFFFFFFF))
def test_garbage_content_raises_only_vsock_packet_error(content: bytes) -> None:
    try:
        decode_datamap(content)
    except VsockPacketError:
        pass
    try:
        VsockPacket.decode_content(content)
    except VsockPacketError:
        pass


# -- whole packets


@given(PACKETS)
def test_packet_round_trip(packet: VsockPacket) -> None:
    assert decode_packet(packet.encode()) == packet


def test_data_packet_layout() -> None:
    encoded = VsockPacket.data(b"ping").encode()
    (length,) = struct.unpack(">I", encoded[:4])
    assert length == len(encoded) - 4
    assert decode_datamap(encoded[4:]) == {
        FieldId.TYPE: (FieldType.INT64, PacketType.DATA),
        FieldId.PAYLOAD: (FieldType.STRING, b"ping"),
    }


def test_fast_close_is_carried() -> None:
    packet = decode_packet(VsockPacket.data(b"x", fast_close=True).encode())
    assert packet.fast_close and packet.payload == b"x"


def test_unknown_fields_are_kept_as_extra() -> None:
    content = encode_datamap(
        {1: (FieldType.INT64, 1), 2: (FieldType.STRING, b"p"), 99: (FieldType.STRINGLIST, (b"a", b"b"))}
    )
    packet = VsockPacket.decode_content(content)
    assert packet.payload == b"p"
    assert packet.extra == {99: (FieldType.STRINGLIST, (b"a", b"b"))}


def test_max_in_flight_is_carried_and_only_where_said() -> None:
    packet = decode_packet(VsockPacket(PacketType.DATA, b"OK ATR toolbox", max_in_flight=4).encode())
    assert packet.payload == b"OK ATR toolbox" and packet.max_in_flight == 4 and not packet.extra
    assert decode_packet(VsockPacket.data(b"OK ").encode()).max_in_flight == 0  # not said: one at a time
    # The field is an ordinary DataMap entry (id 100, INT64) beside TYPE and PAYLOAD.
    entries = decode_datamap(VsockPacket(PacketType.DATA, b"x", max_in_flight=4).encode()[4:])
    assert entries == {FieldId.TYPE: (FieldType.INT64, 1), FieldId.PAYLOAD: (FieldType.STRING, b"x"),
                       FieldId.MAX_IN_FLIGHT: (FieldType.INT64, 4)} and FieldId.MAX_IN_FLIGHT == 100


def test_a_peer_that_does_not_know_max_in_flight_reads_the_packet_as_before() -> None:
    """What an older decoder does with any field id it does not know: the packet is unchanged."""
    content = VsockPacket(PacketType.DATA, b"OK ", max_in_flight=4).encode()[4:]
    entries = decode_datamap(content)
    known = {k: v for k, v in entries.items() if k in (FieldId.TYPE, FieldId.PAYLOAD, FieldId.FAST_CLOSE)}
    assert VsockPacket.decode_content(encode_datamap(known)) == VsockPacket.data(b"OK ")
    # And the fields after it (a newer peer's) are ignored the same way here.
    newer = encode_datamap({**entries, 101: (FieldType.INT64, 7)})
    assert VsockPacket.decode_content(newer).max_in_flight == 4


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({2: (FieldType.STRING, b"p")}, "no TYPE"),
        ({1: (FieldType.INT64, 1)}, "no PAYLOAD"),
        ({1: (FieldType.INT64, 9), 2: (FieldType.STRING, b"p")}, "unknown vsock packet type"),
        ({1: (FieldType.STRING, b"1"), 2: (FieldType.STRING, b"p")}, "TYPE has type STRING"),
        ({1: (FieldType.INT64, 1), 2: (FieldType.INT64, 5)}, "PAYLOAD has type INT64"),
        ({1: (FieldType.INT64, 1), 2: (FieldType.STRING, b"p"), 3: (FieldType.STRING, b"1")}, "FAST_CLOSE"),
        ({1: (FieldType.INT64, 1), 2: (FieldType.STRING, b"p"), 100: (FieldType.STRING, b"4")}, "MAX_IN_FLIGHT"),
        ({1: (FieldType.INT64, 1), 2: (FieldType.STRING, b"p"), 100: (FieldType.INT64, -1)}, "negative"),
    ],
)
def test_malformed_packets_are_rejected(entries: dict[int, tuple[FieldType, Value]], message: str) -> None:
    with pytest.raises(VsockPacketError, match=message):
        VsockPacket.decode_content(encode_datamap(entries))


def test_ping_needs_no_payload() -> None:
    assert VsockPacket.decode_content(encode_datamap({1: (FieldType.INT64, 2)})) == VsockPacket.ping()


@pytest.mark.parametrize("data", [b"", b"\0\0\0", u32(5) + b"1234", u32(3) + b"1234"])
def test_decode_packet_checks_the_length_prefix(data: bytes) -> None:
    with pytest.raises(VsockPacketError):
        decode_packet(data)


@given(st.binary(max_size=512))
def test_decode_packet_garbage_raises_only_vsock_packet_error(data: bytes) -> None:
    try:
        decode_packet(data)
    except VsockPacketError:
        pass


# -- incremental decoding


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@given(st.lists(PACKETS, max_size=10), st.lists(st.integers(0, 4096), max_size=20))
def test_decoder_any_split_points(packets: list[VsockPacket], cuts: list[int]) -> None:
    stream = b"".join(p.encode() for p in packets)
    decoder = PacketDecoder()
    out: list[VsockPacket | VsockPacketError] = []
    for chunk in split_at(stream, cuts):
        out += decoder.feed(chunk)
    assert out == packets


@given(st.lists(PACKETS, min_size=1, max_size=5))
def test_decoder_byte_at_a_time(packets: list[VsockPacket]) -> None:
    stream = b"".join(p.encode() for p in packets)
    decoder = PacketDecoder()
    out: list[VsockPacket | VsockPacketError] = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
    assert out == packets


@given(PACKETS, PACKETS, st.binary(max_size=64))
def test_decoder_reports_a_bad_packet_in_place_and_goes_on(before: VsockPacket, after: VsockPacket,
                                                           junk: bytes) -> None:
    bad = u32(len(junk) + 8) + u32(77) + u32(1) + junk  # an unknown field type: content garbage, framing intact
    out = PacketDecoder().feed(before.encode() + bad + after.encode())
    assert out[0] == before
    assert isinstance(out[1], VsockPacketError)
    assert out[2:] == [after]


def test_decoder_rejects_an_oversized_length() -> None:
    decoder = PacketDecoder(max_packet=100)
    assert decoder.feed(u32(100)) == []  # at the limit: just waits for the rest
    with pytest.raises(VsockPacketError, match="exceeds"):
        PacketDecoder(max_packet=100).feed(u32(101))


@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(8, 1 << 20))
def test_decoder_garbage_raises_only_vsock_packet_error(chunks: list[bytes], max_packet: int) -> None:
    decoder = PacketDecoder(max_packet=max_packet)
    for chunk in chunks:
        try:
            results = decoder.feed(chunk)
        except VsockPacketError:
            return  # framing lost: the caller closes the stream
        assert all(isinstance(r, VsockPacket | VsockPacketError) for r in results)


@given(st.binary(max_size=300))
def test_fast_paths_write_what_the_generic_encoder_writes(payload: bytes) -> None:
    for packet, entries in (
        (VsockPacket.data(payload), {FieldId.TYPE: (FieldType.INT64, 1), FieldId.PAYLOAD: (FieldType.STRING, payload)}),
        (VsockPacket.ping(), {FieldId.TYPE: (FieldType.INT64, 2)}),
    ):
        content = encode_datamap(entries)  # type: ignore[arg-type]
        assert packet.encode() == len(content).to_bytes(4, "big") + content


def test_a_one_byte_at_a_time_writer_costs_linear_copying() -> None:
    # The attack: one byte per read while a 1 MiB packet builds up.  Counting the
    # bytes the decoder moves between buffers shows the cost, without timing anything.
    payload = bytes(range(256)) * 1024  # 256 KiB
    wire = VsockPacket.data(payload).encode() + VsockPacket.ping().encode()
    decoder = PacketDecoder()
    out: list[object] = []
    for index in range(len(wire)):
        out += decoder.feed(wire[index : index + 1])
        assert decoder.buffered <= 4 + len(wire)
    assert out == [VsockPacket.data(payload), VsockPacket.ping()]
    assert decoder.copied <= 3 * len(wire)  # re-copying per read would be ~len(wire)**2 / 2
    assert decoder.buffered == 0


def test_large_chunks_across_packet_boundaries_stay_linear() -> None:
    packets = [VsockPacket.data(bytes([n]) * (n * 997)) for n in range(1, 60)]
    wire = b"".join(p.encode() for p in packets)
    decoder = PacketDecoder()
    out: list[object] = []
    for start in range(0, len(wire), 4093):
        out += decoder.feed(wire[start : start + 4093])
    assert out == packets and decoder.copied <= 3 * len(wire)


def test_one_mebibyte_byte_by_byte_finishes() -> None:
    payload = b"\xa5" * (MAX_PACKET - 28)
    wire = VsockPacket.data(payload).encode()
    decoder = PacketDecoder()
    feed = decoder.feed
    out: list[object] = []
    for byte in range(len(wire) - 1):
        assert not feed(wire[byte : byte + 1])
    out += feed(wire[-1:])
    assert out == [VsockPacket.data(payload)] and decoder.copied <= 2 * len(wire)
