"""``vmtools-rpctool 'COMMAND'``: send one RPCI request, as vmware-rpctool does.

Prints the reply (without its ``1 ``) and exits 0; on a ``0 …`` reply it
prints the reason on stderr and exits 1, as vmware-rpctool does.  A
``--transport`` that cannot work exits 2, a VMX that cannot be reached 3 (the
table in `twisted_vmtools.exit_codes`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react

from . import __version__
from .exit_codes import ExitCode, ToolError, report
from .protocols.rpci import RPCI, RPCIError


def _transport(spec: str) -> str:
    """``--transport``, checked as argparse parses it (one sentence, exit 2)."""
    from .channels.select import check_transport

    try:
        return check_transport(spec)
    except ToolError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmtools-rpctool", description="Send one RPCI request to the VMX.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--transport", "-t", default="auto", type=_transport,
                        help="auto, backdoor, vsock, unix:PATH, tcp:HOST:PORT")
    parser.add_argument("request", help="the request, e.g. 'info-get guestinfo.ip'")
    return parser


async def send_one(reactor: Any, transport: str, request: bytes) -> int:
    from .tap import make_channel

    try:
        channel = make_channel(reactor, transport)
    except ToolError as error:  # not a VMware VM, say
        return report("vmtools-rpctool", error)
    try:
        reply = await RPCI(channel).call(request)
    except RPCIError as error:
        sys.stderr.write(f"{error}\n")
        return ExitCode.FAILED
    except Exception as error:
        sys.stderr.write(f"Failed sending message to VMware: {error}\n")
        return ExitCode.UNREACHABLE
    finally:
        await channel.stop()
    sys.stdout.buffer.write(reply + b"\n")
    sys.stdout.flush()
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    async def run(reactor: Any) -> None:
        # The request's own bytes, also those that are not UTF-8 (sys.argv keeps them as escapes).
        code = await send_one(reactor, args.transport, os.fsencode(args.request))
        if code:
            raise SystemExit(code)

    react(lambda reactor: ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
