"""`HGFSClient` with several ReadV3/WriteV3 in flight, over a real Unix socket to a real guest process.

This process is the VMX (`SimulatorService`); the guest is ``twistd vmtools`` on its socket, so the
TCLO stream carries several commands at once (the guest's MAX_IN_FLIGHT) and the guest answers them
in order.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from tests.processes import REPO, TWISTD, stop
from twisted_vmtools.channels.stream_protocols import STREAM_IN_FLIGHT
from twisted_vmtools.codecs import hgfs
from twisted_vmtools.vmx.hgfs_client import HGFSClient, tclo_sender
from twisted_vmtools.vmx.model import VMX
from twisted_vmtools.vmx.simulator import SimulatorService

pytestmark = pytest.mark.slow
IO = hgfs.LARGE_IO_MAX


class Guest:
    def __init__(self, vmx: VMX) -> None:
        self.vmx = vmx
        self.most_in_flight = 0

    def send(self, command: bytes) -> Deferred[bytes]:
        sent = self.vmx.send(command, timeout=60)
        self.most_in_flight = max(self.most_in_flight, self.vmx.tclo.in_flight)
        return sent


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hgfs-client")


@pytest.fixture(scope="module")
def guest_process(workdir: Path) -> Iterator[tuple[SimulatorService, subprocess.Popen[bytes]]]:
    where = workdir / "vmx.sock"
    simulator = SimulatorService(reactor, str(where), vmx=VMX(reactor, ping_interval=60))
    simulator.startService()
    with open(workdir / "guest.log", "wb") as log:
        process = subprocess.Popen(
            [*TWISTD, "--logfile=-", "vmtools", "--transport", f"unix:{where}", "--guestinfo-interval", "0",
             "--transfer-state", str(workdir / "state")],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )
    yield simulator, process
    stop(process)
    pytest_twisted.blockon(simulator.stopService())


@pytest_twisted.async_yield_fixture
async def client(guest_process: tuple[SimulatorService, subprocess.Popen[bytes]]) -> AsyncIterator[
        tuple[HGFSClient, Guest]]:
    simulator, _ = guest_process
    vmx = simulator.vmx
    for _ in range(200):
        if vmx.running and vmx.tclo.depth > 1:
            break
        await deferLater(reactor, 0.1, lambda: None)
    guest = Guest(vmx)
    session = HGFSClient(tclo_sender(guest.send))
    await session.start()
    yield session, guest
    if session.session_id is not None:
        await session.stop()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [0, 1, IO - 1, IO, IO + 1, 5 * IO + 7])
@pytest_twisted.ensureDeferred
async def test_pipelined_round_trip(client: tuple[HGFSClient, Guest], workdir: Path, size: int) -> None:
    session, guest = client
    data = os.urandom(size)
    target = workdir / f"file-{size}.bin"
    assert await session.upload(str(target), io.BytesIO(data).read, overwrite=True) == size
    assert digest(target.read_bytes()) == digest(data)
    back = bytearray()
    assert await session.download(str(target), back.extend) == size
    assert digest(bytes(back)) == digest(data)
    assert guest.vmx.tclo.depth == STREAM_IN_FLIGHT
    if size > 2 * IO:
        assert guest.most_in_flight > 1  # the packets did travel several at a time


@pytest_twisted.ensureDeferred
async def test_a_slow_consumer_holds_the_reads_back(client: tuple[HGFSClient, Guest], workdir: Path) -> None:
    session, guest = client
    data = os.urandom(12 * IO)
    (workdir / "slow.bin").write_bytes(data)
    back = bytearray()
    most = [0]

    def write(chunk: bytes) -> Deferred[None]:
        back.extend(chunk)
        most[0] = max(most[0], guest.vmx.tclo.in_flight + guest.vmx.tclo.waiting)
        return deferLater(reactor, 0.01, lambda: None)  # a consumer that takes its time

    await session.download(str(workdir / "slow.bin"), write)
    assert bytes(back) == data and most[0] <= session.pipeline  # never more than the window asked for


@pytest_twisted.ensureDeferred
async def test_an_upload_cut_off_midway_leaves_the_old_file_and_no_temporary(
        client: tuple[HGFSClient, Guest], workdir: Path) -> None:
    session, guest = client
    target = workdir / "target.bin"
    target.write_bytes(b"the old file")
    chunks = iter([os.urandom(IO) for _ in range(6)])

    def read(size: int) -> bytes:
        chunk = next(chunks, None)
        if chunk is None:
            raise OSError("the source disk failed")
        return chunk

    with pytest.raises(OSError, match="source disk"):
        await session.upload(str(target), read, overwrite=True)
    assert target.read_bytes() == b"the old file"
    assert [p.name for p in workdir.iterdir() if ".vmtools-upload-" in p.name] == []
    assert session.session_id is None  # ended, which discarded the upload
    await session.start()  # and the guest goes on
    assert await session.upload(str(target), io.BytesIO(b"new").read, overwrite=True) == 3
