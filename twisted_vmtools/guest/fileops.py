"""The file operations of the Vix command server, as plain synchronous functions.

Each takes a decoded request body and returns the result bytes, or raises
`VixOperationError` with the code vmtoolsd answers for the same condition
(its checks, in its order: services/plugins/vix/vixTools.c).  They touch the
file system with the permissions of the process that runs them: the command
server runs them in a thread when it acts as its own user, and in a helper
process running as the user otherwise (`twisted_vmtools.guest.fileops_runner`).
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import stat
import tempfile
from collections.abc import Callable

from ..archive import FORMATS
from ..codecs import vix
from ..codecs.hgfs import UNKNOWN_SIZE
from ..codecs.vix import VixCode
from .virtual_paths import ARCHIVE_SCHEME, split_query, split_scheme
from .vix_errors import VixOperationError

MAX_INT32 = 2**31 - 1
TEMP_TAG = "vmware"  # vmtoolsd names temporary files <prefix>vmware<number><suffix>


def _os_error(error: OSError) -> VixOperationError:
    return VixOperationError.from_os_error(error)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise _os_error(error) from None


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            return None
        raise _os_error(error) from None


def _require_path(path: str) -> None:
    if not path:
        raise VixOperationError(VixCode.INVALID_ARG, "empty path")


def _missing(path: str) -> VixOperationError:
    return VixOperationError(VixCode.FILE_NOT_FOUND, f"{path}: no such file or directory", errno.ENOENT)


def file_info(path: str, name: str) -> vix.FileInfo | None:
    """One ``<fxi>`` as vmtoolsd prints it (None if the file vanished meanwhile: it is skipped)."""
    link = _lstat(path)
    if link is None:
        return None
    kind = vix.FileType.FILE
    target = ""
    if stat.S_ISLNK(link.st_mode):
        kind = vix.FileType.SYMLINK
        try:
            target = os.readlink(path)
        except OSError:
            target = ""
    elif stat.S_ISDIR(link.st_mode):
        kind = vix.FileType.DIRECTORY
    st = _stat(path) or link  # vmtoolsd reports the target's stat for a link, the link's if it dangles
    size = st.st_size if kind == vix.FileType.FILE else 0
    return vix.FileInfo(name, int(kind), size, int(st.st_mtime), int(st.st_atime), st.st_uid, st.st_gid,
                        st.st_mode, target)


# -- listing ---------------------------------------------------------------------------------------


def list_files(body: vix.ListFiles, max_result: int = vix.MAX_RESULT) -> bytes:
    """LIST_FILES: a directory's entries (``.`` and ``..`` first) or one file, paged as vmtoolsd pages."""
    if body.offset >= MAX_INT32 or body.index < 0 or body.max_results < 0:
        raise VixOperationError(VixCode.INVALID_ARG, "bad paging values")
    wanted = 0
    if body.max_results > 0:
        if body.offset >= body.max_results:
            raise VixOperationError(VixCode.INVALID_ARG, "offset beyond maxResults")
        wanted = body.max_results - body.offset
    _require_path(body.path)
    try:
        pattern = re.compile(body.pattern) if body.pattern else None
    except re.error:
        raise VixOperationError(VixCode.INVALID_ARG, f"bad pattern {body.pattern!r}") from None
    names, single = _names(body.path)
    if pattern is not None:
        names = [n for n in names if pattern.search(n)]
    return _page(body, names, single, wanted, max_result).encode()


def _names(path: str) -> tuple[list[str], bool]:
    link = _lstat(path)
    if link is not None and stat.S_ISDIR(link.st_mode):
        try:
            # Sorted, where vmtoolsd keeps readdir order: pages must be stable while a client walks them.
            return [".", ".."] + sorted(os.listdir(path)), False
        except OSError as error:
            raise _os_error(error) from None
    if link is None:
        raise _missing(path)
    return [path], True


def _page(body: vix.ListFiles, names: list[str], single: bool, wanted: int, max_result: int) -> vix.FileListing:
    start = body.index + body.offset
    if wanted <= 0:
        # vmtoolsd answers a request without maxResults with the count alone.
        return vix.FileListing((), len(names) - body.index if body.index < len(names) else 0)
    used = len("1 <rem>0000000000</rem>") + 1
    infos: list[vix.FileInfo] = []
    remaining = 0
    truncated = False
    for position in range(start, len(names)):
        name = names[position]
        info = file_info(name if single else os.path.join(body.path, name), name)
        if info is None:
            continue
        size = len(info.encode().encode("utf-8"))
        if used + size >= max_result:
            truncated = True
            remaining = len(names) - position
            break
        used += size
        infos.append(info)
        if len(infos) == wanted:
            remaining = len(names) - position - 1
            break
    return vix.FileListing(tuple(infos), remaining, truncated)


def _archive(path: str) -> tuple[str, dict[str, str]] | None:
    """``/archive:/path[?format=…&prefix=…]``: the directory (or file) and the query; None for other paths."""
    scheme, rest = split_scheme(path)
    if scheme != ARCHIVE_SCHEME:
        return None
    bare, query = split_query(rest)
    if query.get("format", "") not in FORMATS:
        raise VixOperationError(VixCode.INVALID_ARG, f"archive format {query['format']!r} is not one of tar, tgz")
    return bare, query


def _archive_from_guest(path: str, bare: str) -> bytes:
    """A tree read as an archive: it must exist and be readable (what the user cannot read is left out)."""
    link = _lstat(bare)
    if link is None:
        raise _missing(bare)
    wanted = os.R_OK | os.X_OK if stat.S_ISDIR(link.st_mode) else os.R_OK
    if not os.access(bare, wanted):
        raise VixOperationError(VixCode.FILE_ACCESS_ERROR, f"{bare} is not readable", errno.EACCES)
    # Its size is not known before it is made: the VMX reads until an empty read (as the Go toolbox reports).
    info = vix.FileInfo(path, int(vix.FileType.FILE), UNKNOWN_SIZE, int(link.st_mtime), int(link.st_atime),
                        link.st_uid, link.st_gid, stat.S_IFREG | 0o600)
    return info.encode().encode("utf-8")


def _archive_to_guest(bare: str, overwrite: bool) -> bytes:
    """A tree unpacked into ``bare``: a directory (existing only with overwrite) or a new one in a writable parent."""
    link = _lstat(bare)
    if link is not None:
        if not stat.S_ISDIR(link.st_mode):
            raise VixOperationError(VixCode.NOT_A_DIRECTORY, f"{bare} is not a directory")
        if not overwrite:
            raise VixOperationError(VixCode.FILE_ALREADY_EXISTS, f"{bare} exists")
        if not os.access(bare, os.W_OK | os.X_OK):
            raise VixOperationError(VixCode.FILE_ACCESS_ERROR, f"cannot write into {bare}", errno.EACCES)
        return b""
    return _creatable(bare)


def transfer_from_guest(body: vix.ListFiles) -> bytes:
    """INITIATE_FILE_TRANSFER_FROM_GUEST: the file's ``<fxi>`` once it is known to be a readable regular file.

    ``/archive:/path`` is a tree moved as a tar stream (a bare directory is
    NotAFile, as vmtoolsd answers: the VMX names the archive explicitly).
    """
    _require_path(body.path)
    archive = _archive(body.path)
    if archive is not None:
        return _archive_from_guest(body.path, archive[0])
    link = _lstat(body.path)
    if link is not None and stat.S_ISLNK(link.st_mode):
        raise VixOperationError(VixCode.INVALID_ARG, f"{body.path} is a symbolic link")
    if link is not None and stat.S_ISDIR(link.st_mode):
        raise VixOperationError(VixCode.NOT_A_FILE, f"{body.path} is a directory")
    if link is None:
        raise _missing(body.path)
    if not os.access(body.path, os.R_OK):
        raise VixOperationError(VixCode.FILE_ACCESS_ERROR, f"{body.path} is not readable", errno.EACCES)
    info = file_info(body.path, body.path)
    if info is None:
        raise _missing(body.path)
    return info.encode().encode("utf-8")


def transfer_to_guest(body: vix.TransferToGuest) -> bytes:
    """INITIATE_FILE_TRANSFER_TO_GUEST: check that the upload may write ``path`` (nothing is written)."""
    _require_path(body.path)
    archive = _archive(body.path)
    if archive is not None:
        return _archive_to_guest(archive[0], body.overwrite)
    link = _lstat(body.path)
    if link is not None:
        if stat.S_ISLNK(link.st_mode):
            raise VixOperationError(VixCode.INVALID_ARG, f"{body.path} is a symbolic link")
        if stat.S_ISDIR(link.st_mode):
            raise VixOperationError(VixCode.NOT_A_FILE, f"{body.path} is a directory")
        if not body.overwrite:
            raise VixOperationError(VixCode.FILE_ALREADY_EXISTS, f"{body.path} exists")
        if not os.access(body.path, os.W_OK):
            raise VixOperationError(VixCode.FILE_ACCESS_ERROR, f"{body.path} is not writable", errno.EACCES)
        return b""
    return _creatable(body.path)


def _creatable(path: str) -> bytes:
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise VixOperationError(VixCode.FILE_NAME_INVALID, f"{parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise VixOperationError(VixCode.FILE_ACCESS_ERROR, f"cannot create files in {parent}", errno.EACCES)
    return b""


# -- changing ----------------------------------------------------------------------------------------


def create_directory(body: vix.PathRequest) -> bytes:
    _require_path(body.path)
    if _lstat(body.path) is not None:
        raise VixOperationError(VixCode.FILE_ALREADY_EXISTS, f"{body.path} exists")
    try:
        if body.flag:
            _make_parents(body.path)
        os.mkdir(body.path, 0o700)
    except OSError as error:
        raise _os_error(error) from None
    return b""


def _make_parents(path: str) -> None:
    """mkdir -p's parents, each 0700 as vmtoolsd makes them (os.makedirs would use the umask's default)."""
    parent = os.path.dirname(os.path.abspath(path))
    missing = []
    while parent and not os.path.lexists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass  # made meanwhile by someone else: as good


def delete_file(body: vix.SimpleFile) -> bytes:
    _require_path(body.path)
    link = _lstat(body.path)
    if link is None:
        raise _missing(body.path)
    if stat.S_ISDIR(link.st_mode):
        raise VixOperationError(VixCode.NOT_A_FILE, f"{body.path} is a directory")
    try:
        os.unlink(body.path)
    except OSError as error:
        raise _os_error(error) from None
    return b""


def delete_directory(body: vix.PathRequest) -> bytes:
    _require_path(body.path)
    link = _lstat(body.path)
    if link is None:
        raise _missing(body.path)
    if not stat.S_ISDIR(link.st_mode):
        raise VixOperationError(VixCode.NOT_A_DIRECTORY, f"{body.path} is not a directory")
    try:
        if body.flag:
            shutil.rmtree(body.path)  # does not follow symbolic links out of the tree
        else:
            os.rmdir(body.path)
    except OSError as error:
        if error.errno == errno.EEXIST:
            error.errno = errno.ENOTEMPTY
        raise _os_error(error) from None
    return b""


def move(body: vix.Move, *, directory: bool) -> bytes:
    """MOVE_GUEST_FILE_EX (``directory`` False) and MOVE_GUEST_DIRECTORY, with vmtoolsd's pre-checks."""
    old, new = body.old_path, body.new_path
    if not old or not new:
        raise VixOperationError(VixCode.INVALID_ARG, "empty path")
    source = _lstat(old)
    if source is None:
        raise _missing(old)
    target = _lstat(new)
    if target is not None and (source.st_dev, source.st_ino) == (target.st_dev, target.st_ino):
        return b""  # renaming a file to itself: nothing to do
    target_is_dir = target is not None and stat.S_ISDIR(target.st_mode)
    if target_is_dir:
        raise VixOperationError(VixCode.FILE_ALREADY_EXISTS, f"{new} is a directory")
    if not directory:
        if stat.S_ISDIR(source.st_mode):
            raise VixOperationError(VixCode.NOT_A_FILE, f"{old} is a directory")
        if not body.overwrite and target is not None:
            raise VixOperationError(VixCode.FILE_ALREADY_EXISTS, f"{new} exists")
    else:
        if not stat.S_ISDIR(source.st_mode):
            raise VixOperationError(VixCode.NOT_A_DIRECTORY, f"{old} is not a directory")
        if target is not None:
            raise VixOperationError(VixCode.FILE_ALREADY_EXISTS, f"{new} exists")
    try:
        os.rename(old, new)
    except OSError as error:
        raise _os_error(error) from None
    return b""


def create_temporary(body: vix.CreateTemporary, *, directory: bool) -> bytes:
    """CREATE_TEMPORARY_FILE_EX / _DIRECTORY: ``<dir>/<prefix>vmware<n><suffix>``, returns its path."""
    where = body.directory or tempfile.gettempdir()
    st = _stat(where)
    if st is None:
        raise _missing(where)
    if not stat.S_ISDIR(st.st_mode):
        raise VixOperationError(VixCode.NOT_A_DIRECTORY, f"{where} is not a directory")
    for _ in range(1000):
        path = os.path.join(where, f"{body.prefix}{TEMP_TAG}{random.randrange(1 << 31)}{body.suffix}")
        try:
            if directory:
                os.mkdir(path, 0o700)
            else:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
        except FileExistsError:
            continue
        except OSError as error:
            raise _os_error(error) from None
        return path.encode("utf-8")
    raise VixOperationError(VixCode.FILE_ALREADY_EXISTS, f"no free temporary name in {where}")


def set_attributes(body: vix.SetAttributes) -> bytes:
    flags = vix.AttributeFlags(body.flags & 0x7F)
    _require_path(body.path)
    if flags & (vix.AttributeFlags.HIDDEN | vix.AttributeFlags.READONLY):
        raise VixOperationError(VixCode.INVALID_ARG, "hidden/read-only are Windows attributes")
    current = _stat(body.path)
    if current is None:
        raise _missing(body.path)
    try:
        if flags & (vix.AttributeFlags.ACCESS_DATE | vix.AttributeFlags.MODIFY_DATE):
            atime = body.access_time if flags & vix.AttributeFlags.ACCESS_DATE else current.st_atime
            mtime = body.modification_time if flags & vix.AttributeFlags.MODIFY_DATE else current.st_mtime
            os.utime(body.path, (atime, mtime))
        if flags & (vix.AttributeFlags.UNIX_OWNERID | vix.AttributeFlags.UNIX_GROUPID):
            uid = body.owner_id if flags & vix.AttributeFlags.UNIX_OWNERID else -1
            gid = body.group_id if flags & vix.AttributeFlags.UNIX_GROUPID else -1
            os.chown(body.path, uid, gid)
        # After chown, which clears set-id bits.
        if flags & vix.AttributeFlags.UNIX_PERMISSIONS:
            os.chmod(body.path, body.permissions & 0o7777)
    except OverflowError:
        raise VixOperationError(VixCode.INVALID_ARG, "attribute value out of range") from None
    except OSError as error:
        raise _os_error(error) from None
    return b""


Operation = Callable[[vix.Body], bytes]

OPERATIONS: dict[int, Operation] = {
    vix.Op.LIST_FILES: list_files,  # type: ignore[dict-item]
    vix.Op.INITIATE_FILE_TRANSFER_FROM_GUEST: transfer_from_guest,  # type: ignore[dict-item]
    vix.Op.INITIATE_FILE_TRANSFER_TO_GUEST: transfer_to_guest,  # type: ignore[dict-item]
    vix.Op.CREATE_DIRECTORY_EX: create_directory,  # type: ignore[dict-item]
    vix.Op.DELETE_GUEST_FILE_EX: delete_file,  # type: ignore[dict-item]
    vix.Op.DELETE_GUEST_DIRECTORY_EX: delete_directory,  # type: ignore[dict-item]
    vix.Op.MOVE_GUEST_FILE_EX: lambda body: move(body, directory=False),  # type: ignore[arg-type]
    vix.Op.MOVE_GUEST_DIRECTORY: lambda body: move(body, directory=True),  # type: ignore[arg-type]
    vix.Op.CREATE_TEMPORARY_FILE_EX: lambda body: create_temporary(body, directory=False),  # type: ignore[arg-type]
    vix.Op.CREATE_TEMPORARY_DIRECTORY: lambda body: create_temporary(body, directory=True),  # type: ignore[arg-type]
    vix.Op.SET_GUEST_FILE_ATTRIBUTES: set_attributes,  # type: ignore[dict-item]
}


def perform(op: int, body: vix.Body) -> bytes:
    """Run file operation ``op``; every failure is a `VixOperationError`."""
    operation = OPERATIONS.get(op)
    if operation is None:
        raise VixOperationError(VixCode.UNRECOGNIZED_COMMAND_IN_GUEST, f"opcode {op} is not a file operation")
    try:
        return operation(body)
    except VixOperationError:
        raise
    except OSError as error:
        raise _os_error(error) from None
    except (ValueError, UnicodeError) as error:
        raise VixOperationError(VixCode.INVALID_ARG, str(error)) from None
