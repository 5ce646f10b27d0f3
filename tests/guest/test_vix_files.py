"""The Vix command server's file operations, in memory: vmtoolsd's results and error codes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.guest.vix_support import call, make_server
from twisted_vmtools.codecs import vix
from twisted_vmtools.codecs.vix import Op, VixCode


@pytest.fixture
def server():  # type: ignore[no-untyped-def]
    return make_server()


def listing(server, path: object, **kwargs: int | str) -> vix.FileListing:  # type: ignore[no-untyped-def]
    reply = call(server, Op.LIST_FILES, vix.ListFiles(str(path), **kwargs))  # type: ignore[arg-type]
    assert reply.error == VixCode.OK, reply
    return vix.decode_file_listing(reply.result)


def test_list_files_reports_entries_as_vmtoolsd(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "file").write_bytes(b"12345")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to("file")
    result = listing(server, tmp_path, max_results=50)
    names = [f.name for f in result.files]
    assert names == [".", "..", "dir", "file", "link"]
    by_name = {f.name: f for f in result.files}
    assert by_name["file"].size == 5 and by_name["file"].type == 0
    assert by_name["dir"].type == vix.FileType.DIRECTORY
    assert by_name["link"].type == vix.FileType.SYMLINK and by_name["link"].symlink_target == "file"
    assert by_name["file"].permissions == os.stat(tmp_path / "file").st_mode
    assert result.remaining == 0 and not result.truncated


def test_list_files_of_one_file_names_its_path(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "f").write_bytes(b"x")
    result = listing(server, tmp_path / "f", max_results=10)
    assert [f.name for f in result.files] == [str(tmp_path / "f")]


def test_list_files_pattern(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for name in ("a.txt", "b.log", "c.txt"):
        (tmp_path / name).touch()
    result = listing(server, tmp_path, pattern=r"\.txt$", max_results=50)
    assert [f.name for f in result.files] == ["a.txt", "c.txt"]
    assert call(server, Op.LIST_FILES, vix.ListFiles(str(tmp_path), pattern="(")).error == VixCode.INVALID_ARG


def test_paging_5000_entries(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for i in range(5000):
        (tmp_path / f"entry-{i:05d}").touch()
    seen: list[str] = []
    index = 0
    pages = 0
    while True:
        page = listing(server, tmp_path, index=index, max_results=1000)
        pages += 1
        seen += [f.name for f in page.files]
        index += len(page.files)
        if page.remaining == 0:
            break
        assert page.files, "a page with entries left must make progress"
    assert seen == [".", ".."] + [f"entry-{i:05d}" for i in range(5000)]
    assert pages > 5  # 64 KiB replies: the truncated flag and <rem> carry the rest


def test_list_files_without_max_results_counts_only(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a").touch()
    result = listing(server, tmp_path)
    assert result.files == () and result.remaining == 3


@pytest.mark.parametrize("kwargs", [{"offset": 5, "max_results": 5}, {"index": -1, "max_results": 1}])
def test_list_files_bad_paging(server, tmp_path: Path, kwargs: dict[str, int]) -> None:  # type: ignore[no-untyped-def]
    assert call(server, Op.LIST_FILES, vix.ListFiles(str(tmp_path), **kwargs)).error == (  # type: ignore[arg-type]
        VixCode.INVALID_ARG)


def test_list_missing(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reply = call(server, Op.LIST_FILES, vix.ListFiles(str(tmp_path / "nope"), max_results=1))
    assert reply.error == VixCode.FILE_NOT_FOUND
    assert call(server, Op.LIST_FILES, vix.ListFiles("", max_results=1)).error == VixCode.INVALID_ARG


def test_mkdir(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "a" / "b"
    assert call(server, Op.CREATE_DIRECTORY_EX, vix.PathRequest(str(target))).error == VixCode.FILE_NOT_FOUND
    assert call(server, Op.CREATE_DIRECTORY_EX, vix.PathRequest(str(target), flag=True)).error == VixCode.OK
    assert target.is_dir() and stat.S_IMODE(target.stat().st_mode) == 0o700
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700  # parents too, as vmtoolsd makes them
    assert call(server, Op.CREATE_DIRECTORY_EX, vix.PathRequest(str(target))).error == VixCode.FILE_ALREADY_EXISTS


def test_delete_file(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "f").touch()
    (tmp_path / "d").mkdir()
    assert call(server, Op.DELETE_GUEST_FILE_EX, vix.SimpleFile(str(tmp_path / "d"))).error == VixCode.NOT_A_FILE
    assert call(server, Op.DELETE_GUEST_FILE_EX, vix.SimpleFile(str(tmp_path / "f"))).error == VixCode.OK
    assert not (tmp_path / "f").exists()
    assert call(server, Op.DELETE_GUEST_FILE_EX, vix.SimpleFile(str(tmp_path / "f"))).error == VixCode.FILE_NOT_FOUND


def test_delete_directory(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "f").touch()
    d = str(tmp_path / "d")
    assert call(server, Op.DELETE_GUEST_DIRECTORY_EX, vix.PathRequest(str(tmp_path / "f"))).error == (
        VixCode.NOT_A_DIRECTORY)
    assert call(server, Op.DELETE_GUEST_DIRECTORY_EX, vix.PathRequest(d)).error == VixCode.DIRECTORY_NOT_EMPTY
    assert call(server, Op.DELETE_GUEST_DIRECTORY_EX, vix.PathRequest(d, flag=True)).error == VixCode.OK
    assert not (tmp_path / "d").exists()
    assert call(server, Op.DELETE_GUEST_DIRECTORY_EX, vix.PathRequest(d)).error == VixCode.FILE_NOT_FOUND


def test_move_file(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"A")
    b.write_bytes(b"B")
    (tmp_path / "d").mkdir()
    move = Op.MOVE_GUEST_FILE_EX
    assert call(server, move, vix.Move(str(a), str(b))).error == VixCode.FILE_ALREADY_EXISTS
    assert b.read_bytes() == b"B"
    assert call(server, move, vix.Move(str(tmp_path / "d"), str(tmp_path / "e"))).error == VixCode.NOT_A_FILE
    assert call(server, move, vix.Move(str(a), str(b), overwrite=True)).error == VixCode.OK
    assert b.read_bytes() == b"A" and not a.exists()
    assert call(server, move, vix.Move(str(a), str(b))).error == VixCode.FILE_NOT_FOUND


def test_move_directory(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "d").mkdir()
    (tmp_path / "e").mkdir()
    (tmp_path / "f").touch()
    move = Op.MOVE_GUEST_DIRECTORY
    assert call(server, move, vix.Move(str(tmp_path / "f"), str(tmp_path / "g"))).error == VixCode.NOT_A_DIRECTORY
    assert call(server, move, vix.Move(str(tmp_path / "d"), str(tmp_path / "e"))).error == (
        VixCode.FILE_ALREADY_EXISTS)
    assert call(server, move, vix.Move(str(tmp_path / "d"), str(tmp_path / "new"))).error == VixCode.OK
    assert (tmp_path / "new").is_dir()


@pytest.mark.parametrize("op, is_dir", [(Op.CREATE_TEMPORARY_FILE_EX, False), (Op.CREATE_TEMPORARY_DIRECTORY, True)])
def test_mktemp(server, tmp_path: Path, op: int, is_dir: bool) -> None:  # type: ignore[no-untyped-def]
    reply = call(server, op, vix.CreateTemporary("pre-", ".suf", str(tmp_path)))
    assert reply.error == VixCode.OK
    path = Path(reply.result.decode())
    assert path.parent == tmp_path and path.name.startswith("pre-vmware") and path.name.endswith(".suf")
    assert path.is_dir() == is_dir and path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == (0o700 if is_dir else 0o600)
    missing = call(server, op, vix.CreateTemporary(directory=str(tmp_path / "missing")))
    assert missing.error == VixCode.FILE_NOT_FOUND


def test_set_attributes(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "f"
    f.touch()
    flags = vix.AttributeFlags
    body = vix.SetAttributes(str(f), flags.MODIFY_DATE | flags.ACCESS_DATE | flags.UNIX_PERMISSIONS,
                             access_time=1000, modification_time=2000, permissions=0o640)
    assert call(server, Op.SET_GUEST_FILE_ATTRIBUTES, body).error == VixCode.OK
    st = f.stat()
    assert (st.st_atime, st.st_mtime, stat.S_IMODE(st.st_mode)) == (1000, 2000, 0o640)
    only_mtime = vix.SetAttributes(str(f), flags.MODIFY_DATE, modification_time=3000)
    assert call(server, Op.SET_GUEST_FILE_ATTRIBUTES, only_mtime).error == VixCode.OK
    assert (f.stat().st_atime, f.stat().st_mtime) == (1000, 3000)
    hidden = vix.SetAttributes(str(f), flags.HIDDEN, hidden=True)
    assert call(server, Op.SET_GUEST_FILE_ATTRIBUTES, hidden).error == VixCode.INVALID_ARG
    gone = vix.SetAttributes(str(tmp_path / "gone"), flags.UNIX_PERMISSIONS, permissions=0o600)
    assert call(server, Op.SET_GUEST_FILE_ATTRIBUTES, gone).error == VixCode.FILE_NOT_FOUND


def test_transfer_from_guest(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "f"
    f.write_bytes(b"hello")
    reply = call(server, Op.INITIATE_FILE_TRANSFER_FROM_GUEST, vix.ListFiles(str(f)))
    assert reply.error == VixCode.OK
    [info] = vix.decode_file_infos(reply.result.decode())
    assert (info.name, info.size) == (str(f), 5)
    assert "<rem>" not in reply.result.decode()
    from_guest = Op.INITIATE_FILE_TRANSFER_FROM_GUEST
    assert call(server, from_guest, vix.ListFiles(str(tmp_path))).error == VixCode.NOT_A_FILE
    assert call(server, from_guest, vix.ListFiles(str(tmp_path / "x"))).error == VixCode.FILE_NOT_FOUND
    (tmp_path / "l").symlink_to("f")
    assert call(server, from_guest, vix.ListFiles(str(tmp_path / "l"))).error == VixCode.INVALID_ARG


def test_transfer_to_guest(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "f"
    f.write_bytes(b"keep")
    to_guest = Op.INITIATE_FILE_TRANSFER_TO_GUEST
    assert call(server, to_guest, vix.TransferToGuest(str(f))).error == VixCode.FILE_ALREADY_EXISTS
    assert call(server, to_guest, vix.TransferToGuest(str(f), overwrite=True)).error == VixCode.OK
    assert call(server, to_guest, vix.TransferToGuest(str(tmp_path / "new"))).error == VixCode.OK
    assert call(server, to_guest, vix.TransferToGuest(str(tmp_path))).error == VixCode.NOT_A_FILE
    assert call(server, to_guest, vix.TransferToGuest(str(tmp_path / "no" / "x"))).error == VixCode.FILE_NAME_INVALID
    assert f.read_bytes() == b"keep" and not (tmp_path / "new").exists()  # nothing is written before HGFS


def test_file_names_with_xml_characters(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a<b>&%'\"").touch()
    result = listing(server, tmp_path, max_results=10)
    assert "a<b>&%'\"" in [f.name for f in result.files]
