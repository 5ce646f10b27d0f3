"""Open files of the HGFS server: disk files at any 64-bit offset, and safe uploads.

An upload that replaces a file (a truncating or creating open) is written to a
temporary file beside the target and renamed into place only when the VMX
closes it; a transfer cut off (session destroyed or expired, tools stopped)
removes the temporary file and leaves the old file as it was.  A journal of
temporaries in progress lets the next start remove what a crash left behind;
their names are recognizable (``.NAME.vmtools-upload-XXXXXXXX``) so nothing
else is ever touched.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

TEMP_MARK = ".vmtools-upload-"
_TEMP_NAME = re.compile(r"^\..+" + re.escape(TEMP_MARK) + r"[0-9a-f]{16}$")

log = Logger()


class IFileHandle(Interface):
    """An open HGFS file: what OpenV3 returns a handle to.

    Each method does at most one packet's worth of I/O before returning; a
    handle whose data comes from elsewhere (a process, an archive) returns a
    Deferred instead of blocking.
    """

    name = Attribute("a description for logs")

    def read(offset: int, size: int) -> bytes | Deferred[bytes]:
        """Up to ``size`` bytes at ``offset``; b"" at the end."""

    def write(offset: int, data: bytes, append: bool) -> int | Deferred[int]:
        """Write ``data`` at ``offset`` (or at the end); the count written.

        ``data`` is bytes, or a memoryview into the request packet for a handle
        whose ``accepts_views`` attribute is true (it must not keep the view).
        """

    def close() -> None | Deferred[None]:
        """The VMX closed it: commit (an upload is renamed into place)."""

    def abort() -> None:
        """Cut off (session gone, tools stopping): undo what is not committed."""


class _PositionalIO:
    """Reads and writes at the offsets asked for (pread/pwrite) on ``self.fd``."""

    fd: int
    # `write` takes the packet's data as a view (pwrite needs no bytes object of its own).
    accepts_views = True

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def write(self, offset: int, data: bytes | memoryview, append: bool) -> int:
        if append:
            offset = os.fstat(self.fd).st_size
        return os.pwrite(self.fd, data, offset)


@implementer(IFileHandle)
class DiskFile(_PositionalIO):
    """A file opened in place: reads and writes at the offsets asked for (pread/pwrite)."""

    def __init__(self, path: str, flags: int, mode: int = 0o644) -> None:
        self.name = path
        # Not through a symlink at the end of the path: vmtoolsd opens with O_NOFOLLOW too.
        self.fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, mode)

    def close(self) -> None:
        self._release()

    def abort(self) -> None:
        self._release()

    def _release(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class UploadJournal:
    """Where in-progress temporaries are noted, so a restart can remove them.

    One small file per upload, holding the temporary's path.  ``None``
    directory: no journal (temporaries are still removed when cut off while
    running).
    """

    def __init__(self, directory: str | None) -> None:
        self.directory = Path(directory) if directory else None

    @classmethod
    def default(cls) -> UploadJournal:
        """``/var/lib/twisted_vmtools/hgfs`` for root, else under ``$XDG_STATE_HOME`` (or ~/.local/state)."""
        if os.geteuid() == 0:
            return cls("/var/lib/twisted_vmtools/hgfs")
        state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        return cls(os.path.join(state, "twisted_vmtools", "hgfs"))

    def note(self, temp: str) -> str | None:
        if self.directory is None:
            return None
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)  # on first use: most guests never upload
        entry = self.directory / (os.path.basename(temp) + ".pending")
        entry.write_bytes(os.fsencode(temp))  # the path's own bytes: a name need not be UTF-8
        return str(entry)

    def forget(self, entry: str | None) -> None:
        if entry is not None:
            with _quiet():
                os.unlink(entry)

    def clean(self) -> list[str]:
        """Remove the temporaries a previous run left; returns their paths."""
        removed: list[str] = []
        if self.directory is None or not self.directory.is_dir():
            return removed
        for entry in self.directory.glob("*.pending"):
            with _quiet():
                temp = os.fsdecode(entry.read_bytes())
                if _TEMP_NAME.match(os.path.basename(temp)):
                    with _quiet():
                        os.unlink(temp)
                        removed.append(temp)
            with _quiet():
                entry.unlink()
        return removed


def is_upload_temp(name: str) -> bool:
    return bool(_TEMP_NAME.match(name))


@implementer(IFileHandle)
class SafeUpload(_PositionalIO):
    """A file replaced as a whole: written beside the target, renamed into place on close.

    A new file gets ``mode`` less the umask (as open() would give it); one that
    replaces a file gets ``keep_mode``, the old file's.

    ``exclusive``: the target must not exist when the upload completes either
    (CREATE_SAFE, the no-overwrite transfer); it is linked into place, never
    over another file.
    """

    def __init__(
        self, target: str, mode: int, *, exclusive: bool, journal: UploadJournal, keep_mode: int | None = None
    ) -> None:
        self.name = target
        self.target = target
        self.exclusive = exclusive
        self.journal = journal
        directory, base = os.path.split(target)
        self.temp = os.path.join(directory, f".{base}{TEMP_MARK}{secrets.token_hex(8)}")
        self._entry = journal.note(self.temp)
        try:
            self.fd = os.open(self.temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except OSError:
            journal.forget(self._entry)
            raise
        if keep_mode is not None:
            os.fchmod(self.fd, keep_mode)  # replacing a file keeps its mode, as an O_TRUNC open would

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        try:
            os.close(fd)
            if self.exclusive:
                os.link(self.temp, self.target)  # EEXIST if someone else got there first
                os.unlink(self.temp)
            else:
                os.replace(self.temp, self.target)
        except OSError:
            self._discard()
            raise
        self.journal.forget(self._entry)

    def abort(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
            self._discard()

    def _discard(self) -> None:
        with _quiet():
            os.unlink(self.temp)
        self.journal.forget(self._entry)
        log.info("upload to {target} cut off: temporary removed", target=self.target)


class _quiet:
    """Ignore the OSError of a clean-up step (the file may already be gone)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, value: object, traceback: object) -> bool:
        return kind is not None and issubclass(kind, OSError)


def exists_error(path: str) -> OSError:
    return FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
