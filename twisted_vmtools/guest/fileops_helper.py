"""The helper process that runs file operations as one guest user.

Started by the command server (as the service's own user, root), it imports
what it needs, then drops to the user's uid, gid and groups for good, and
only then reads requests.  Each request and each answer is a frame: a
big-endian 32-bit length, then the bytes.  A request is ``<op as decimal>
<Vix body>``; an answer is a Vix reply ``<error> <errno> <result>`` whose
result, on failure, is the error's text.  It serves one user until its stdin
closes (the runner closes it after a quiet spell).  setuid in the service
itself would change the identity of every thread; a process of its own keeps
the user's work apart.  Stdlib and codecs only: no reactor is imported here.
"""

from __future__ import annotations

import os
import struct
import sys
from typing import BinaryIO

from twisted_vmtools.codecs import vix
from twisted_vmtools.guest import fileops
from twisted_vmtools.guest.vix_errors import VixOperationError

FRAME = struct.Struct(">I")


def become(uid: int, gid: int, groups: list[int], home: str) -> None:
    """Drop to the user for the rest of this process's life (groups first, uid last)."""
    if os.geteuid() != uid:
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise SystemExit("fileops helper: could not become the user")
    try:
        os.chdir(home)
    except OSError:
        os.chdir("/")


def answer(request: bytes) -> bytes:
    op_text, _, body = request.partition(b" ")
    try:
        op = int(op_text)
        return vix.Reply(vix.VixCode.OK, 0, fileops.perform(op, vix.decode_body(op, body)), binary=True).encode()
    except VixOperationError as error:
        return vix.Reply(error.code, error.errno, str(error).encode("utf-8", "replace"), binary=True).encode()
    except vix.VixCodecError as error:
        return vix.Reply(error.code, 0, str(error).encode("utf-8", "replace"), binary=True).encode()
    except ValueError as error:
        return vix.Reply(vix.VixCode.INVALID_MESSAGE_BODY, 0, str(error).encode(), binary=True).encode()


def read_frame(stream: BinaryIO) -> bytes | None:
    head = stream.read(FRAME.size)
    if len(head) < FRAME.size:
        return None
    (length,) = FRAME.unpack(head)
    if length > vix.MAX_MESSAGE:
        raise SystemExit("fileops helper: request too large")
    data = stream.read(length)
    return data if len(data) == length else None


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    while (request := read_frame(requests)) is not None:
        reply = answer(request)
        answers.write(FRAME.pack(len(reply)) + reply)
        answers.flush()


def main(argv: list[str]) -> int:
    uid, gid, home, groups = int(argv[0]), int(argv[1]), argv[2], [int(g) for g in argv[3:]]
    become(uid, gid, groups, home)
    os.umask(0o022)
    serve(sys.stdin.buffer, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
