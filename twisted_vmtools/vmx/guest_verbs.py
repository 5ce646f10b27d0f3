"""``vmtools-sim guest`` verbs for Vix guest operations, named and shaped as govc's ``guest.*`` commands.

Each verb logs in with ``-l user:password`` (default: ``$VMTOOLS_SIM_GUEST_LOGIN``,
as govc reads ``GOVC_GUEST_LOGIN``) and drives `GuestOperations`, whose TCLO
commands ride the control channel's ``SendTCLO`` into the simulator's queue
to the guest.  Importing this module adds the verbs to `guest_cli.VERBS`.
"""

from __future__ import annotations

import argparse
import io
import shlex
import stat
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import wraps
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from ..exit_codes import UsageError
from .arguments import positive_seconds
from .control import ControlClient
from .guest_cli import LOGIN_VARIABLE, VERBS, Verb, guest_operations, parse_login, with_login
from .guest_operations import FileAttributes, GuestOperationError, ProgramSpec
from .hgfs_client import with_session

POLL_INTERVAL = 0.5  # how often `run` asks whether the program has ended (govc's interval)
LIST_PAGE = 1000

Run = Callable[[ControlClient, argparse.Namespace], Awaitable[int]]


_with_login = with_login
__all__ = ["LOGIN_VARIABLE", "guest_operations", "parse_login", "VERBS"]


def _reporting(name: str, run: Run) -> Run:
    """Print a guest operation's fault as govc does, and exit 1."""

    @wraps(run)
    async def reported(control: ControlClient, args: argparse.Namespace) -> int:
        try:
            return await run(control, args)
        except GuestOperationError as error:
            print(f"vmtools-sim guest {name}: {error.fault}: {error}", file=sys.stderr)
            return 1

    return reported


def verb(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None]) -> Callable[[Run], Run]:
    def register(run: Run) -> Run:
        VERBS[name] = Verb(help, _with_login(arguments), _reporting(name, run))
        return run

    return register


def _path(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH")


# --- files -----------------------------------------------------------------------------------------------------


def _ls_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH")
    parser.add_argument("-s", dest="simple", action="store_true", help="names only")


@verb("ls", "list a guest directory (ListFilesInGuest, every page)", _ls_arguments)
async def _ls(control: ControlClient, args: argparse.Namespace) -> int:
    ops, login = guest_operations(control), parse_login(args.login)
    index = 0
    while True:
        page = await ops.list_files(login, args.path, index=index, max_results=LIST_PAGE)
        for info in page.files:
            if args.simple:
                print(info.name)
            else:
                when = datetime.fromtimestamp(info.mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                print(f"{stat.filemode(info.permissions)} {info.uid:>5} {info.gid:>5} {info.size:>12} {when} "
                      f"{info.name}" + (f" -> {info.symlink_target}" if info.symlink_target else ""))
        index += len(page.files)
        if page.remaining == 0 or not page.files:
            return 0


def _mkdir_arguments(parser: argparse.ArgumentParser) -> None:
    _path(parser)
    parser.add_argument("-p", dest="parents", action="store_true", help="create parents as needed")


@verb("mkdir", "create a guest directory (MakeDirectoryInGuest)", _mkdir_arguments)
async def _mkdir(control: ControlClient, args: argparse.Namespace) -> int:
    ops, login = guest_operations(control), parse_login(args.login)
    try:
        await ops.make_directory(login, args.path, args.parents)
    except GuestOperationError as error:
        if not (args.parents and error.fault == "FileAlreadyExists"):  # mkdir -p: an existing directory is fine
            raise
    return 0


@verb("rm", "delete a guest file (DeleteFileInGuest)", _path)
async def _rm(control: ControlClient, args: argparse.Namespace) -> int:
    await guest_operations(control).delete_file(parse_login(args.login), args.path)
    return 0


def _rmdir_arguments(parser: argparse.ArgumentParser) -> None:
    _path(parser)
    parser.add_argument("-r", dest="recursive", action="store_true", help="delete the whole tree")


@verb("rmdir", "delete a guest directory (DeleteDirectoryInGuest)", _rmdir_arguments)
async def _rmdir(control: ControlClient, args: argparse.Namespace) -> int:
    await guest_operations(control).delete_directory(parse_login(args.login), args.path, args.recursive)
    return 0


def _mv_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC")
    parser.add_argument("dst", metavar="DST")
    parser.add_argument("-n", dest="no_clobber", action="store_true", help="do not overwrite an existing file")


@verb("mv", "move a guest file or directory (MoveFileInGuest, else MoveDirectoryInGuest)", _mv_arguments)
async def _mv(control: ControlClient, args: argparse.Namespace) -> int:
    ops, login = guest_operations(control), parse_login(args.login)
    try:
        await ops.move_file(login, args.src, args.dst, overwrite=not args.no_clobber)
    except GuestOperationError as error:
        if error.fault != "NotAFile":
            raise
        await ops.move_directory(login, args.src, args.dst)
    return 0


def _mktemp_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", dest="directory", action="store_true", help="make a directory")
    parser.add_argument("-p", dest="parent", default=None, help="in this guest directory (default: the guest's)")
    parser.add_argument("-t", dest="prefix", default="vmtools-sim-", help="name prefix")
    parser.add_argument("-s", dest="suffix", default="", help="name suffix")


@verb("mktemp", "create a temporary guest file or directory, print its path", _mktemp_arguments)
async def _mktemp(control: ControlClient, args: argparse.Namespace) -> int:
    ops, login = guest_operations(control), parse_login(args.login)
    make = ops.create_temporary_directory if args.directory else ops.create_temporary_file
    print(await make(login, args.prefix, args.suffix, args.parent))
    return 0


def _chmod_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mode", metavar="MODE", help="octal, e.g. 0644")
    _path(parser)


@verb("chmod", "change a guest file's permissions (ChangeFileAttributesInGuest)", _chmod_arguments)
async def _chmod(control: ControlClient, args: argparse.Namespace) -> int:
    try:
        mode = int(args.mode, 8)
    except ValueError:
        raise UsageError(f"guest chmod: {args.mode!r} is not an octal mode") from None
    await guest_operations(control).change_file_attributes(
        parse_login(args.login), args.path, FileAttributes(permissions=mode))
    return 0


def _chown_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("owner", metavar="UID[:GID]")
    _path(parser)


@verb("chown", "change a guest file's owner and group (numeric ids)", _chown_arguments)
async def _chown(control: ControlClient, args: argparse.Namespace) -> int:
    uid_text, _, gid_text = args.owner.partition(":")
    try:
        uid = int(uid_text) if uid_text else None
        gid = int(gid_text) if gid_text else None
    except ValueError:
        raise UsageError("guest chown: owner and group are numeric ids, UID[:GID]") from None
    await guest_operations(control).change_file_attributes(
        parse_login(args.login), args.path, FileAttributes(owner_id=uid, group_id=gid))
    return 0


def _touch_arguments(parser: argparse.ArgumentParser) -> None:
    _path(parser)
    parser.add_argument("-a", dest="access_only", action="store_true", help="change only the access time")
    parser.add_argument("-c", dest="no_create", action="store_true", help="do not create the file")
    parser.add_argument("-d", dest="date", default=None, help="this time (ISO 8601 or unix seconds), not now")


@verb("touch", "change a guest file's times, creating it if missing", _touch_arguments)
async def _touch(control: ControlClient, args: argparse.Namespace) -> int:
    ops, login = guest_operations(control), parse_login(args.login)
    when = _timestamp(args.date) if args.date else int(time.time())
    try:
        await ops.initiate_file_transfer_from_guest(login, args.path)
    except GuestOperationError as error:
        if error.fault != "FileNotFound" or args.no_create:
            raise
        await ops.initiate_file_transfer_to_guest(login, args.path, FileAttributes(), 0)
        await with_session(ops.hgfs_sender(login), lambda client: client.upload(args.path, lambda count: b""))
    attributes = FileAttributes(access_time=when) if args.access_only else FileAttributes(
        access_time=when, modification_time=when)
    await ops.change_file_attributes(login, args.path, attributes)
    return 0


def _timestamp(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"guest touch: {text!r} is not a date") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


# --- processes ---------------------------------------------------------------------------------------------------


def _ps_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-e", dest="every", action="store_true", help="every process, not only the login user's")
    parser.add_argument("-p", dest="pids", type=int, action="append", default=[], help="only this pid (repeatable)")


@verb("ps", "list guest processes (ListProcessesInGuest)", _ps_arguments)
async def _ps(control: ControlClient, args: argparse.Namespace) -> int:
    login = parse_login(args.login)
    processes = await guest_operations(control).list_processes(login, tuple(args.pids))
    print(f"{'UID':<12} {'PID':>8} {'STIME':<20} {'EXIT':>5} CMD")
    for proc in processes:
        if not (args.every or args.pids) and proc.owner != login.user:
            continue
        started = datetime.fromtimestamp(proc.start_time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        exit_code = str(proc.exit_code) if proc.end_time else "-"
        print(f"{proc.owner:<12} {proc.pid:>8} {started:<20} {exit_code:>5} {proc.name}")
    return 0


def _program_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-C", dest="directory", default=None, help="working directory")
    parser.add_argument("-e", dest="env", action="append", default=[], help="NAME=VALUE (repeatable)")
    parser.add_argument("program", metavar="PATH")
    parser.add_argument("arguments", metavar="ARG", nargs=argparse.REMAINDER)


def _spec(args: argparse.Namespace, redirect: str = "") -> ProgramSpec:
    arguments = " ".join(shlex.quote(a) for a in args.arguments)
    if "/" not in args.program:  # govc: a bare name runs through the shell's PATH search
        line = " ".join(filter(None, [shlex.quote(args.program), arguments]))
        return ProgramSpec("/bin/sh", f"-c {shlex.quote(line)}{redirect}", args.directory, tuple(args.env))
    return ProgramSpec(args.program, arguments + redirect, args.directory, tuple(args.env))


@verb("start", "start a guest program, print its pid (StartProgramInGuest)", _program_arguments)
async def _start(control: ControlClient, args: argparse.Namespace) -> int:
    print(await guest_operations(control).start_program(parse_login(args.login), _spec(args)))
    return 0


@verb("run", "run a guest program, print its output, exit with its code", _program_arguments)
async def _run(control: ControlClient, args: argparse.Namespace) -> int:
    from twisted.internet import reactor

    ops, login = guest_operations(control), parse_login(args.login)
    out = await ops.create_temporary_file(login, "vmtools-sim-", ".out")
    err = await ops.create_temporary_file(login, "vmtools-sim-", ".err")
    try:
        pid = await ops.start_program(login, _spec(args, f" > {shlex.quote(out)} 2> {shlex.quote(err)}"))
        while True:
            listed = await ops.list_processes(login, (pid,))
            proc = listed[0] if listed else None
            if proc is None or proc.end_time:
                break
            await deferLater(reactor, POLL_INTERVAL)  # type: ignore[arg-type]
        for path, stream in ((out, sys.stdout.buffer), (err, sys.stderr.buffer)):
            await ops.download(login, path, stream.write)
            stream.flush()
    finally:
        for path in (out, err):
            await ops.delete_file(login, path)
    if proc is None:
        print(f"vmtools-sim guest run: process {pid} vanished before it ended", file=sys.stderr)
        return 1
    # A program ended by a signal has no exit status (-1): report a failure, as a shell would.
    return proc.exit_code if 0 <= proc.exit_code <= 255 else 1


def _kill_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-p", dest="pids", type=int, action="append", default=[], help="pid (repeatable)")
    parser.add_argument("more", metavar="PID", type=int, nargs="*")


@verb("kill", "terminate guest processes (TerminateProcessInGuest)", _kill_arguments)
async def _kill(control: ControlClient, args: argparse.Namespace) -> int:
    ops, login = guest_operations(control), parse_login(args.login)
    pids = args.pids + args.more
    if not pids:
        raise UsageError("guest kill: which pid? -p PID")
    for pid in pids:
        await ops.terminate_process(login, pid)
    return 0


def _getenv_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", metavar="NAME", nargs="*")


@verb("getenv", "print the guest user's environment (ReadEnvironmentVariableInGuest)", _getenv_arguments)
async def _getenv(control: ControlClient, args: argparse.Namespace) -> int:
    for entry in await guest_operations(control).read_environment_variable(parse_login(args.login),
                                                                           tuple(args.names)):
        print(entry)
    return 0


# --- HTTP --------------------------------------------------------------------------------------------------------

def _http_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("method", metavar="METHOD", help="GET, POST, PUT, ...")
    parser.add_argument("url", metavar="URL", help="http://host:port/path as the guest reaches it")
    parser.add_argument("-d", dest="data", default=None,
                        help="the request body ('@FILE': a file's content, '-': standard input)")
    parser.add_argument("-H", dest="headers", action="append", default=[], help="'Name: value' (repeatable)")
    parser.add_argument("--timeout", type=positive_seconds, default=60.0, help="seconds for the whole round trip")


@verb("http", "an HTTP request made from inside the guest (http.RoundTrip), printed like curl -i", _http_arguments)
async def _http(control: ControlClient, args: argparse.Namespace) -> int:
    from twisted.internet import reactor
    from twisted.web.client import FileBodyProducer
    from twisted.web.http_headers import Headers

    from ..web import GuestAgent, GuestHTTPError

    headers = Headers()
    for line in args.headers:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise UsageError(f"guest http: a header is 'Name: value', not {line!r}")
        headers.addRawHeader(name.strip().encode("latin-1"), value.strip().encode("latin-1"))
    body = None if args.data is None else FileBodyProducer(_request_body(args.data))
    agent = GuestAgent(reactor, guest_operations(control), parse_login(args.login), timeout=args.timeout)
    try:
        response = await agent.request(args.method.upper().encode("ascii"), args.url.encode("utf-8"), headers, body)
        out = sys.stdout.buffer
        out.write(b"%s/%d.%d %d %s\r\n" % (*response.version, response.code, response.phrase))
        for name, values in response.headers.getAllRawHeaders():
            out.writelines(b"%s: %s\r\n" % (name, value) for value in values)
        out.write(b"\r\n")
        await _print_body(response, out)
        out.flush()
    except GuestHTTPError as error:
        print(f"vmtools-sim guest http: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # Twisted's own: ResponseNeverReceived, ResponseFailed, ...
        print(f"vmtools-sim guest http: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


def _request_body(data: str) -> IO[bytes]:
    if data == "-":
        return io.BytesIO(sys.stdin.buffer.read())
    if data.startswith("@"):
        return open(data[1:], "rb")  # noqa: SIM115 (the body producer closes it)
    return io.BytesIO(data.encode("utf-8"))


def _print_body(response: Any, out: IO[bytes]) -> Deferred[None]:
    """Stream the body to ``out`` as it arrives; fails as the body does."""
    from twisted.internet.protocol import Protocol
    from twisted.web.client import ResponseDone
    from twisted.web.http import PotentialDataLoss

    finished: Deferred[None] = Deferred()

    class Printer(Protocol):
        def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted's name)
            out.write(data)

        def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
            if reason is None or reason.check(ResponseDone, PotentialDataLoss):
                finished.callback(None)
            else:
                finished.errback(reason)

    response.deliverBody(Printer())
    return finished
