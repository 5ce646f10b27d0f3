"""Who may use the simulator's socket: idle and crowding peers, the control channel's users and secret."""

from __future__ import annotations

import os
import socket

import pytest
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from tests.support import Harness, outcome_of
from tests.vmx.peers import connect_raw
from twisted_vmtools.codecs.stream import StreamKind
from twisted_vmtools.vmx.access import (
    PER_PEER,
    PREAMBLE_TIMEOUT,
    ControlAccess,
    Peer,
    SecretError,
    load_secret,
    peer_of,
)
from twisted_vmtools.vmx.control import ControlClient, Status
from twisted_vmtools.vmx.stream import VMXStreamFactory

STRANGER = Peer(uid=4242, gid=4242, pid=1)
REMOTE = Peer(host="192.0.2.9")


def gate_of(harness: Harness) -> VMXStreamFactory:
    factory = harness.endpoint.server_factory
    assert isinstance(factory, VMXStreamFactory)
    return factory


def from_now_on(harness: Harness, peer: Peer) -> None:
    """New connections come from ``peer`` (the guest's stay as they are)."""
    gate_of(harness).gate.peer_of = lambda transport: peer


def connect_control(harness: Harness, secret: bytes | None = None) -> tuple[ControlClient, list[object]]:
    clients: list[object] = []
    harness.endpoint.connect(Factory.forProtocol(lambda: ControlClient(secret))).addCallback(clients.append)
    client = clients[0]
    assert isinstance(client, ControlClient)
    ready: list[object] = []
    client.ready.addBoth(ready.append)
    harness.settle()
    return client, ready


def status_through(harness: Harness, client: ControlClient) -> object:
    called = client.callRemote(Status)
    harness.settle()
    return outcome_of(called)


def test_a_connection_that_names_no_channel_times_out_and_the_guest_goes_on() -> None:
    harness = Harness()
    harness.start()
    silent = connect_raw(harness, b"")
    halfway = connect_raw(harness, b"TC")
    harness.settle(PREAMBLE_TIMEOUT - 1)
    assert not silent.lost and not halfway.lost
    harness.settle(1)
    assert silent.lost and halfway.lost
    assert harness.send(b"ping") == b"OK "


def test_connections_per_peer_are_bounded_and_the_live_guest_served() -> None:
    harness = Harness()
    harness.start()
    from_now_on(harness, STRANGER)
    crowd = [connect_raw(harness, b"") for _ in range(PER_PEER + 20)]
    assert sum(not peer.lost for peer in crowd) == PER_PEER
    assert harness.send(b"ping") == b"OK "  # the guest's own connections are untouched
    harness.settle(PREAMBLE_TIMEOUT)
    assert all(peer.lost for peer in crowd)
    assert gate_of(harness).gate.limits.open(STRANGER.key) == 0  # every slot given back
    assert not connect_raw(harness, b"").lost


def test_the_control_channel_refuses_another_user() -> None:
    harness = Harness()
    harness.start()
    from_now_on(harness, STRANGER)
    client, ready = connect_control(harness)
    outcome = status_through(harness, client)
    assert isinstance(outcome, Failure)  # closed before any command was read


def test_the_control_channel_admits_the_socket_group() -> None:
    harness = Harness()
    harness.start()
    gate_of(harness).gate.access = ControlAccess(owner=os.geteuid(), group=4242)
    from_now_on(harness, STRANGER)  # primary group 4242
    client, ready = connect_control(harness)
    assert isinstance(status_through(harness, client), dict)
    from_now_on(harness, Peer(uid=4343, gid=4343))
    client, ready = connect_control(harness)
    assert isinstance(status_through(harness, client), Failure)


def test_root_is_admitted() -> None:
    harness = Harness()
    harness.start()
    from_now_on(harness, Peer(uid=0, gid=0))
    client, ready = connect_control(harness)
    assert isinstance(status_through(harness, client), dict)


def test_over_tcp_control_needs_a_secret_set() -> None:
    harness = Harness()
    harness.start()
    from_now_on(harness, REMOTE)
    client, ready = connect_control(harness)
    assert isinstance(status_through(harness, client), Failure)
    assert harness.send(b"ping") == b"OK "


def test_over_tcp_the_secret_is_proven_by_challenge() -> None:
    harness = Harness()
    harness.start()
    gate_of(harness).gate.access = ControlAccess(owner=os.geteuid(), secret=b"s3cret")
    from_now_on(harness, REMOTE)
    client, ready = connect_control(harness, b"s3cret")
    assert ready == [client]
    assert isinstance(status_through(harness, client), dict)
    wrong, ready = connect_control(harness, b"guess")
    assert isinstance(ready[0], Failure)
    assert isinstance(status_through(harness, wrong), Failure)
    none, ready = connect_control(harness)
    outcome = status_through(harness, none)
    assert isinstance(outcome, Failure) and outcome.check(SecretError)


def test_an_unanswered_challenge_times_out() -> None:
    harness = Harness()
    harness.start()
    gate_of(harness).gate.access = ControlAccess(owner=os.geteuid(), secret=b"s3cret")
    from_now_on(harness, REMOTE)
    mute = connect_raw(harness, StreamKind.CONTROL.preamble)
    harness.settle(PREAMBLE_TIMEOUT)
    assert mute.lost


def test_peer_credentials_of_a_real_unix_socket() -> None:
    here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with here, there:

        class Transport:
            socket = here

        peer = peer_of(Transport())
        assert (peer.uid, peer.gid, peer.pid) == (os.geteuid(), os.getegid(), os.getpid())


def test_the_secret_comes_from_a_file(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    path = tmp_path / "secret"
    path.write_bytes(b"hunter2\nignored")
    assert load_secret(str(path)) == b"hunter2"
    assert load_secret(None, {"VMTOOLS_SIM_SECRET_FILE": str(path)}) == b"hunter2"
    assert load_secret(None, {}) is None
    path.write_bytes(b"\n")
    with pytest.raises(SecretError, match="empty"):
        load_secret(str(path))
    with pytest.raises(SecretError, match="cannot read"):
        load_secret(str(tmp_path / "absent"))


