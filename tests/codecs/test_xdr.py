"""The XDR packer/unpacker: round trips, exact bytes, and only `XDRError` on bad input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_vmtools.codecs.xdr import Packer, Unpacker, XDRError

U32 = st.integers(0, 0xFFFFFFFF)
I32 = st.integers(-(1 << 31), (1 << 31) - 1)


def packed(pack: object) -> bytes:
    packer = Packer()
    pack(packer)  # type: ignore[operator]
    return packer.data


@given(U32, I32, st.booleans(), st.binary(max_size=40), st.binary(max_size=12))
def test_round_trip(u: int, i: int, flag: bool, blob: bytes, chars: bytes) -> None:
    packer = Packer()
    packer.u32(u)
    packer.i32(i)
    packer.bool(flag)
    packer.opaque(blob)
    packer.chars(chars, 12)
    packer.optional(None, packer.u32)
    packer.optional(u, packer.u32)
    packer.array([blob, blob], packer.string, max_count=2)
    data = packer.data
    assert len(data) % 4 == 0
    unpacker = Unpacker(data)
    assert unpacker.u32() == u
    assert unpacker.i32() == i
    assert unpacker.bool() is flag
    assert unpacker.opaque() == blob
    assert unpacker.chars(12) == chars.ljust(12, b"\0")
    assert unpacker.optional(unpacker.u32) is None
    assert unpacker.optional(unpacker.u32) == u
    assert unpacker.array(unpacker.string, max_count=2) == [blob, blob]
    unpacker.done()


def test_exact_bytes() -> None:
    assert packed(lambda p: p.string(b"02:fc:00:00:00:01", 18)) == b"\0\0\0\x1102:fc:00:00:00:01\0\0\0"
    assert packed(lambda p: p.opaque(b"")) == b"\0\0\0\0"
    assert packed(lambda p: p.opaque(b"abcd")) == b"\0\0\0\x04abcd"
    assert packed(lambda p: p.i32(-1)) == b"\xff\xff\xff\xff"
    # char[] goes out one xdr_char (a whole, sign-extended int) per char.
    assert packed(lambda p: p.chars(b"a\xff", 3)) == b"\0\0\0a" + b"\xff" * 4 + b"\0" * 4
    assert packed(lambda p: p.optional(7, p.u32)) == b"\0\0\0\x01\0\0\0\x07"
    assert packed(lambda p: p.array([1, 2], p.u32)) == b"\0\0\0\x02\0\0\0\x01\0\0\0\x02"


@pytest.mark.parametrize(
    "pack",
    [
        lambda p: p.u32(-1),
        lambda p: p.u32(1 << 32),
        lambda p: p.i32(1 << 31),
        lambda p: p.opaque(b"x" * 5, 4),
        lambda p: p.chars(b"abcd", 3),
        lambda p: p.array([1, 2, 3], p.u32, max_count=2),
    ],
)
def test_encoding_out_of_range(pack: object) -> None:
    with pytest.raises(XDRError):
        packed(pack)


@pytest.mark.parametrize(
    ("data", "read"),
    [
        (b"\0\0\0", lambda u: u.u32()),
        (b"\0\0\0\x02", lambda u: u.bool()),
        (b"\0\0\0\x01a\x01\0\0", lambda u: u.opaque()),  # non-zero padding
        (b"\0\0\0\x05abcd", lambda u: u.opaque()),  # truncated
        (b"\0\0\0\x05abcde\0\0\0", lambda u: u.opaque(4)),  # over the maximum
        (b"\0\0\x01\x00", lambda u: u.chars(1)),  # 256 is no char
        (b"\0\0\0\x03\0\0\0\x01", lambda u: u.array(u.u32, max_count=2)),
        (b"\x7f\xff\xff\xff", lambda u: u.array(u.u32)),  # a huge count with nothing behind it
        (b"\0\0\0\x02", lambda u: u.optional(u.u32)),
        (b"\0\0\0\0\0", lambda u: (u.u32(), u.done())),
    ],
)
def test_malformed(data: bytes, read: object) -> None:
    with pytest.raises(XDRError):
        read(Unpacker(data))  # type: ignore[operator]


def test_chars_accept_sign_extended_and_unsigned() -> None:
    assert Unpacker(b"\xff\xff\xff\x80\0\0\0\x80").chars(2) == b"\x80\x80"


@given(st.binary(max_size=64), st.lists(st.sampled_from(["u32", "i32", "bool", "opaque", "chars", "optional",
                                                         "array"]), max_size=8))
def test_fuzz_only_xdr_error(data: bytes, reads: list[str]) -> None:
    unpacker = Unpacker(data)
    try:
        for read in reads:
            if read == "opaque":
                unpacker.opaque(255)
            elif read == "chars":
                unpacker.chars(3)
            elif read == "optional":
                unpacker.optional(unpacker.u32)
            elif read == "array":
                unpacker.array(lambda: unpacker.opaque(16), max_count=4)
            else:
                getattr(unpacker, read)()
        unpacker.done()
    except XDRError:
        pass
