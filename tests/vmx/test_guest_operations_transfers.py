"""IGuestOperations.upload/download: the Vix checks, then the bytes over HGFS, guest and VMX in memory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from tests.support import Harness, failure_of, result_of
from tests.vmx.test_guest_operations import LOGIN, OnePassword
from twisted_vmtools.guest.core import CoreFeature
from twisted_vmtools.guest.fileops_runner import InlineRunner
from twisted_vmtools.guest.hgfs_feature import HGFSFeature
from twisted_vmtools.guest.hgfs_files import UploadJournal
from twisted_vmtools.guest.hgfs_users_feature import UserHGFSFeature
from twisted_vmtools.guest.processes import ProcessManager
from twisted_vmtools.guest.vix_feature import VixFeature
from twisted_vmtools.service import default_file_handlers
from twisted_vmtools.vmx.guest_operations import FileAttributes, GuestOperationError, GuestOperations


class Guest:
    def __init__(self, journal: str) -> None:
        def features(clock: Clock) -> list[Any]:
            self.vix = VixFeature(clock, authenticator=OnePassword(), files=InlineRunner(),
                                  processes=ProcessManager(clock, now=clock.seconds))
            hgfs = HGFSFeature(clock, handlers=lambda: default_file_handlers(clock, self.vix.processes),
                               journal=UploadJournal(journal))
            users = UserHGFSFeature(clock, hgfs=hgfs, vix=self.vix)
            return [CoreFeature(primary_ip=lambda: None), self.vix, hgfs, users]

        self.harness = Harness(features=features)
        self.harness.start()
        self.ops = GuestOperations(self.harness.vmx.send)

    def run(self, d: Deferred[Any]) -> Deferred[Any]:
        for _ in range(10_000):
            if d.called:
                break
            self.harness.settle(0.01)
        return d


@pytest.fixture
def guest(tmp_path: Path) -> Guest:
    return Guest(str(tmp_path / "journal"))


def test_upload_and_download_stream(guest: Guest, tmp_path: Path) -> None:
    data = os.urandom(1_500_000)
    chunks = iter([data[i : i + 200_000] for i in range(0, len(data), 200_000)])
    path = str(tmp_path / "f.bin")
    count = result_of(guest.run(guest.ops.upload(LOGIN, path, lambda n: next(chunks, b""),
                                                 FileAttributes(permissions=0o640))))
    assert count == len(data) and Path(path).read_bytes() == data
    assert Path(path).stat().st_mode & 0o777 == 0o640
    received: list[bytes] = []
    assert result_of(guest.run(guest.ops.download(LOGIN, path, received.append))) == len(data)
    assert b"".join(received) == data


def test_overwrite_refused_and_bad_login(guest: Guest, tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")
    error = failure_of(guest.run(guest.ops.upload(LOGIN, str(path), lambda n: b"new"))).value
    assert isinstance(error, GuestOperationError) and path.read_bytes() == b"old"
    error = failure_of(guest.run(guest.ops.download(type(LOGIN)("tester", "wrong"), str(path), print))).value
    assert isinstance(error, GuestOperationError)

