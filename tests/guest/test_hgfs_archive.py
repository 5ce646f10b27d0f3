"""Directories over HGFS: downloaded as tar/tgz streams, uploaded and unpacked safely (real reactor: the
unpacking runs in a thread)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred

from tests.test_archive import make_tree, malicious, snapshot
from twisted_vmtools.codecs import hgfs
from twisted_vmtools.codecs.hgfs import Status
from twisted_vmtools.guest.hgfs_server import HGFSServer
from twisted_vmtools.service import default_file_handlers
from twisted_vmtools.vmx.hgfs_client import HGFSClient, HGFSClientError


async def session(tmp_path: Path, **options: Any) -> HGFSClient:
    server = HGFSServer(reactor, handlers=default_file_handlers(reactor))  # type: ignore[arg-type]
    client = HGFSClient(lambda p: maybeDeferred(server.packet, p), **options)  # type: ignore[call-overload]
    await client.start()
    return client


async def fetch(client: HGFSClient, path: str) -> bytes:
    parts: list[bytes] = []
    await client.download(path, parts.append)
    return b"".join(parts)


async def send(client: HGFSClient, path: str, data: bytes, overwrite: bool = False) -> int:
    stream = io.BytesIO(data)
    return await client.upload(path, stream.read, overwrite=overwrite)


@pytest.mark.parametrize("query", ["", "?format=tar", "?format=tgz"])
@pytest_twisted.ensureDeferred
async def test_directory_round_trip(tmp_path: Path, query: str) -> None:
    make_tree(tmp_path / "src")
    client = await session(tmp_path, max_packet=hgfs.LEGACY_LARGE_PACKET_MAX)
    data = await fetch(client, str(tmp_path / "src") + query)
    assert data.startswith(b"\x1f\x8b") == (query == "?format=tgz")
    await send(client, "/archive:" + str(tmp_path / "dst"), data)
    assert snapshot(tmp_path / "dst") == snapshot(tmp_path / "src")
    with pytest.raises(HGFSClientError) as caught:  # it exists now: unpacking into it needs overwrite
        await send(client, "/archive:" + str(tmp_path / "dst"), data)
    assert caught.value.status == Status.FILE_EXISTS
    await send(client, "/archive:" + str(tmp_path / "dst"), data, overwrite=True)


@pytest_twisted.ensureDeferred
async def test_archive_prefix_scheme_and_bad_format(tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    client = await session(tmp_path)
    data = await fetch(client, f"/archive:{tmp_path / 'src'}?prefix=top%2Fx")
    assert all(n.startswith("top/x/") for n in tarfile.open(fileobj=io.BytesIO(data)).getnames())
    single = await fetch(client, f"/archive:{tmp_path / 'src' / 'a.txt'}")
    assert tarfile.open(fileobj=io.BytesIO(single)).getnames() == ["a.txt"]
    with pytest.raises(HGFSClientError) as caught:
        await fetch(client, f"{tmp_path / 'src'}?format=zip")
    assert caught.value.status == Status.INVALID_PARAMETER


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
@pytest_twisted.ensureDeferred
async def test_malicious_upload_refused(tmp_path: Path, kind: str) -> None:
    client = await session(tmp_path)
    with pytest.raises(HGFSClientError) as caught:
        await send(client, "/archive:" + str(tmp_path / "in" / "target"), malicious(kind))
    assert caught.value.status == Status.INVALID_PARAMETER
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["fine.txt", "in", "target"]


@pytest_twisted.ensureDeferred
async def test_non_archive_upload_fails_at_close(tmp_path: Path) -> None:
    client = await session(tmp_path)
    with pytest.raises(HGFSClientError):
        await send(client, "/archive:" + str(tmp_path / "t"), b"not a tar at all" * 100)


@pytest_twisted.ensureDeferred
async def test_large_archive_upload_waits_for_the_unpacker(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    for index in range(3):
        (tmp_path / "src" / f"f{index}").write_bytes(bytes([index]) * 3_000_000)
    client = await session(tmp_path)
    data = await fetch(client, str(tmp_path / "src"))
    await send(client, "/archive:" + str(tmp_path / "dst"), data)
    assert snapshot(tmp_path / "dst") == snapshot(tmp_path / "src")
