"""The helper process that serves HGFS packets as one guest user.

Started by the tools (as root) for an account other than their own, it drops
to that account's uid, gid and groups for good before importing anything
else, then runs an ordinary `HGFSServer` (plain files, directories as
archives, procfs files) whose every open, create, rename and unpacking the
kernel checks against that account, and whose new files are that account's.
Packets come and go on fd 3, a Unix socket, as frames: ``>II`` (length, tag)
then the bytes; each reply carries its request's tag.  When the socket
closes the helper cuts off what is open (uploads leave no temporary) and
exits.  The wire is private between the tools and their helper.
"""

from __future__ import annotations

import os
import socket
import struct
import sys

FRAME = struct.Struct(">II")  # length of what follows, the request's tag
CHANNEL_FD = 3
FIRST_HANDLE = 1 << 31  # the helper's handles never equal the tools' own (see hgfs_users)


def journal_directory(home: str) -> str | None:
    """Where this account's uploads in progress are noted (cleaned at the next start), if it can write there."""
    if not os.path.isdir(home) or not os.access(home, os.W_OK | os.X_OK):
        return None
    return os.path.join(home, ".local", "state", "twisted_vmtools", "hgfs")


def main(argv: list[str]) -> int:
    uid, gid, home, groups = int(argv[0]), int(argv[1]), argv[2], [int(g) for g in argv[3:]]
    # Everything is imported first, as root: the account may not be able to read the interpreter's
    # libraries (a /root/.pyenv), and nothing it could change is read after this point.
    import importlib

    for module in ("tarfile", "zlib", "gzip", "bz2", "lzma", "twisted.internet.threads", "twisted.python.threadpool"):
        try:  # what archives and their unpacking thread load on first use
            importlib.import_module(module)
        except ImportError:
            pass
    from twisted_vmtools.heap import keep_packets_in_heap

    keep_packets_in_heap()  # as the tools do: half-megabyte packets without a fresh mapping (and its faults) each
    from twisted.internet import reactor

    from twisted_vmtools.guest.fileops_helper import become
    from twisted_vmtools.guest.hgfs_files import UploadJournal
    from twisted_vmtools.guest.hgfs_server import HGFSServer
    from twisted_vmtools.guest.hgfs_users import HelperSide, helper_handlers

    become(uid, gid, groups, home)
    os.umask(0o022)
    channel = socket.socket(fileno=CHANNEL_FD)
    channel.setblocking(False)
    server = HGFSServer(reactor, handlers=helper_handlers(reactor), journal=UploadJournal(journal_directory(home)),
                        first_handle=FIRST_HANDLE)
    for temp in server.journal.clean():
        print(f"hgfs helper: removed {temp}, an upload cut off by the last stop", file=sys.stderr)
    factory = HelperSide.factory(server, reactor.stop)  # type: ignore[attr-defined]
    reactor.adoptStreamConnection(channel.fileno(), socket.AF_UNIX, factory)  # type: ignore[attr-defined]
    channel.close()  # adopted: the reactor holds its own copy
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
