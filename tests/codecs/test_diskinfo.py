"""SetGuestDiskInfo: byte-exact against vmtoolsd 12.2, round trips, and strict decoding."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_vmtools.codecs.diskinfo import (
    COMMAND,
    DiskEntry,
    DiskInfoError,
    decode_disk_info,
    encode_disk_info,
    fit_name,
)

# vmtoolsd 12.2.0 (Debian) under the trap engine against vmtools-sim: the whole request, NUL included.
VMTOOLSD_12_2 = bytes.fromhex((Path(__file__).parents[1] / "data" / "vmtoolsd-12.2.0-diskinfo.hex").read_text())
ARGS = VMTOOLSD_12_2[len(COMMAND) + 1 :]


def test_vmtoolsd_report_decodes_and_encodes_byte_exact() -> None:
    disks = decode_disk_info(ARGS)
    assert [(d.name, d.fstype, d.devices) for d in disks] == [("/", "ext4", ())]
    assert disks[0].size == 270553174016
    assert encode_disk_info(disks) == VMTOOLSD_12_2


def test_layout_of_the_reference() -> None:
    # protocol.md §5: one disk per line, entries separated by "},\n", devices optional.
    two = encode_disk_info([DiskEntry("/", 1, 2, "ext4", ("scsi0:0",)), DiskEntry("/boot", 3, 4)])
    assert two == (
        b'SetGuestDiskInfo {\n"version":"1",\n"disks":[\n'
        b'{"name":"Lw==","free":"1","size":"2","fstype":"ext4","devices":["scsi0:0"]},\n'
        b'{"name":"L2Jvb3Q=","free":"3","size":"4"}\n]}\0'
    )
    assert encode_disk_info([]) == b'SetGuestDiskInfo {\n"version":"1",\n"disks":[\n]}\0'


def test_names_are_cut_to_99_bytes_on_a_character() -> None:
    assert fit_name("/" + "a" * 200) == "/" + "a" * 98
    assert len(fit_name("/" + "é" * 60).encode()) <= 99


disk_names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)
tokens = st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters='"\\'), max_size=12)
entries = st.builds(
    DiskEntry, disk_names, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), tokens,
    st.lists(tokens.filter(bool), max_size=3).map(tuple),
)


@given(st.lists(entries, max_size=5))
def test_round_trip(disks: list[DiskEntry]) -> None:
    request = encode_disk_info(disks)
    assert decode_disk_info(request[len(COMMAND) + 1 :]) == tuple(disks)


@pytest.mark.parametrize("args", [
    b"", b"not json", b"[]", b'{"version":"2","disks":[]}', b'{"version":"1"}',
    b'{"version":"1","disks":[1]}', b'{"version":"1","disks":[{"name":"***","free":"1","size":"1"}]}',
    b'{"version":"1","disks":[{"name":"Lw==","free":"-1","size":"1"}]}',
    b'{"version":"1","disks":[{"name":"Lw==","free":"18446744073709551616","size":"1"}]}',
    b'{"version":"1","disks":[{"name":"Lw==","free":"1"}]}',
    b'{"version":"1","disks":[{"name":"Lw==","free":"1","size":"1","devices":"sda"}]}',
    b'{"version":"1","disks":[{"name":"Lw==","free":"1","size":"1","fstype":7}]}',
    b"\xff\xfe", b"[" * 100000,
])
def test_malformed(args: bytes) -> None:
    with pytest.raises(DiskInfoError):
        decode_disk_info(args)


@given(st.binary(max_size=200))
def test_fuzz_only_disk_info_error(data: bytes) -> None:
    try:
        decode_disk_info(data)
    except DiskInfoError:
        pass


def test_unencodable() -> None:
    with pytest.raises(DiskInfoError):
        encode_disk_info([DiskEntry("/", -1, 0)])
    with pytest.raises(DiskInfoError):
        encode_disk_info([DiskEntry("/", 0, 0, 'ext"4')])
    with pytest.raises(DiskInfoError):
        encode_disk_info([DiskEntry("/", 0, 0, "ext4", ("a-much-too-long-device-name",))])
