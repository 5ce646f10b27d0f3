"""``vmtools-sim guest VERB``: guest operations through a running simulator, as vCenter would ask them.

Each verb is one entry of `VERBS`: a function adding its arguments to its
sub-parser, and a coroutine running it against the simulator's control
socket.  A new verb is a new entry.  The transfers (``upload``, ``download``)
log in (``-l user:password``, as every guest verb), ask
InitiateFileTransferToGuest/FromGuest first, then move their bytes as HGFS
packets in Vix HGFS_SEND_PACKET commands carrying the login (`HGFSClient`
over `GuestOperations.hgfs_sender`), as ESXi does: the guest performs each
packet as that account.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from twisted.internet.defer import Deferred

from ..archive import ArchiveError, extract, tar_stream
from ..codecs import hgfs
from ..codecs.vix import Credentials, VixCode
from ..exit_codes import UsageError
from .control import ControlClient, SendTCLO
from .guest_operations import ARCHIVE_PREFIX, FileAttributes, GuestOperationError, GuestOperations
from .hgfs_client import HGFSClient, HGFSClientError, with_session

TRANSFER_TIMEOUT = 60.0  # per packet: a guest writing a large file to a slow disk
VIX_TIMEOUT = 60.0  # per operation: a recursive delete of a large tree takes a while
LOGIN_VARIABLE = "VMTOOLS_SIM_GUEST_LOGIN"
PROGRESS_MIN = 1 << 20  # a bar only for transfers of at least this many bytes, and only on a terminal
Connect = Callable[[Any, str], Awaitable[ControlClient]]


@dataclass(frozen=True)
class Verb:
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[ControlClient, argparse.Namespace], Awaitable[int]]


def guest_operations(control: ControlClient, timeout: float = VIX_TIMEOUT) -> GuestOperations:
    """`GuestOperations` whose TCLO commands ride the control channel's ``SendTCLO``."""

    def send(command: bytes) -> Deferred[bytes]:
        sent: Deferred[dict[str, Any]] = control.callRemote(SendTCLO, command=command, timeout=timeout)
        return sent.addCallback(lambda result: result["reply"])

    return GuestOperations(send)


def parse_login(value: str | None) -> Credentials:
    if not value:
        raise UsageError(f"guest: no guest login: -l user:password or ${LOGIN_VARIABLE}")
    user, colon, password = value.partition(":")
    if not colon or not user:
        raise UsageError("guest: the login must be user:password")
    return Credentials(user, password)


def with_login(arguments: Callable[[argparse.ArgumentParser], None]) -> Callable[[argparse.ArgumentParser], None]:
    """A verb's arguments and ``-l user:password`` (default: ``$VMTOOLS_SIM_GUEST_LOGIN``, as govc's)."""

    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-l", dest="login", default=os.environ.get(LOGIN_VARIABLE),
                            help=f"guest login user:password (default: ${LOGIN_VARIABLE})")
        arguments(parser)

    return add


def add_guest_parser(sub: Any, with_socket: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    guest = with_socket(sub.add_parser("guest", help="guest operations (file transfers) through the VMX"))
    verbs = guest.add_subparsers(dest="guest_verb", required=True)
    for name, verb in VERBS.items():
        verb.arguments(with_socket(verbs.add_parser(name, help=verb.help)))


async def run_guest(reactor: Any, args: argparse.Namespace, connect: Connect) -> int:
    control = await connect(reactor, args.socket)
    try:
        return await VERBS[args.guest_verb].run(control, args)
    except (HGFSClientError, ArchiveError, OSError) as error:
        print(f"vmtools-sim guest {args.guest_verb}: {error}", file=sys.stderr)
        return 1
    except TransferRefused as error:
        print(f"vmtools-sim guest {args.guest_verb}: {error}", file=sys.stderr)
        return 1


class TransferRefused(Exception):
    """InitiateFileTransfer* said no: one sentence saying why, for the user."""


def refused(error: GuestOperationError, path: str, login: Credentials) -> TransferRefused:
    """The guest's Vix error for a transfer of ``path``, as one sentence."""
    reasons: dict[int, str] = {
        VixCode.FILE_ALREADY_EXISTS: f"{path} exists in the guest (-f to overwrite)",
        VixCode.NOT_A_FILE: f"{path} is not a file in the guest",
        VixCode.NOT_A_DIRECTORY: f"{path} is not a directory in the guest",
        VixCode.FILE_NOT_FOUND: f"{path}: no such file or directory in the guest",
        VixCode.FILE_ACCESS_ERROR: f"{path}: permission denied for {login.user} in the guest",
        VixCode.INVALID_LOGIN_CREDENTIALS: f"the guest refused the login of {login.user} (user name or password)",
        VixCode.GUEST_USER_PERMISSIONS: f"the guest cannot act as {login.user}",
        VixCode.FILE_NAME_INVALID: f"{path}: its directory does not exist in the guest",
    }
    return TransferRefused(reasons.get(error.code, f"{path}: {error.fault} ({error})"))


class _Progress:
    """A tqdm bar on a terminal for large transfers; nothing when piped (or without tqdm)."""

    def __init__(self, total: int | None, label: str) -> None:
        self.bar: Any = None
        if sys.stderr.isatty() and (total is None or total >= PROGRESS_MIN):
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=False)

    def __call__(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- upload -----------------------------------------------------------------------------------------------------


def _upload_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="a local file or directory ('-': standard input)")
    parser.add_argument("dst", metavar="DST", help="the guest path (a directory is unpacked there)")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite DST if it exists")


async def _upload(control: ControlClient, args: argparse.Namespace) -> int:
    ops, login = guest_operations(control), parse_login(args.login)
    tree = args.src != "-" and os.path.isdir(args.src)
    dst = ARCHIVE_PREFIX + args.dst if tree and not args.dst.startswith(ARCHIVE_PREFIX) else args.dst
    try:
        await ops.initiate_file_transfer_to_guest(login, dst, FileAttributes(), 0, args.force)
    except GuestOperationError as error:
        raise refused(error, args.dst, login) from None
    client = HGFSClient(ops.hgfs_sender(login))
    await client.start()
    try:
        if tree:
            pieces = tar_stream(args.src, chunk_size=client.io_size)
            progress = _Progress(None, "upload")
            await client.upload(dst, _reader(pieces, progress), overwrite=args.force)
        else:
            source: IO[bytes] = sys.stdin.buffer if args.src == "-" else open(args.src, "rb")  # noqa: SIM115
            with source:
                info = os.fstat(source.fileno())
                size = info.st_size if stat.S_ISREG(info.st_mode) else None
                progress = _Progress(size, "upload")

                def read(count: int) -> bytes:
                    data = source.read(count)
                    progress(len(data))
                    return data

                mode = stat.S_IMODE(info.st_mode) if args.src != "-" else 0o644
                await client.upload(dst, read, overwrite=args.force, permissions=mode)
        progress.close()
    finally:
        if client.session_id is not None:
            await client.stop()
    return 0


def _reader(pieces: Iterator[bytes], progress: _Progress) -> Callable[[int], bytes]:
    """Regroup a stream of pieces into reads of the size the client asks."""
    pending = bytearray()

    def read(count: int) -> bytes:
        while len(pending) < count:
            piece = next(pieces, None)
            if piece is None:
                break
            pending.extend(piece)
        data = bytes(pending[:count])
        del pending[:count]
        progress(len(data))
        return data

    return read


# --- download ---------------------------------------------------------------------------------------------------


def _download_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="the guest path (a directory comes as an archive)")
    parser.add_argument("dst", metavar="DST", help="a local file or directory ('-': standard output)")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite DST if it exists")


async def _download(control: ControlClient, args: argparse.Namespace) -> int:
    ops, login = guest_operations(control), parse_login(args.login)
    src = args.src
    try:
        try:
            info = (await ops.initiate_file_transfer_from_guest(login, src)).attributes
        except GuestOperationError as error:
            if error.code != VixCode.NOT_A_FILE or src.startswith(ARCHIVE_PREFIX):
                raise
            src = ARCHIVE_PREFIX + src  # a directory comes as an archive
            info = (await ops.initiate_file_transfer_from_guest(login, src)).attributes
    except GuestOperationError as error:
        raise refused(error, args.src, login) from None

    async def move(client: HGFSClient) -> None:
        if args.dst == "-":
            await client.download(src, _stdout_writer())
        elif src.startswith(ARCHIVE_PREFIX):
            await _download_tree(client, src, args.dst, args.force)
        else:
            await _download_file(client, src, args.dst, args.force, info.size, info.permissions)

    await with_session(ops.hgfs_sender(login), move)
    return 0


def _stdout_writer() -> Callable[[bytes], object]:
    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        out.write(data)

    return write


async def _download_file(client: HGFSClient, src: str, dst: str, force: bool, size: int, mode: int) -> None:
    if os.path.isdir(dst):
        dst = os.path.join(dst, os.path.basename(src.rstrip("/")))
    if os.path.lexists(dst) and not force:
        raise FileExistsError(f"{dst} exists (-f to overwrite)")
    directory = os.path.dirname(os.path.abspath(dst))
    progress = _Progress(size if size < hgfs.UNKNOWN_SIZE else None, "download")
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".vmtools-download-", delete=False) as temp:
        try:
            def write(data: bytes) -> None:
                temp.write(data)
                progress(len(data))

            await client.download(src, write)
            temp.flush()
            os.chmod(temp.name, mode & 0o777 or 0o644)
            os.replace(temp.name, dst)  # only a complete download replaces anything
        except BaseException:
            os.unlink(temp.name)
            raise
        finally:
            progress.close()


async def _download_tree(client: HGFSClient, src: str, dst: str, force: bool) -> None:
    if os.path.exists(dst) and os.listdir(dst) and not force:
        raise FileExistsError(f"{dst} exists and is not empty (-f to unpack into it)")
    progress = _Progress(None, "download")
    # Spooled to disk, not memory: the archive may be larger than this machine's RAM.
    with tempfile.TemporaryFile(prefix="vmtools-archive-") as spool:
        def write(data: bytes) -> None:
            spool.write(data)
            progress(len(data))

        await client.download(src, write)
        progress.close()
        spool.seek(0)
        extract(spool, dst)


VERBS: dict[str, Verb] = {
    "upload": Verb("copy a file or directory into the guest (HGFS)", with_login(_upload_arguments), _upload),
    "download": Verb("copy a file or directory out of the guest (HGFS)", with_login(_download_arguments), _download),
}
