"""IGuestOperations.upload/download of the guest's virtual paths, `twistd vmtools` and the simulator as real
processes over a real Unix socket: directories and ``/archive:/path[?format=tgz&prefix=…]`` as tar streams,
procfs files, and the Vix checks in front of them.  (``/proc/<pid>/stdin|stdout`` through the same calls:
tests/test_web.py, whose HTTP agent moves every request and response that way.)"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.processes import simulated_guest
from twisted_vmtools.codecs.vix import Credentials, VixCode
from twisted_vmtools.vmx.guest_operations import GuestOperationError
from twisted_vmtools.web import connect_guest_operations

pytestmark = pytest.mark.slow
LOGIN = Credentials("anyone", "anything")  # the guest accepts any login (--auth none)


@pytest.fixture(scope="module")
def vmx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("virtual")
    with simulated_guest(base, "--auth", "none", log=base / "vmx.log") as path:
        yield path


def tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha")
    (root / "sub" / "b.bin").write_bytes(os.urandom(70_000))
    return root


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
        return {m.name.rstrip("/"): archive.extractfile(m).read()  # type: ignore[union-attr]
                for m in archive.getmembers() if m.isfile()}


async def download(ops: Any, path: str) -> bytes:
    received = bytearray()
    await ops.download(LOGIN, path, received.extend)
    return bytes(received)


@pytest_twisted.ensureDeferred
async def test_directories_and_archive_paths(vmx: Path, tmp_path: Path) -> None:
    ops = await connect_guest_operations(reactor, str(vmx))
    src = tree(tmp_path / "src")
    expected = {"a.txt": b"alpha", "sub/b.bin": (src / "sub" / "b.bin").read_bytes()}
    # A directory named as it is comes as a tar stream (vmtoolsd's check says NotAFile: the archive is asked).
    assert {k.removeprefix("./"): v for k, v in members(await download(ops, str(src))).items()} == expected
    tgz = await download(ops, f"/archive:{src}?format=tgz&prefix=top%2F")
    assert tgz[:2] == b"\x1f\x8b"
    assert {k: v for k, v in members(tgz).items()} == {f"top/{k}": v for k, v in expected.items()}
    # Uploads: into a new directory through /archive:, and into an existing one (overwrite) by its name.
    stream = io.BytesIO(await download(ops, str(src)))
    await ops.upload(LOGIN, f"/archive:{tmp_path / 'new'}", stream.read)
    assert (tmp_path / "new" / "sub" / "b.bin").read_bytes() == expected["sub/b.bin"]
    (tmp_path / "existing").mkdir()
    stream.seek(0)
    with pytest.raises(GuestOperationError) as caught:
        await ops.upload(LOGIN, str(tmp_path / "existing"), stream.read)  # no overwrite: refused before a byte
    assert caught.value.code == VixCode.FILE_ALREADY_EXISTS and not os.listdir(tmp_path / "existing")
    await ops.upload(LOGIN, str(tmp_path / "existing"), stream.read, overwrite=True)
    assert (tmp_path / "existing" / "a.txt").read_bytes() == b"alpha"


@pytest_twisted.ensureDeferred
async def test_the_vix_checks_know_virtual_paths(vmx: Path, tmp_path: Path) -> None:
    ops = await connect_guest_operations(reactor, str(vmx))
    src = tree(tmp_path / "src")
    info = await ops.initiate_file_transfer_from_guest(LOGIN, f"/archive:{src}?format=tgz")
    assert info.size == (1 << 63) - 1  # unknown until made: the VMX reads until an empty read
    for path, code in [(f"/archive:{src}?format=zip", VixCode.INVALID_ARG),
                       (f"/archive:{tmp_path / 'missing'}", VixCode.FILE_NOT_FOUND),
                       (str(src), VixCode.NOT_A_FILE)]:
        with pytest.raises(GuestOperationError) as caught:
            await ops.initiate_file_transfer_from_guest(LOGIN, path)
        assert caught.value.code == code, path
    with pytest.raises(GuestOperationError) as caught:
        await ops.initiate_file_transfer_to_guest(LOGIN, f"/archive:{src / 'a.txt'}", None, 0, True)  # type: ignore[arg-type]
    assert caught.value.code == VixCode.NOT_A_DIRECTORY
    # A procfs file (size 0 on stat) is read whole.
    status = await download(ops, f"/proc/{os.getpid()}/status")
    assert f"Pid:\t{os.getpid()}".encode() in status
