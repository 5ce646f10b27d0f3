"""The helper process that runs one file operation as a guest user.

Started by the command server (as the service's own user, root), it imports
what it needs, then drops to the user's uid, gid and groups for good, and
only then reads the request: ``<op as decimal> <Vix body>`` on stdin.  It
answers on stdout in the Vix reply form ``<error> <errno> <result>``.  One
process per operation: setuid in the service itself would change the
identity of every thread, and a fresh process keeps nothing of the last
user's.  Stdlib and codecs only: no reactor is imported here.
"""

from __future__ import annotations

import os
import sys

from twisted_vmtools.codecs import vix
from twisted_vmtools.guest import fileops
from twisted_vmtools.guest.vix_errors import VixOperationError


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
        sys.stderr.write(f"{error}\n")
        return vix.Reply(error.code, error.errno, binary=True).encode()
    except vix.VixCodecError as error:
        sys.stderr.write(f"{error}\n")
        return vix.Reply(error.code, 0, binary=True).encode()
    except ValueError as error:
        sys.stderr.write(f"{error}\n")
        return vix.Reply(vix.VixCode.INVALID_MESSAGE_BODY, 0, binary=True).encode()


def main(argv: list[str]) -> int:
    uid, gid, home, groups = int(argv[0]), int(argv[1]), argv[2], [int(g) for g in argv[3:]]
    become(uid, gid, groups, home)
    os.umask(0o022)
    sys.stdout.buffer.write(answer(sys.stdin.buffer.read(vix.MAX_MESSAGE)))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
