"""Directory trees as tar streams: made piece by piece, unpacked safely."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from twisted_vmtools.archive import ArchiveError, check_format, extract, tar_stream


def make_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha")
    (root / "sub" / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "sub" / "deeper" / "big").write_bytes(os.urandom(700_000))
    (root / "empty").mkdir()
    os.chmod(root / "sub" / "run.sh", 0o751)
    os.chmod(root / "a.txt", 0o664)
    os.chmod(root / "sub" / "deeper", 0o750)
    os.chmod(root / "empty", 0o555)
    os.symlink("sub/run.sh", root / "link-to-run")
    os.symlink("deeper", root / "sub" / "dirlink")


def snapshot(root: Path) -> dict[str, tuple[int, bytes | str]]:
    seen: dict[str, tuple[int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            seen[str(path.relative_to(root))] = (0, os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            seen[str(path.relative_to(root))] = (stat.S_IMODE(info.st_mode), b"")
        else:
            seen[str(path.relative_to(root))] = (stat.S_IMODE(info.st_mode), path.read_bytes())
    return seen


@pytest.mark.parametrize("gzip", [False, True])
def test_tree_round_trip_with_modes_and_symlinks(tmp_path: Path, gzip: bool) -> None:
    make_tree(tmp_path / "src")
    pieces = list(tar_stream(str(tmp_path / "src"), gzip=gzip, chunk_size=65536))
    assert max(len(p) for p in pieces) <= 70_000  # never a whole file at once
    data = b"".join(pieces)
    assert data[:2] == b"\x1f\x8b" if gzip else data[257:262] == b"ustar"
    extract(io.BytesIO(data), str(tmp_path / "dst"))
    assert snapshot(tmp_path / "dst") == snapshot(tmp_path / "src")


def test_prefix_and_single_file(tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    names = tarfile.open(fileobj=io.BytesIO(b"".join(tar_stream(str(tmp_path / "src"), prefix="top/x")))).getnames()
    assert "top/x/a.txt" in names and all(n.startswith("top/x/") for n in names)
    single = b"".join(tar_stream(str(tmp_path / "src" / "a.txt")))
    assert tarfile.open(fileobj=io.BytesIO(single)).getnames() == ["a.txt"]


def malicious(kind: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        ok = tarfile.TarInfo("fine.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        bad = tarfile.TarInfo({"dotdot": "../escaped.txt", "absolute": "/tmp/escaped-abs.txt",
                               "symlink": "evil", "device": "dev", "hardlink": "hard"}[kind])
        if kind == "symlink":
            bad.type, bad.linkname = tarfile.SYMTYPE, "../../../etc"
        elif kind == "device":
            bad.type, bad.devmajor, bad.devminor = tarfile.CHRTYPE, 1, 3
        elif kind == "hardlink":
            bad.type, bad.linkname = tarfile.LNKTYPE, "../outside.txt"
        bad.size = 0
        tar.addfile(bad, io.BytesIO(b""))
        if kind == "symlink":
            through = tarfile.TarInfo("evil/passwd-copy")
            through.size = 1
            tar.addfile(through, io.BytesIO(b"x"))
    return out.getvalue()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "device", "hardlink"])
def test_malicious_tar_refused_nothing_outside(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "inside" / "target"
    before = set(tmp_path.rglob("*"))
    with pytest.raises(ArchiveError, match="refused"):
        extract(io.BytesIO(malicious(kind)), str(target))
    after = set(tmp_path.rglob("*"))
    assert {p for p in after - before if target not in p.parents and p != target} == {tmp_path / "inside"}
    assert not Path("/tmp/escaped-abs.txt").exists()


def test_not_a_tar(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="not a tar"):
        extract(io.BytesIO(b"this is not an archive" * 40), str(tmp_path / "t"))


def test_formats() -> None:
    assert check_format("tgz") and not check_format("tar") and not check_format("")
    with pytest.raises(ArchiveError):
        check_format("zip")
