"""IGuestOperations over the VMX's TCLO queue to our guest, in memory (iosim): every method, and its errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.support import Harness, failure_of, result_of
from twisted_vmtools.codecs import vix
from twisted_vmtools.codecs.vix import VixCode
from twisted_vmtools.guest.accounts import GuestUser
from twisted_vmtools.guest.auth import IAuthenticator, invalid_login
from twisted_vmtools.guest.core import CoreFeature
from twisted_vmtools.guest.fileops_runner import InlineRunner
from twisted_vmtools.guest.processes import KILLED_EXIT_CODE, ProcessManager, PythonProcess, StartRequest
from twisted_vmtools.guest.vix_feature import VixFeature
from twisted_vmtools.vmx.guest_operations import (
    FileAttributes,
    GuestOperationError,
    GuestOperations,
    IGuestOperations,
    ProgramSpec,
)

LOGIN = vix.Credentials("tester", "secret")


@implementer(IAuthenticator)
class OnePassword:
    def authenticate(self, credentials: vix.Credentials) -> Deferred[GuestUser]:
        if credentials == LOGIN:
            return succeed(GuestUser.current())
        return fail(invalid_login(credentials.user))


class Guest:
    def __init__(self) -> None:
        self.vix: VixFeature | None = None

        def features(clock: Clock) -> list[Any]:
            self.vix = VixFeature(clock, authenticator=OnePassword(), files=InlineRunner(),
                                  processes=ProcessManager(clock, now=clock.seconds))
            return [CoreFeature(primary_ip=lambda: None), self.vix]

        self.harness = Harness(features=features)
        self.harness.start()
        self.ops = GuestOperations(self.harness.vmx.send)

    def run(self, d: Deferred[Any]) -> Any:
        self.harness.settle()
        return result_of(d)

    def error(self, d: Deferred[Any]) -> GuestOperationError:
        self.harness.settle()
        error = failure_of(d).value
        assert isinstance(error, GuestOperationError)
        return error


@pytest.fixture
def guest() -> Guest:
    return Guest()


def test_provides_the_interface(guest: Guest) -> None:
    assert verifyObject(IGuestOperations, guest.ops)


def test_files(guest: Guest, tmp_path: Path) -> None:
    ops, d = guest.ops, str(tmp_path / "a" / "b")
    error = guest.error(ops.make_directory(LOGIN, d))
    assert (error.code, error.fault) == (VixCode.FILE_NOT_FOUND, "FileNotFound")
    guest.run(ops.make_directory(LOGIN, d, create_parent_directories=True))
    temp = guest.run(ops.create_temporary_file(LOGIN, "p", ".s", d))
    assert os.path.isfile(temp) and os.path.basename(temp).startswith("pvmware")
    tempdir = guest.run(ops.create_temporary_directory(LOGIN, directory_path=d))
    assert os.path.isdir(tempdir)
    listing = guest.run(ops.list_files(LOGIN, d))
    assert sorted(f.name for f in listing.files) == sorted([".", "..", os.path.basename(temp),
                                                           os.path.basename(tempdir)])
    assert listing.remaining == 0
    moved = d + "/moved"
    guest.run(ops.move_file(LOGIN, temp, moved))
    assert guest.error(ops.move_file(LOGIN, temp, moved)).fault == "FileNotFound"
    guest.run(ops.change_file_attributes(LOGIN, moved, FileAttributes(modification_time=1234, permissions=0o600)))
    assert os.stat(moved).st_mtime == 1234 and os.stat(moved).st_mode & 0o777 == 0o600
    info = guest.run(ops.initiate_file_transfer_from_guest(LOGIN, moved))
    assert (info.attributes.name, info.size) == (moved, 0)
    assert guest.error(ops.initiate_file_transfer_to_guest(LOGIN, moved, FileAttributes(), 5)).fault == (
        "FileAlreadyExists")
    guest.run(ops.initiate_file_transfer_to_guest(LOGIN, moved, FileAttributes(), 5, overwrite=True))
    guest.run(ops.move_directory(LOGIN, tempdir, d + "/dir"))
    assert guest.error(ops.delete_file(LOGIN, d + "/dir")).fault == "NotAFile"
    guest.run(ops.delete_file(LOGIN, moved))
    assert guest.error(ops.delete_directory(LOGIN, str(tmp_path / "a"))).fault == "DirectoryNotEmpty"
    guest.run(ops.delete_directory(LOGIN, str(tmp_path / "a"), recursive=True))
    assert not (tmp_path / "a").exists()


def test_processes(guest: Guest) -> None:
    assert guest.vix is not None

    async def waiting(process: PythonProcess) -> int:
        await process.stdin.read()
        return 9

    guest.vix.processes.register("waiting", waiting)
    ops = guest.ops
    pid = guest.run(ops.start_program(LOGIN, ProgramSpec("waiting", "x", None, ("A=1",))))
    [info] = guest.run(ops.list_processes(LOGIN, (pid,)))
    assert (info.pid, info.name, info.end_time) == (pid, "waiting x", 0)
    guest.run(ops.terminate_process(LOGIN, pid))
    [info] = guest.run(ops.list_processes(LOGIN, (pid,)))
    assert info.exit_code == KILLED_EXIT_CODE
    assert guest.error(ops.terminate_process(LOGIN, pid)).fault == "GuestProcessNotFound"
    assert guest.error(ops.start_program(LOGIN, ProgramSpec("/no/such"))).fault == "FileNotFound"
    env = guest.run(ops.read_environment_variable(LOGIN, ("USER",)))
    assert env == [f"USER={GuestUser.current().name}"]


def test_a_large_process_listing_pages(guest: Guest) -> None:
    assert guest.vix is not None
    guest.vix.processes.register("n", lambda process: 0)
    for _ in range(700):  # ~150 bytes each: more than one 64 KiB reply
        guest.vix.processes.start(StartRequest("n", "y" * 60), GuestUser.current())
    listed = guest.run(guest.ops.list_processes(LOGIN))
    assert len([p for p in listed if p.cmd == "n"]) == 700


def test_wrong_login(guest: Guest, tmp_path: Path) -> None:
    error = guest.error(guest.ops.make_directory(vix.Credentials("tester", "nope"), str(tmp_path / "x")))
    assert (error.code, error.fault) == (VixCode.INVALID_LOGIN_CREDENTIALS, "InvalidGuestLogin")
    assert not (tmp_path / "x").exists()


def test_names_that_are_not_utf8(guest: Guest, tmp_path: Path) -> None:
    # Asked for: refused before anything is sent.  Found in the guest: listed as vmtoolsd lists them.
    error = guest.error(guest.ops.make_directory(LOGIN, str(tmp_path / "caf\udce9")))
    assert error.code == VixCode.INVALID_ARG and "is not UTF-8" in str(error)
    (tmp_path / os.fsdecode(b"caf\xe9")).touch()
    listed = guest.run(guest.ops.list_files(LOGIN, str(tmp_path)))
    assert vix.UNREPRESENTABLE_NAME in [f.name for f in listed.files]


def test_tools_properties(guest: Guest) -> None:
    properties = guest.run(guest.ops.tools_properties())
    assert properties[vix.Property.GUEST_TOOLS_PRODUCT_NAME] == "twisted_vmtools"


def test_a_guest_without_guest_operations() -> None:
    harness = Harness(features=lambda clock: [CoreFeature(primary_ip=lambda: None)])
    harness.start()
    sent = GuestOperations(harness.vmx.send).delete_file(LOGIN, "/x")
    harness.settle()
    error = failure_of(sent).value
    assert isinstance(error, GuestOperationError) and error.fault == "OperationNotSupportedByGuest"
