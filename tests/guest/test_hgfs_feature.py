"""`HGFSFeature`: the HGFS server as a feature, built by the first ``f`` packet."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from tests.support import result_of
from twisted_vmtools.codecs.tclo import HGFS_CAPABILITY
from twisted_vmtools.guest.hgfs_feature import HGFSFeature
from twisted_vmtools.guest.hgfs_files import UploadJournal
from twisted_vmtools.guest.hgfs_handlers import FileHandlerRegistry
from twisted_vmtools.guest.hgfs_server import HGFSServer, Session
from twisted_vmtools.protocols.tclo import TCLODispatcher
from twisted_vmtools.vmx.conformance_hgfs import STEPS, run_steps


def test_announced_and_registered_without_a_server() -> None:
    made: list[FileHandlerRegistry] = []

    def handlers() -> FileHandlerRegistry:
        made.append(FileHandlerRegistry())
        return made[-1]

    feature = HGFSFeature(Clock(), handlers=handlers)
    dispatcher = TCLODispatcher()
    feature.install(dispatcher)
    assert feature.capabilities == (HGFS_CAPABILITY,)
    assert b"f" in dispatcher.registered()
    assert feature._server is None and made == []  # nothing built yet
    assert result_of(dispatcher.handle(b"f")) == b"ERROR 1 argument required"  # answered by the server
    server = feature.server
    assert isinstance(server, HGFSServer) and server.handlers is made[0]
    result_of(dispatcher.handle(b"f garbage"))
    assert feature.server is server and len(made) == 1  # built once


def test_answers_as_the_server_does(tmp_path: Path) -> None:
    dispatcher = TCLODispatcher()
    HGFSFeature(Clock()).install(dispatcher)
    old = os.umask(0o022)
    try:
        seen = result_of(ensureDeferred(run_steps(dispatcher.handle, str(tmp_path / "tree"))))
    finally:
        os.umask(old)
    reference = TCLODispatcher()
    HGFSServer(Clock()).install(reference)
    os.umask(0o022)
    try:
        expected = result_of(ensureDeferred(run_steps(reference.handle, str(tmp_path / "other"))))
    finally:
        os.umask(old)
    assert list(seen) == [step.name for step in STEPS]
    assert {name: text.replace("other", "tree") for name, text in expected.items()} == seen


def test_the_journal_is_cleaned_at_install_and_sessions_cut_at_stop(tmp_path: Path) -> None:
    journal = UploadJournal(str(tmp_path / "journal"))
    leftover = tmp_path / ".f.vmtools-upload-0123456789abcdef"
    leftover.write_bytes(b"half an upload")
    journal.note(str(leftover))
    feature = HGFSFeature(Clock(), journal=journal, max_sessions=3)
    feature.install(TCLODispatcher())
    assert not leftover.exists()  # at start, before any packet
    assert feature.server.max_sessions == 3 and feature.server.journal is journal
    feature.server.sessions[None] = Session(None, 65536)
    feature.startService()
    feature.stopService()
    assert feature.server.sessions == {}  # cut off: the server stops with the feature


def test_stopping_an_unused_feature_builds_nothing() -> None:
    feature = HGFSFeature(Clock())
    feature.install(TCLODispatcher())
    feature.startService()
    feature.stopService()
    assert feature._server is None

