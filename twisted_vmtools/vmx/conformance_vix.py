"""Vix conformance steps: every guest operation, success and its main error, the same against each guest.

The steps run in order as a real unprivileged test account (created for the
run when root, removed after) over a small tree made for the run, through
`GuestOperations` and the VMX's TCLO queue.  What is compared is what a
client relies on: Vix codes, names, types, sizes, permissions, exit codes;
pids, times and temporary names' random digits differ by nature and are
normalised.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psutil
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from ..codecs import hgfs, vix
from ..codecs.vix import Credentials, Op
from .guest_operations import FileAttributes, GuestOperationError, GuestOperations, ProgramSpec
from .hgfs_client import HGFSClient, HGFSClientError, with_session

NO_ACCOUNT = "not run: creating the test account needs root and useradd"


@dataclass(frozen=True)
class Account:
    name: str
    password: str
    uid: int
    gid: int

    @property
    def login(self) -> Credentials:
        return Credentials(self.name, self.password)


@contextmanager
def temporary_account() -> Iterator[Account | None]:
    """A fresh unprivileged account with a password (None when not root), removed afterwards."""
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("chpasswd"):
        yield None
        return
    name = "vmtc" + secrets.token_hex(3)
    password = secrets.token_urlsafe(12)
    subprocess.run(["useradd", "-M", "-d", "/", "-s", "/bin/sh", name], check=True, capture_output=True)
    try:
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True, capture_output=True)
        entry = pwd.getpwnam(name)
        yield Account(name, password, entry.pw_uid, entry.pw_gid)
    finally:
        remove_account(name)


def remove_account(name: str) -> None:
    """Delete a test account made for a run, ending what still runs as it first (userdel refuses otherwise:
    a guest's idle file-operation helper, a program a step started).  Its home is the run's to remove."""
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    for _ in range(50):
        left = [p for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid]
        if not left:
            break
        for process in left:
            try:
                process.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(left, timeout=0.2)
    done = subprocess.run(["userdel", name], capture_output=True, text=True)
    try:
        pwd.getpwnam(name)
    except KeyError:
        return
    raise RuntimeError(f"could not remove the test account {name}: {done.stderr.strip()}")


@dataclass
class Context:
    ops: GuestOperations
    send: Callable[[bytes], Deferred[bytes]]
    account: Account
    root: str
    reactor: Any
    temp: str = ""

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)


def make_tree(root: str, account: Account) -> None:
    """The account's own tree, and a file of root's it may not touch."""
    os.makedirs(os.path.join(root, "dir", "sub"))
    for name, data in (("file", b"hello"), ("other", b"x"), ("dir/inner", b"")):
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(os.path.join(base, name), account.uid, account.gid)
    os.chown(root, account.uid, account.gid)
    os.chmod(os.path.join(root, "file"), 0o644)
    locked = os.path.join(root, "locked")  # root's, inside the account's tree: the account may not change it
    os.mkdir(locked, 0o755)
    with open(os.path.join(locked, "roots"), "wb") as f:
        f.write(b"root's")
    with open(os.path.join(locked, "secret"), "wb") as f:  # root's only: the account may not read it
        f.write(b"secret")
    os.chmod(os.path.join(locked, "secret"), 0o600)


def _outcome(error: GuestOperationError) -> str:
    return f"{error.fault} ({error.code})"


async def _ok(call: Awaitable[Any], show: Callable[[Any], str] = lambda _: "OK") -> str:
    try:
        return show(await call)
    except GuestOperationError as error:
        return _outcome(error)


def _listing(listing: Any) -> str:
    shown = sorted(f"{f.name}:{f.type}:{f.size if f.type == 0 else '-'}:{f.permissions & 0o7777:o}"
                   for f in listing.files)
    return f"OK, remaining {listing.remaining}: " + " ".join(shown)


def _temp_name(path: str) -> str:
    return "OK " + re.sub(r"\d+", "<n>", os.path.basename(path))


async def _temp_file(ctx: Context) -> str:
    try:
        ctx.temp = await ctx.ops.create_temporary_file(ctx.account.login, "p-", ".s", ctx.root)
    except GuestOperationError as error:
        return _outcome(error)
    return _temp_name(ctx.temp)


async def _mode(ctx: Context, call: Awaitable[Any], path: str, times: bool = False) -> str:
    """The result, then the file's mode (and its times, when the step set them)."""
    result = await _ok(call)
    if result != "OK":
        return result
    st = os.stat(path)
    shown = f"OK, mode {st.st_mode & 0o7777:o}"
    return shown + (f", mtime {st.st_mtime:.0f}, atime {st.st_atime:.0f}" if times else "")


async def _program(ctx: Context, spec: ProgramSpec) -> str:
    """Start it, wait for its end (≤ 10 s), show what ListProcessesEx says of it."""
    try:
        pid = await ctx.ops.start_program(ctx.account.login, spec)
        for _ in range(100):
            [proc] = await ctx.ops.list_processes(ctx.account.login, (pid,))
            if proc.end_time:
                # The account's uid differs between machines: the report reads the same on each.
                name = proc.name.replace(f" {ctx.account.uid}'", " <uid>'")
                return (f"OK, exit {proc.exit_code}, cmd {proc.cmd!r}, name {name!r}, "
                        f"user {proc.owner == ctx.account.name}")
            await deferLater(ctx.reactor, 0.1, lambda: None)
        return "did not end in 10 s"
    except GuestOperationError as error:
        return _outcome(error)
    except ValueError:
        return "ListProcessesEx did not list it"


async def _kill(ctx: Context) -> str:
    try:
        pid = await ctx.ops.start_program(ctx.account.login, ProgramSpec("/bin/sleep", "30"))
        await ctx.ops.terminate_process(ctx.account.login, pid)
        for _ in range(100):
            [proc] = await ctx.ops.list_processes(ctx.account.login, (pid,))
            if proc.end_time:
                return f"OK, then listed as ended with exit {proc.exit_code}"
            await deferLater(ctx.reactor, 0.1, lambda: None)
        return "OK, but still running after 10 s"
    except GuestOperationError as error:
        return _outcome(error)


def _free_pid() -> int:
    taken = set(psutil.pids())
    return next(pid for pid in range(4_000_000, 4_100_000) if pid not in taken)


async def _raw(ctx: Context, args: bytes) -> str:
    try:
        reply = await ctx.send(vix.RELAYED_COMMAND + b" " + args)
    except Exception as error:
        return f"no reply ({type(error).__name__})"
    return repr(_errno_hidden(reply.decode("utf-8", "replace")))


# vmtoolsd fills a failed relayed command's additional error with whatever errno its
# process last left behind (foundryToolsDaemon's Err_Errno()), 0 or 2 from one run to the
# next; the Vix code before it is what a client acts on, so only that is compared.
_FAILED_REPLY = re.compile(r"^(OK [1-9][0-9]*) -?[0-9]+")


def _errno_hidden(reply: str) -> str:
    return _FAILED_REPLY.sub(r"\1 <errno>", reply, count=1)


def _truncated(ctx: Context) -> bytes:
    request = vix.build_request(Op.CREATE_DIRECTORY_EX, vix.PathRequest(ctx.path("never")), ctx.account.login)
    return b'"x"\0' + request.encode()[:40]


def _unknown_op(ctx: Context) -> bytes:
    request = vix.Request(op=4242, credential=ctx.account.login.encode(), credential_type=ctx.account.login.type)
    return b'"x"\0' + request.encode()


async def _hgfs(ctx: Context, work: Callable[[HGFSClient], Awaitable[str]], login: Credentials | None = None) -> str:
    """``work`` in an HGFS session whose packets are Vix HGFS_SEND_PACKET commands with the login, as the VMX
    moves a transfer: the guest performs each as the account.  Packets fit vmtoolsd's 64 KiB Vix reply."""
    try:
        result: str = await with_session(ctx.ops.hgfs_sender(login or ctx.account.login), work,
                                         max_packet=hgfs.LEGACY_LARGE_PACKET_MAX)
    except GuestOperationError as error:
        return _outcome(error)
    except HGFSClientError as error:
        return f"HGFS {hgfs.Status(error.status).name}" if error.status in hgfs.Status._value2member_map_ \
            else f"HGFS status {error.status}"
    return result


async def _hgfs_read(client: HGFSClient, path: str) -> str:
    got = bytearray()
    count = await client.download(path, got.extend)
    return f"OK, {count} bytes {bytes(got)!r}"


async def _hgfs_write(ctx: Context, client: HGFSClient, path: str) -> str:
    chunks = iter([b"uploaded"])
    await client.upload(path, lambda n: next(chunks, b""), permissions=0o640)
    st = os.stat(path)
    with open(path, "rb") as f:
        data = f.read()
    mine = (st.st_uid, st.st_gid) == (ctx.account.uid, ctx.account.gid)
    return f"OK, {data!r}, mode {st.st_mode & 0o7777:o}, the account's {mine}"


@dataclass(frozen=True)
class Step:
    name: str
    what: str
    run: Callable[[Context], Awaitable[str]]


def _steps() -> tuple[Step, ...]:
    def s(name: str, what: str, run: Callable[[Context], Awaitable[str]]) -> Step:
        return Step("vix-" + name, "Vix " + what, run)

    def login(ctx: Context) -> Credentials:
        return ctx.account.login

    return (
        s("bad-login", "MakeDirectory with a wrong password",
          lambda c: _ok(c.ops.make_directory(Credentials(c.account.name, "wrong"), c.path("bad")))),
        s("list", "ListFiles of the tree (all entries)", lambda c: _ok(c.ops.list_files(login(c), c.root), _listing)),
        s("list-page", "ListFiles, maxResults 2 from index 1",
          lambda c: _ok(c.ops.list_files(login(c), c.root, index=1, max_results=2),
                        lambda page: f"OK, {len(page.files)} entries, remaining {page.remaining}")),
        s("list-no-max", "ListFiles with maxResults 0",
          lambda c: _ok(c.ops.list_files(login(c), c.root, max_results=0), _listing)),
        s("list-pattern", "ListFiles with pattern `^f`",
          lambda c: _ok(c.ops.list_files(login(c), c.root, match_pattern="^f"), _listing)),
        s("list-file", "ListFiles of one file",
          lambda c: _ok(c.ops.list_files(login(c), c.path("file")),
                        lambda page: _listing(page).replace(c.root, "<root>"))),
        s("list-missing", "ListFiles of a missing path", lambda c: _ok(c.ops.list_files(login(c), c.path("nope")))),
        s("mkdir", "MakeDirectory", lambda c: _ok(c.ops.make_directory(login(c), c.path("made")))),
        s("mkdir-exists", "MakeDirectory of an existing path",
          lambda c: _ok(c.ops.make_directory(login(c), c.path("made")))),
        s("mkdir-no-parent", "MakeDirectory without its parent",
          lambda c: _ok(c.ops.make_directory(login(c), c.path("a", "b")))),
        s("mkdir-parents", "MakeDirectory with parents",
          lambda c: _mode(c, c.ops.make_directory(login(c), c.path("a", "b"), True), c.path("a"))),
        s("mktemp-file", "CreateTemporaryFile (prefix p-, suffix .s)", _temp_file),
        s("mktemp-dir", "CreateTemporaryDirectory",
          lambda c: _ok(c.ops.create_temporary_directory(login(c), "d-", "", c.root), _temp_name)),
        s("mktemp-missing", "CreateTemporaryFile in a missing directory",
          lambda c: _ok(c.ops.create_temporary_file(login(c), "", "", c.path("nope")))),
        s("mv-file", "MoveFile to a new name", lambda c: _ok(c.ops.move_file(login(c), c.temp, c.path("moved")))),
        s("mv-file-exists", "MoveFile onto a file, no overwrite",
          lambda c: _ok(c.ops.move_file(login(c), c.path("moved"), c.path("other")))),
        s("mv-file-overwrite", "MoveFile onto a file, overwrite",
          lambda c: _ok(c.ops.move_file(login(c), c.path("moved"), c.path("other"), True))),
        s("mv-file-dir", "MoveFile of a directory",
          lambda c: _ok(c.ops.move_file(login(c), c.path("made"), c.path("made2")))),
        s("mv-dir", "MoveDirectory", lambda c: _ok(c.ops.move_directory(login(c), c.path("made"), c.path("made2")))),
        s("mv-dir-file", "MoveDirectory of a file",
          lambda c: _ok(c.ops.move_directory(login(c), c.path("other"), c.path("other2")))),
        s("rm", "DeleteFile", lambda c: _ok(c.ops.delete_file(login(c), c.path("other")))),
        s("rm-missing", "DeleteFile of a missing file", lambda c: _ok(c.ops.delete_file(login(c), c.path("other")))),
        s("rm-dir", "DeleteFile of a directory", lambda c: _ok(c.ops.delete_file(login(c), c.path("dir")))),
        s("rm-not-allowed", "DeleteFile of root's file in root's directory",
          lambda c: _ok(c.ops.delete_file(login(c), c.path("locked", "roots")))),
        s("rmdir-not-empty", "DeleteDirectory of a non-empty directory",
          lambda c: _ok(c.ops.delete_directory(login(c), c.path("dir")))),
        s("rmdir-file", "DeleteDirectory of a file", lambda c: _ok(c.ops.delete_directory(login(c), c.path("file")))),
        s("rmdir-recursive", "DeleteDirectory, recursive",
          lambda c: _ok(c.ops.delete_directory(login(c), c.path("dir"), True))),
        s("chmod", "ChangeFileAttributes: permissions 0600",
          lambda c: _mode(c, c.ops.change_file_attributes(login(c), c.path("file"), FileAttributes(permissions=0o600)),
                          c.path("file"))),
        s("touch", "ChangeFileAttributes: modification and access times",
          lambda c: _mode(c, c.ops.change_file_attributes(
              login(c), c.path("file"), FileAttributes(modification_time=1_000_000_000, access_time=999)),
              c.path("file"), times=True)),
        s("chown-root", "ChangeFileAttributes: owner root (not allowed)",
          lambda c: _ok(c.ops.change_file_attributes(login(c), c.path("file"), FileAttributes(owner_id=0)))),
        s("chmod-missing", "ChangeFileAttributes of a missing file",
          lambda c: _ok(c.ops.change_file_attributes(login(c), c.path("nope"), FileAttributes(permissions=0o600)))),
        s("from-guest", "InitiateFileTransferFromGuest of a file",
          lambda c: _ok(c.ops.initiate_file_transfer_from_guest(login(c), c.path("file")),
                        lambda info: f"OK, size {info.size}, type {info.attributes.type}, "
                                     f"name is the path {info.attributes.name == c.path('file')}")),
        s("from-guest-dir", "InitiateFileTransferFromGuest of a directory",
          lambda c: _ok(c.ops.initiate_file_transfer_from_guest(login(c), c.path("a")))),
        s("from-guest-missing", "InitiateFileTransferFromGuest of a missing file",
          lambda c: _ok(c.ops.initiate_file_transfer_from_guest(login(c), c.path("nope")))),
        s("to-guest-exists", "InitiateFileTransferToGuest onto a file, no overwrite",
          lambda c: _ok(c.ops.initiate_file_transfer_to_guest(login(c), c.path("file"), FileAttributes(), 3))),
        s("to-guest-overwrite", "InitiateFileTransferToGuest onto a file, overwrite",
          lambda c: _ok(c.ops.initiate_file_transfer_to_guest(login(c), c.path("file"), FileAttributes(), 3, True))),
        s("to-guest-new", "InitiateFileTransferToGuest of a new file",
          lambda c: _ok(c.ops.initiate_file_transfer_to_guest(login(c), c.path("new"), FileAttributes(), 3))),
        s("to-guest-dir", "InitiateFileTransferToGuest onto a directory",
          lambda c: _ok(c.ops.initiate_file_transfer_to_guest(login(c), c.path("a"), FileAttributes(), 3, True))),
        s("from-guest-archive", "InitiateFileTransferFromGuest of `/archive:<root>?format=tgz`",
          lambda c: _ok(c.ops.initiate_file_transfer_from_guest(login(c), f"/archive:{c.root}?format=tgz"),
                        lambda info: f"OK, size {info.size}, type {info.attributes.type}")),
        s("to-guest-archive", "InitiateFileTransferToGuest of `/archive:<root>/unpacked` (a new directory)",
          lambda c: _ok(c.ops.initiate_file_transfer_to_guest(login(c), f"/archive:{c.path('unpacked')}",
                                                              FileAttributes(), 0))),
        s("hgfs-read", "HGFS_SEND_PACKET as the account: read its file",
          lambda c: _hgfs(c, lambda client: _hgfs_read(client, c.path("file")))),
        s("hgfs-read-denied", "HGFS_SEND_PACKET as the account: read root's 0600 file",
          lambda c: _hgfs(c, lambda client: _hgfs_read(client, c.path("locked", "secret")))),
        s("hgfs-write", "HGFS_SEND_PACKET as the account: create a file (mode 0640)",
          lambda c: _hgfs(c, lambda client: _hgfs_write(c, client, c.path("uploaded")))),
        s("hgfs-write-denied", "HGFS_SEND_PACKET as the account: create a file in root's directory",
          lambda c: _hgfs(c, lambda client: _hgfs_write(c, client, c.path("locked", "planted")))),
        s("hgfs-bad-login", "HGFS_SEND_PACKET with a wrong password",
          lambda c: _hgfs(c, lambda client: _hgfs_read(client, c.path("file")),
                          Credentials(c.account.name, "wrong"))),
        s("start", "StartProgram `/bin/sh -c 'exit 3'`, then ListProcesses",
          lambda c: _program(c, ProgramSpec("/bin/sh", "-c 'exit 3'", c.root))),
        s("start-as-user", "StartProgram writes `id -u`: the account's uid",
          lambda c: _program(c, ProgramSpec("/bin/sh", f"-c 'test $(id -u) = {c.account.uid}'", c.root))),
        s("start-missing", "StartProgram of a missing program",
          lambda c: _ok(c.ops.start_program(login(c), ProgramSpec("/no/such/program")))),
        s("start-bad-cwd", "StartProgram in a missing working directory",
          lambda c: _ok(c.ops.start_program(login(c), ProgramSpec("/bin/true", "", c.path("nope"))))),
        s("kill", "TerminateProcess of a running program", _kill),
        s("kill-missing", "TerminateProcess of no process",
          lambda c: _ok(c.ops.terminate_process(login(c), _free_pid()))),
        s("env", "ReadEnvironmentVariable USER",
          lambda c: _ok(c.ops.read_environment_variable(login(c), ("USER",)),
                        lambda env: "OK " + " ".join(e.replace(c.account.name, "<account>") for e in env))),
        s("malformed", "a relayed command with garbage after the NUL", lambda c: _raw(c, b'"x"\0garbage')),
        s("truncated", "a request cut after 40 bytes", lambda c: _raw(c, _truncated(c))),
        s("unknown-op", "opcode 4242", lambda c: _raw(c, _unknown_op(c))),
    )


STEPS = _steps()


async def run_steps(send: Callable[[bytes], Deferred[bytes]], root: str, account: Account | None,
                    reactor: Any) -> dict[str, str]:
    """Every step against one guest (``send`` delivers a TCLO command and returns the reply)."""
    if account is None:
        return {step.name: NO_ACCOUNT for step in STEPS}
    os.makedirs(root)
    make_tree(root, account)
    # The account must reach its tree through the run's directory.
    os.chmod(os.path.dirname(root), 0o711)
    ctx = Context(GuestOperations(send), send, account, root, reactor)
    results: dict[str, str] = {}
    for step in STEPS:
        results[step.name] = (await step.run(ctx)).replace(root, "<root>")
    return results
