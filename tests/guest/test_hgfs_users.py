"""HGFS_SEND_PACKET performed as the login's account: routing, session ownership, process streams, real helpers."""

from __future__ import annotations

import io
import os
import pwd
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tests.support import result_of
from twisted_vmtools.codecs import hgfs, vix
from twisted_vmtools.codecs.hgfs import OpenFlags, OpenMode, Status
from twisted_vmtools.guest.accounts import GuestUser
from twisted_vmtools.guest.hgfs_helper import FIRST_HANDLE, FRAME
from twisted_vmtools.guest.hgfs_proc import ProcessIOHandler
from twisted_vmtools.guest.hgfs_server import HGFSServer
from twisted_vmtools.guest.hgfs_users import MAX_FRAME, UserHelper, UserHGFS, _Frames, helper_handlers
from twisted_vmtools.vmx.hgfs_client import HGFSClient, HGFSClientError

SERVICE = GuestUser.current()
ALICE = GuestUser("alice", SERVICE.uid + 1001, 1001, (1001,), "/nonexistent", "/bin/sh")
BOB = GuestUser("bob", SERVICE.uid + 1002, 1002, (1002,), "/nonexistent", "/bin/sh")


class InMemoryHelper:
    """A helper without a process: its own HGFS server, numbering handles as a real helper does."""

    made: list[InMemoryHelper] = []

    def __init__(self, reactor: Any, user: GuestUser, on_gone: Callable[[Any], None]) -> None:
        self.user = user
        self.on_gone = on_gone
        self.sessions: set[int] = set()
        self.alive = True
        self.last_used = 0.0
        self.server = HGFSServer(reactor, handlers=helper_handlers(reactor), first_handle=FIRST_HANDLE)
        self.packets: list[int] = []
        InMemoryHelper.made.append(self)

    def request(self, packet: bytes) -> Deferred[bytes]:
        self.packets.append(hgfs.decode_request_header(packet)[0].op)
        return maybeDeferred(self.server.packet, packet)  # type: ignore[call-overload]

    def leave(self) -> None:
        self.alive = False
        self.on_gone(self)


class Stream:
    def __init__(self, data: bytes) -> None:
        self.data = data

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, size: int) -> bytes:
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


class Finished:
    """A process that ended with output, as the process table describes one."""

    running = False

    def __init__(self, owner: str, output: bytes) -> None:
        self.owner = owner
        self.io = type("IO", (), {"stdout": Stream(output), "stderr": Stream(b""), "stdin": None})()


class Table:
    def __init__(self, **records: Finished) -> None:
        self.records = {int(pid[1:]): record for pid, record in records.items()}

    def get(self, pid: int) -> object | None:
        return self.records.get(pid)


def make_users(clock: Clock, table: Table | None = None) -> UserHGFS:
    InMemoryHelper.made.clear()
    handlers = helper_handlers(clock)
    if table is not None:
        handlers.register("proc", ProcessIOHandler(clock, table))  # type: ignore[arg-type]
    server = HGFSServer(clock, handlers=handlers)
    return UserHGFS(clock, server, processes=table, helper_factory=InMemoryHelper)  # type: ignore[arg-type]


def client_for(users: UserHGFS, user: GuestUser) -> HGFSClient:
    return HGFSClient(lambda packet: maybeDeferred(users.packet, packet, user))  # type: ignore[call-overload]


def test_the_services_own_account_is_served_in_process(tmp_path: Path) -> None:
    users = make_users(Clock())
    (tmp_path / "f").write_bytes(b"data")
    client = client_for(users, SERVICE)
    result_of(Deferred.fromCoroutine(client.start()))
    got: list[bytes] = []
    result_of(Deferred.fromCoroutine(client.download(str(tmp_path / "f"), got.append)))
    assert got == [b"data"] and not InMemoryHelper.made


def test_another_account_gets_its_own_helper_and_its_sessions_are_its_own(tmp_path: Path) -> None:
    users = make_users(Clock())
    alice = client_for(users, ALICE)
    result_of(Deferred.fromCoroutine(alice.start()))
    (helper,) = InMemoryHelper.made
    assert helper.user == ALICE and alice.session_id in helper.sessions and alice.session_id in users.routes
    # Bob (or the tools' own account) naming Alice's session is told it does not exist.
    for intruder in (BOB, SERVICE):
        stolen = client_for(users, intruder)
        stolen.session_id = alice.session_id
        with pytest.raises(HGFSClientError) as caught:
            result_of(Deferred.fromCoroutine(stolen.getattr(str(tmp_path))))
        assert caught.value.status == Status.STALE_SESSION
    # Nor may Alice use a session of the tools' own account.
    own = client_for(users, SERVICE)
    result_of(Deferred.fromCoroutine(own.start()))
    alice_there = client_for(users, ALICE)
    alice_there.session_id = own.session_id
    with pytest.raises(HGFSClientError) as caught:
        result_of(Deferred.fromCoroutine(alice_there.getattr(str(tmp_path))))
    assert caught.value.status == Status.STALE_SESSION
    result_of(Deferred.fromCoroutine(alice.stop()))
    assert not helper.sessions and not users.routes


def test_process_streams_are_served_here_for_their_owner_only(tmp_path: Path) -> None:
    clock = Clock()
    users = make_users(clock, Table(p77=Finished("alice", b"hello from 77")))
    (tmp_path / "plain").write_bytes(b"plain")
    alice = client_for(users, ALICE)
    result_of(Deferred.fromCoroutine(alice.start()))
    got: list[bytes] = []
    result_of(Deferred.fromCoroutine(alice.download("/proc/77/stdout", got.append)))
    assert b"".join(got) == b"hello from 77"
    (helper,) = InMemoryHelper.made
    assert hgfs.Op.OPEN_V3 not in helper.packets  # the stream never went to the helper
    # The same session goes on with plain files in the helper, the handles apart.
    plain: list[bytes] = []
    result_of(Deferred.fromCoroutine(alice.download(str(tmp_path / "plain"), plain.append)))
    assert plain == [b"plain"] and hgfs.Op.OPEN_V3 in helper.packets
    bob = client_for(users, BOB)
    result_of(Deferred.fromCoroutine(bob.start()))
    with pytest.raises(HGFSClientError) as caught:
        result_of(Deferred.fromCoroutine(bob.download("/proc/77/stdout", print)))
    assert caught.value.status == Status.ACCESS_DENIED
    session = alice.session_id
    result_of(Deferred.fromCoroutine(alice.stop()))
    assert session not in users.routes and session not in users.server.sessions and bob.session_id in users.routes


def test_a_gone_helper_ends_its_sessions() -> None:
    users = make_users(Clock())
    alice = client_for(users, ALICE)
    result_of(Deferred.fromCoroutine(alice.start()))
    InMemoryHelper.made[0].leave()
    assert not users.routes and not users.helpers
    with pytest.raises(HGFSClientError) as caught:
        result_of(Deferred.fromCoroutine(alice.getattr("/")))
    assert caught.value.status == Status.STALE_SESSION


def test_not_root_cannot_act_as_another_account(monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted_vmtools.guest.vix_errors import VixOperationError

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(VixOperationError) as caught:
        UserHelper(Clock(), ALICE, lambda helper: None)
    assert caught.value.code == vix.VixCode.GUEST_USER_PERMISSIONS


# --- real helpers, as a real unprivileged account -------------------------------------------------------------------


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory every account may write in, with a root-only corner."""
    if os.geteuid() != 0:
        pytest.skip("acting as another account needs root")
    path = Path("/tmp") / f"hgfs-users-{os.getpid()}"
    path.mkdir(mode=0o777)
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_transfers_act_as_the_account(shared: Path) -> None:
    nobody = GuestUser.from_passwd(pwd.getpwnam("nobody"))
    secret = shared / "secret"
    secret.write_bytes(b"root's")
    secret.chmod(0o600)
    locked = shared / "locked"
    locked.mkdir(mode=0o755)
    (locked / "old").write_bytes(b"untouched")
    tree = shared / "tree"
    tree.mkdir(mode=0o755)
    (tree / "readable").write_bytes(b"r")
    (tree / "hidden").write_bytes(b"h")
    (tree / "hidden").chmod(0o600)
    server = HGFSServer(global_reactor, handlers=helper_handlers(global_reactor))  # type: ignore[call-overload]
    users = UserHGFS(global_reactor, server)
    client = HGFSClient(lambda packet: maybeDeferred(users.packet, packet, nobody))  # type: ignore[call-overload]
    try:
        await client.start()
        # A new file is the account's.
        data = os.urandom(700_000)
        chunks = iter([data[:400_000], data[400_000:]])
        await client.upload(str(shared / "mine"), lambda n: next(chunks, b""), permissions=0o640)
        info = (shared / "mine").stat()
        assert (info.st_uid, info.st_gid) == (nobody.uid, nobody.gid) and (shared / "mine").read_bytes() == data
        assert stat.S_IMODE(info.st_mode) == 0o640
        # What the account may not read or write stays out of reach.
        with pytest.raises(HGFSClientError) as caught:
            await client.download(str(secret), print)
        assert caught.value.status == Status.ACCESS_DENIED
        with pytest.raises(HGFSClientError) as caught:
            await client.upload(str(locked / "old"), lambda n: b"", overwrite=True)
        assert caught.value.status == Status.ACCESS_DENIED
        assert (locked / "old").read_bytes() == b"untouched" and os.listdir(locked) == ["old"]
        await client.start()  # a refused upload ends the session: a new one
        handle = await client.open(str(locked / "new"), OpenMode.WRITE_ONLY, OpenFlags.CREATE_SAFE)
        raise AssertionError(f"opened {handle}")  # pragma: no cover
    except HGFSClientError as error:
        assert error.status == Status.ACCESS_DENIED and not (locked / "new").exists()
    try:
        # An archive holds only what the account can read.
        archive = bytearray()
        await client.download("/archive:" + str(tree), archive.extend)
        with tarfile.open(fileobj=io.BytesIO(bytes(archive))) as tar:
            names = {member.name.strip("./") for member in tar.getmembers()}
        assert "readable" in names and "hidden" not in names
        helper = users.helpers[nobody.uid]
        assert helper.alive and client.session_id in helper.sessions
    finally:
        if client.session_id is not None:
            await client.stop()
        users.stop()


class Collected(_Frames):
    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []

    def frameReceived(self, tag: int, payload: bytes) -> None:  # noqa: N802
        self.frames.append((tag, payload))


@given(st.lists(st.binary(max_size=300), max_size=6), st.lists(st.integers(1, 97), min_size=1, max_size=20))
def test_frames_survive_any_split(payloads: list[bytes], cuts: list[int]) -> None:
    sender, receiver = Collected(), Collected()
    wire = StringTransport()
    sender.makeConnection(wire)
    receiver.makeConnection(StringTransport())
    for tag, payload in enumerate(payloads):
        sender.sendFrame(tag, payload)
    data = wire.value()
    position, turn = 0, 0
    while position < len(data):
        step = cuts[turn % len(cuts)]
        receiver.dataReceived(data[position : position + step])
        position, turn = position + step, turn + 1
    assert receiver.frames == list(enumerate(payloads))


def test_an_oversized_frame_ends_the_connection() -> None:
    receiver = Collected()
    transport = StringTransport()
    receiver.makeConnection(transport)
    receiver.dataReceived(FRAME.pack(MAX_FRAME + 1, 1) + b"x")
    assert transport.disconnecting and not receiver.frames


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_an_upload_cut_off_in_a_helper_leaves_nothing(shared: Path) -> None:
    """The tools stop (or the helper goes) halfway through an upload: no temporary, no target, a helper gone."""
    nobody = GuestUser.from_passwd(pwd.getpwnam("nobody"))
    server = HGFSServer(global_reactor, handlers=helper_handlers(global_reactor))  # type: ignore[arg-type]
    users = UserHGFS(global_reactor, server)
    client = HGFSClient(lambda packet: maybeDeferred(users.packet, packet, nobody))  # type: ignore[call-overload]
    await client.start()
    handle = await client.open(str(shared / "half"), OpenMode.WRITE_ONLY, OpenFlags.CREATE_SAFE, 0o644)
    await client.write(handle, 0, os.urandom(300_000))
    assert [p.name for p in shared.iterdir()] and not (shared / "half").exists()  # the temporary, owned by nobody
    assert all(p.stat().st_uid == nobody.uid for p in shared.iterdir())
    helper = users.helpers[nobody.uid]
    ended: Deferred[None] = Deferred()
    original = helper.process.processEnded

    def noted(reason: Any) -> None:
        original(reason)
        ended.callback(None)

    helper.process.processEnded = noted  # type: ignore[method-assign]
    users.stop()
    await ended
    assert list(shared.iterdir()) == [] and not users.routes and not users.helpers
