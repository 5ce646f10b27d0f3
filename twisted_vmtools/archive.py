"""Directory trees as tar streams, both ways, a bounded piece at a time.

`tar_stream` yields a tar (optionally gzip'd) of a directory or file in pieces
of at most ``chunk_size`` bytes of file data, so a caller can move a tree of any
size without holding it.  `extract` unpacks a stream with tarfile's ``data``
filter: members with ``..`` or absolute names, devices, and links pointing
outside the target are refused, and the extraction stops there.  Used by the
guest's archive handler and by the simulated VMX's command line alike.
"""

from __future__ import annotations

import io
import os
import stat
import zlib
from collections.abc import Iterator
from typing import IO

from twisted.logger import Logger

FORMATS = ("", "tar", "tgz")
DEFAULT_CHUNK = 256 * 1024
# tarfile is imported by the functions that make or unpack an archive, not with this module: the
# guest's Vix and HGFS servers import it for its formats and errors, and most guests never move a tree.
_GZIP_MAGIC = b"\x1f\x8b"

log = Logger()


class ArchiveError(ValueError):
    """An archive that cannot be made or unpacked as asked."""


def check_format(fmt: str) -> bool:
    """Whether ``fmt`` names a format; True for gzip."""
    if fmt not in FORMATS:
        raise ArchiveError(f"archive format {fmt!r} is not one of tar, tgz")
    return fmt == "tgz"


class _Compressor:
    def __init__(self, gzip: bool) -> None:
        self._zlib = zlib.compressobj(6, zlib.DEFLATED, 31) if gzip else None

    def __call__(self, data: bytes) -> bytes:
        return self._zlib.compress(data) if self._zlib is not None else data

    def flush(self) -> bytes:
        return self._zlib.flush() if self._zlib is not None else b""


def tar_stream(root: str, *, prefix: str = "", gzip: bool = False, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
    """The tar of ``root`` (a directory: its entries, relative; a file: one entry), piece by piece.

    ``prefix`` is put before every entry name.  Files that cannot be read are
    left out (logged), as are sockets and devices.  Pieces may be empty when
    compressing; the concatenation is the archive.
    """
    import tarfile

    out = _Compressor(gzip)
    info_of = tarfile.TarFile(fileobj=io.BytesIO(), mode="w")
    written = 0
    for path, name in _entries(root, prefix):
        try:
            info = info_of.gettarinfo(path, name)
        except OSError as error:
            log.info("archive: {path} left out: {error}", path=path, error=str(error))
            continue
        if not (info.isreg() or info.isdir() or info.issym()):
            continue
        handle = None
        if info.isreg():
            try:
                handle = open(path, "rb")  # noqa: SIM115 - closed below, after its chunks are yielded
            except OSError as error:
                log.info("archive: {path} left out: {error}", path=path, error=str(error))
                continue
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        written += len(header)
        yield out(header)
        if handle is not None:
            with handle:
                for piece in _file_pieces(handle, info.size, chunk_size):
                    written += len(piece)
                    yield out(piece)
    end = b"\0" * (2 * tarfile.BLOCKSIZE)
    written += len(end)
    padding = -written % tarfile.RECORDSIZE
    yield out(end + b"\0" * padding)
    yield out.flush()


def _file_pieces(handle: IO[bytes], size: int, chunk_size: int) -> Iterator[bytes]:
    """Exactly ``size`` bytes then the block padding: a file that shrank is padded, one that grew cut."""
    remaining = size
    while remaining:
        piece = handle.read(min(chunk_size, remaining)) or b"\0" * min(chunk_size, remaining)
        remaining -= len(piece)
        yield piece
    import tarfile  # already loaded by tar_stream

    if size % tarfile.BLOCKSIZE:
        yield b"\0" * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE)


def _entries(root: str, prefix: str) -> Iterator[tuple[str, str]]:
    prefix = prefix.strip("/")
    if not os.path.isdir(root) or os.path.islink(root):
        yield root, _join(prefix, os.path.basename(root.rstrip("/")))
        return
    for directory, dirs, files in os.walk(root, onerror=lambda e: log.info("archive: {e}", e=str(e))):
        dirs.sort()
        relative = os.path.relpath(directory, root)
        base = "" if relative == "." else relative
        for name in dirs + sorted(files):
            path = os.path.join(directory, name)
            yield path, _join(prefix, os.path.join(base, name))
        # os.walk lists symlinks to directories in dirs without entering them (followlinks=False): good.


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def extract(stream: IO[bytes], target: str) -> list[str]:
    """Unpack a tar or tgz ``stream`` into the directory ``target`` (created if missing).

    Refuses (`ArchiveError`) what tarfile's data filter refuses, and input that
    is not a tar; returns the member names extracted.
    """
    import tarfile

    os.makedirs(target, exist_ok=True)
    names: list[str] = []
    directories: list[tarfile.TarInfo] = []
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as archive:
            for member in archive:
                if member.name.startswith("/"):  # the data filter would strip the slash; we refuse
                    raise ArchiveError(f"refused archive member {member.name!r}: absolute path")
                try:
                    safe = tarfile.data_filter(member, target)
                except tarfile.FilterError as error:
                    raise ArchiveError(f"refused archive member {member.name!r}: {error}") from error
                if safe is None:
                    continue
                # A directory's mode comes last: a read-only one must still receive its files.
                archive.extract(safe, target, set_attrs=not safe.isdir(), filter="fully_trusted")
                if safe.isdir():
                    directories.append(safe.replace(mode=member.mode, deep=False))
                elif safe.isreg():
                    _restore_mode(safe.name, member.mode, target)
                names.append(member.name)
    except (tarfile.TarError, EOFError, zlib.error) as error:
        raise ArchiveError(f"not a tar archive: {error}") from error
    for directory in reversed(directories):
        _restore_mode(directory.name, directory.mode, target)
    return names


def _restore_mode(name: str, mode: int | None, target: str) -> None:
    """The data filter drops group/other write bits; a round trip keeps what the archive says
    (still without set-id bits, which it also clears).  Never through a symlink."""
    path = os.path.join(target, name)
    if mode is not None and not os.path.islink(path):
        os.chmod(path, stat.S_IMODE(mode) & 0o777)


def is_gzip(head: bytes) -> bool:
    return head.startswith(_GZIP_MAGIC)
