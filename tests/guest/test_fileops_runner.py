"""File operations as another user: one helper process per user, which drops to the user (root only)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor

from twisted_vmtools.codecs import vix
from twisted_vmtools.codecs.vix import Op, VixCode
from twisted_vmtools.guest.accounts import GuestUser
from twisted_vmtools.guest.fileops_helper import FRAME, answer, serve
from twisted_vmtools.guest.fileops_runner import FileOperationRunner
from twisted_vmtools.guest.vix_errors import VixOperationError


def test_helper_frames(tmp_path: Path) -> None:
    import io

    requests = io.BytesIO()
    for op, body in [(Op.CREATE_DIRECTORY_EX, vix.PathRequest(str(tmp_path / "d"))),
                     (Op.CREATE_DIRECTORY_EX, vix.PathRequest(str(tmp_path / "d")))]:
        payload = b"%d " % op + body.encode()
        requests.write(FRAME.pack(len(payload)) + payload)
    requests.seek(0)
    answers = io.BytesIO()
    serve(requests, answers)
    data = answers.getvalue()
    replies = []
    while data:
        (length,) = FRAME.unpack_from(data)
        replies.append(vix.decode_reply(data[4 : 4 + length], binary=True))
        data = data[4 + length :]
    assert [r.error for r in replies] == [VixCode.OK, VixCode.FILE_ALREADY_EXISTS]
    assert b"exists" in replies[1].result
    assert vix.decode_reply(answer(b"x"), binary=True).error == VixCode.INVALID_MESSAGE_BODY


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_operations_run_as_the_user_in_one_helper(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("acting as another user needs root")
    nobody = GuestUser.from_passwd(pwd.getpwnam("nobody"))
    shared = Path("/tmp") / f"vix-runner-{os.getpid()}"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    try:
        runner = FileOperationRunner(global_reactor)
        made = await runner.run(Op.CREATE_TEMPORARY_FILE_EX, vix.CreateTemporary(directory=str(shared)), nobody)
        assert Path(made.decode()).stat().st_uid == nobody.uid
        helper = runner._helpers[nobody.uid]
        with pytest.raises(VixOperationError) as caught:
            await runner.run(Op.CREATE_DIRECTORY_EX, vix.PathRequest("/root/never"), nobody)
        assert caught.value.code == VixCode.FILE_ACCESS_ERROR and not Path("/root/never").exists()
        assert runner._helpers[nobody.uid] is helper  # the same helper served both
        runner.stop()
        assert not helper.alive
    finally:
        for leftover in shared.iterdir():
            leftover.unlink()
        shared.rmdir()
