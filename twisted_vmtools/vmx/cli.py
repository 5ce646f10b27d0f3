"""``vmtools-sim``: run a simulated VMX, and talk to a running one."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import react
from twisted.logger import globalLogBeginner, textFileLogObserver

from .. import __version__
from ..endpoint_strings import CLIENT_FORMS, SERVER_FORMS, client_string, server_string
from ..exit_codes import ExitCode, ToolError, Unreachable, UsageError, report
from ..heap import keep_packets_in_heap
from ..printable import readable
from ..simsocket import client_endpoint, default_simulator_socket
from . import guest_verbs  # noqa: F401  (adds the Vix verbs to guest_cli.VERBS)
from .access import SecretError, group_id
from .arguments import positive_count, positive_seconds, seconds
from .control import (
    ControlClient,
    GuestInfoGet,
    GuestInfoSet,
    RPCLog,
    SendTCLO,
    Status,
    connect_control,
    control_secret,
)
from .guest_cli import add_guest_parser, run_guest
from .model import RPCRecord
from .power_cli import add_power_parser, run_power
from .rpc_text import record_line
from .stores import GuestInfoRefused, check_guestinfo_key

PROG = "vmtools-sim"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="A simulated VMware VMX for guest tools.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_socket(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--socket", type=client_string, default=default_simulator_socket(),
                       help=f"where the simulator is: {CLIENT_FORMS} (default: %(default)s)")
        return p

    serve = sub.add_parser("serve", help="run a VMX for one guest")
    serve.add_argument("--socket", type=server_string, default=default_simulator_socket(),
                       help=f"where to listen: {SERVER_FORMS} (default: %(default)s)")
    serve.add_argument("--trace", action="store_true", help="print every RPC in both directions")
    serve.add_argument("--ping-interval", type=positive_seconds, default=5.0, help="seconds between TCLO pings")
    serve.add_argument("--trap", action="store_true", help="run the command after -- as the guest, trapped")
    serve.add_argument("--low-bandwidth", action="store_true",
                       help="offer no high-bandwidth transfers: trapped guests move messages 4 bytes at a time")
    serve.add_argument("--socket-group", metavar="GROUP",
                       help="let this group use the socket too (mode 0660 instead of 0600)")
    serve.add_argument("--allow-remote", action="store_true",
                       help="allow --socket tcp: on an address other machines can reach")
    serve.add_argument("program", nargs=argparse.REMAINDER, help="with --trap: -- CMD [ARGS...]")

    status = with_socket(sub.add_parser("status", help="what the VMX sees of the guest"))
    status.add_argument("--json", action="store_true", help="print JSON")

    tclo = with_socket(sub.add_parser("tclo", help="send a TCLO command, print the guest's reply"))
    tclo.add_argument("tclo_command", metavar="COMMAND")
    tclo.add_argument("--timeout", type=positive_seconds, default=30.0)

    guestinfo = with_socket(sub.add_parser("guestinfo", help="read or write the guestinfo store"))
    guestinfo.add_argument("action", choices=["get", "set"])
    guestinfo.add_argument("key", type=_guestinfo_key, help="guestinfo.NAME")
    guestinfo.add_argument("value", nargs="?")

    rpclog = with_socket(sub.add_parser("log", help="the last RPCs the VMX saw, both directions"))
    rpclog.add_argument("--last", type=positive_count, default=50, help="how many (at most 100)")

    add_power_parser(sub, with_socket)

    demo = sub.add_parser("demo", help="run our guest tools against an embedded VMX and show what it sees")
    demo.add_argument("--socket", type=server_string, default=None,
                      help="where the embedded VMX listens (default: a temporary socket)")

    conformance = sub.add_parser("conformance", help="compare our guest tools with open-vm-tools, scenario by scenario")
    conformance.add_argument("--output", help="write the Markdown table here (docs/conformance.md)")
    conformance.add_argument("--transport", choices=["backdoor", "stream"], help="how ours reaches the VMX")

    add_guest_parser(sub, with_socket)

    run = sub.add_parser("run", help="run a program as a trapped guest of its own VMX; exit with its code")
    run.add_argument("--trace", action="store_true")
    run.add_argument("--low-bandwidth", action="store_true", help="offer no high-bandwidth transfers")
    run.add_argument("--timeout", type=seconds, help="end the program (SIGTERM, then SIGKILL) after this many seconds")
    run.add_argument("program", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    return parser


def _guestinfo_key(text: str) -> str:
    try:
        return check_guestinfo_key(text)
    except GuestInfoRefused as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _program(args: argparse.Namespace) -> list[str]:
    program = list(args.program)
    if program and program[0] == "--":
        program = program[1:]
    return program


def check_serve(args: argparse.Namespace) -> None:
    """``serve --trap`` needs a program, and a program needs ``--trap`` (it would be ignored)."""
    if args.trap and not _program(args):
        raise UsageError("serve --trap needs the program to run after --: serve --trap -- PROGRAM [ARGS...]")
    if _program(args) and not args.trap:
        raise UsageError("serve runs a program only with --trap: serve --trap -- PROGRAM [ARGS...]")


async def _control(reactor: object, where: str) -> ControlClient:
    """The control channel of the simulator at ``where``; a `ToolError` (one sentence) if there is none."""
    endpoint = client_endpoint(reactor, where)  # EndpointStringError, UntrustedSocket: ToolErrors already
    secret = control_secret(where)  # over TCP: from the file VMTOOLS_SIM_SECRET_FILE names (SecretError)
    try:
        return await connect_control(endpoint, secret, clock=reactor)  # type: ignore[arg-type]
    except SecretError as error:
        raise Unreachable(f"{where}: {error}") from None
    except Exception as error:
        raise Unreachable(f"no simulator at {where}: {error}") from None


async def _status(reactor: object, args: argparse.Namespace) -> int:
    client = await _control(reactor, args.socket)
    status = json.loads((await client.callRemote(Status))["status"])
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        for key, value in status.items():
            # One line per key, as log shows RPCs: a guest-set value with a newline or a terminal
            # escape sequence must not break the table or reach the terminal as a control sequence.
            shown = readable(value.encode()) if isinstance(value, str) else value
            print(f"{key:32} {shown}")
    return ExitCode.OK


async def _tclo(reactor: object, args: argparse.Namespace) -> int:
    client = await _control(reactor, args.socket)
    try:
        # os.fsencode: the argument's own bytes, also those that are not UTF-8 (sys.argv keeps them as escapes).
        result = await client.callRemote(SendTCLO, command=os.fsencode(args.tclo_command), timeout=args.timeout)
    except Exception as error:  # no guest connected, no reply in time, the command refused
        print(f"vmtools-sim: {error}", file=sys.stderr)
        return ExitCode.FAILED
    sys.stdout.buffer.write(result["reply"] + b"\n")
    return ExitCode.OK


async def _log(reactor: object, args: argparse.Namespace) -> int:
    client = await _control(reactor, args.socket)
    for fields in (await client.callRemote(RPCLog, last=args.last))["records"]:
        record = RPCRecord(fields["when"], fields["direction"], fields["channel"], fields["data"], fields["size"])
        print(time.strftime("%H:%M:%S", time.localtime(record.when)), record_line(record))
    return 0


async def _guestinfo(reactor: object, args: argparse.Namespace) -> int:
    if (args.action == "set") != (args.value is not None):
        raise UsageError("guestinfo takes get KEY or set KEY VALUE")
    client = await _control(reactor, args.socket)
    if args.action == "set":
        try:
            await client.callRemote(GuestInfoSet, key=os.fsencode(args.key), value=os.fsencode(args.value))
        except GuestInfoRefused as error:
            print(f"vmtools-sim: {error}", file=sys.stderr)
            return ExitCode.FAILED
        return ExitCode.OK
    result = await client.callRemote(GuestInfoGet, key=os.fsencode(args.key))
    if not result["found"]:
        print("No value found", file=sys.stderr)
        return ExitCode.FAILED
    sys.stdout.buffer.write(result["value"] + b"\n")
    return 0


def _start_logging(verbose: bool) -> None:
    if verbose:
        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)


async def _main(reactor: Any, argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return await _command(reactor, args)
    except ToolError as error:  # the one place a user's mistake becomes a sentence and an exit code
        return report(PROG, error)


async def _command(reactor: Any, args: argparse.Namespace) -> int:
    if args.command == "status":
        return await _status(reactor, args)
    if args.command == "tclo":
        return await _tclo(reactor, args)
    if args.command == "guestinfo":
        return await _guestinfo(reactor, args)
    if args.command == "log":
        return await _log(reactor, args)
    if args.command == "guest":
        return await run_guest(reactor, args, _control)
    if args.command == "power":
        return await run_power(lambda: _control(reactor, args.socket), args)
    if args.command == "demo":
        # The demo is an application above both stacks; the simulator's CLI only starts it,
        # and loads it (and with it the guest side) only for this command.
        from ..demo import run_demo

        return await run_demo(reactor, args.socket)
    if args.command == "serve":
        from .serve import serve
        from .simulator import claim_socket

        check_serve(args)
        group = _group(args.socket_group)
        claim_socket(args.socket)
        return await serve(reactor, args.socket, trace=args.trace, ping_interval=args.ping_interval,
                           trap=_program(args) if args.trap else None, high_bandwidth=not args.low_bandwidth,
                           socket_group=group, allow_remote=args.allow_remote,
                           on_listening=lambda: _start_logging(True))
    if args.command == "conformance":
        from .conformance import run_conformance

        return await run_conformance(reactor, args.output, args.transport)
    if args.command == "run":
        from .serve import run_trapped

        if not _program(args):  # before a simulator starts for nothing
            raise UsageError("give the program to run after --: run -- PROGRAM [ARGS...]")
        _start_logging(args.trace)
        return await run_trapped(
            reactor, _program(args), trace=args.trace, high_bandwidth=not args.low_bandwidth, timeout=args.timeout
        )
    raise AssertionError(args.command)


def _group(name: str | None) -> int | None:
    try:
        return group_id(name) if name else None
    except ValueError as error:
        raise UsageError(f"--socket-group: {error}") from None


SERVERS = {"serve", "demo", "run", "conformance"}  # long-running commands with peers of their own


def main(argv: Sequence[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    keep_packets_in_heap()  # HGFS transfers (guest upload/download, serve) move 520 KB packets
    if not SERVERS.intersection(arguments[:1]):
        # `vmtools-sim status | head` should end quietly, as other command-line tools do.  Never for a
        # server: a peer hanging up while it writes would kill it silently (EPIPE must stay an error).
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)

    def start(reactor: Any) -> Deferred[None]:
        return ensureDeferred(_main(reactor, arguments)).addCallback(_exit_code)

    react(start)


def _exit_code(code: int) -> None:
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
