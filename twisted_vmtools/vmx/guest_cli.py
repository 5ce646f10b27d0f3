"""``vmtools-sim guest VERB``: guest operations through a running simulator, as vCenter would ask them.

Each verb is one entry of `VERBS`: a function adding its arguments to its
sub-parser, and a coroutine running it against the simulator's control
socket.  A new verb is a new entry.  The transfers (``upload``, ``download``)
move their bytes as HGFS packets in ``f`` TCLO commands through the VMX
(`HGFSClient`), as ESXi does for InitiateFileTransferToGuest/FromGuest.
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
from ..codecs.hgfs import Data, FileType, Status
from ..codecs.tclo import HGFS_PREFIX, OK_PREFIX
from .control import ControlClient, SendTCLO
from .hgfs_client import HGFSClient, HGFSClientError

TRANSFER_TIMEOUT = 60.0  # per packet: a guest writing a large file to a slow disk
PROGRESS_MIN = 1 << 20  # a bar only for transfers of at least this many bytes, and only on a terminal
Connect = Callable[[Any, str], Awaitable[ControlClient]]


@dataclass(frozen=True)
class Verb:
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[ControlClient, argparse.Namespace], Awaitable[int]]


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


def hgfs_client(control: ControlClient, **options: Any) -> HGFSClient:
    """An HGFS client whose packets ride TCLO ``f`` commands through the simulator."""

    def send(packet: bytes) -> Deferred[Data]:
        command = HGFS_PREFIX + packet
        sent: Deferred[dict[str, Any]] = control.callRemote(SendTCLO, command=command, timeout=TRANSFER_TIMEOUT)
        return sent.addCallbacks(_hgfs_reply, _transport_failed)

    return HGFSClient(send, **options)


def _transport_failed(failure: Any) -> bytes:
    """The simulator could not deliver the packet (the guest went away, timed out, …)."""
    if failure.check(HGFSClientError):
        failure.raiseException()
    raise HGFSClientError(0, Status.TRANSPORT_ERROR, failure.getErrorMessage())


def _hgfs_reply(result: dict[str, Any]) -> Data:
    reply: bytes = result["reply"]
    if not reply.startswith(OK_PREFIX):
        raise HGFSClientError(0, Status.TRANSPORT_ERROR, reply[:200].decode("utf-8", "replace"))
    return memoryview(reply)[len(OK_PREFIX) :]  # a view: the client copies the file data out once


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
    client = hgfs_client(control)
    await client.start()
    try:
        if args.src != "-" and os.path.isdir(args.src):
            pieces = tar_stream(args.src, chunk_size=client.io_size)
            progress = _Progress(None, "upload")
            await client.upload("/archive:" + args.dst, _reader(pieces, progress), overwrite=args.force)
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
                await client.upload(args.dst, read, overwrite=args.force, permissions=mode)
        progress.close()
    finally:
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
    client = hgfs_client(control)
    await client.start()
    try:
        attr = await client.getattr(args.src)
        tree = attr.type == FileType.DIRECTORY or args.src.startswith("/archive:")
        if args.dst == "-":
            await client.download(args.src, _stdout_writer())
        elif tree:
            await _download_tree(client, args.src, args.dst, args.force)
        else:
            await _download_file(client, args.src, args.dst, args.force, attr)
    finally:
        await client.stop()
    return 0


def _stdout_writer() -> Callable[[bytes], object]:
    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        out.write(data)

    return write


async def _download_file(client: HGFSClient, src: str, dst: str, force: bool, attr: hgfs.AttrV2) -> None:
    if os.path.isdir(dst):
        dst = os.path.join(dst, os.path.basename(src.rstrip("/")))
    if os.path.lexists(dst) and not force:
        raise FileExistsError(f"{dst} exists (-f to overwrite)")
    directory = os.path.dirname(os.path.abspath(dst))
    progress = _Progress(attr.size if attr.size < hgfs.UNKNOWN_SIZE else None, "download")
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".vmtools-download-", delete=False) as temp:
        try:
            def write(data: bytes) -> None:
                temp.write(data)
                progress(len(data))

            await client.download(src, write)
            temp.flush()
            os.chmod(temp.name, attr.mode & 0o777 or 0o644)
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
    "upload": Verb("copy a file or directory into the guest (HGFS)", _upload_arguments, _upload),
    "download": Verb("copy a file or directory out of the guest (HGFS)", _download_arguments, _download),
}
