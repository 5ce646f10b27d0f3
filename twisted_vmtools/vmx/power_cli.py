"""``vmtools-sim power shutdown|reboot|standby``: press a power button, print the guest's report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from ..exit_codes import ExitCode
from .arguments import positive_seconds
from .power import OPERATIONS, PowerOp


def add_power_parser(sub: Any, with_socket: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    power = with_socket(sub.add_parser("power", help="send OS_Halt/OS_Reboot/OS_Suspend, print the guest's report"))
    power.add_argument("operation", choices=sorted(OPERATIONS), help="shutdown (OS_Halt), reboot, standby (OS_Suspend)")
    power.add_argument("--timeout", type=positive_seconds, default=60.0,
                       help="seconds to wait for the state-change report")


async def run_power(control: Callable[[], Awaitable[Any]], args: argparse.Namespace) -> int:
    """0 if the guest reported success; 1 (`ExitCode.FAILED`) if it reported failure, refused or never reported."""
    client = await control()
    command = OPERATIONS[args.operation].command.decode()
    try:
        result = await client.callRemote(PowerOp, operation=args.operation, timeout=args.timeout)
    except Exception as error:
        print(f"vmtools-sim: {command}: {error}", file=sys.stderr)
        return ExitCode.FAILED
    print(f"{command}: {result['reply'].decode('utf-8', 'replace')}")
    if not result["reported"]:
        return 1
    outcome = "succeeded" if result["success"] else "failed"
    print(f"tools.os.statechange.status {int(result['success'])} {result['state']}: the state change {outcome}")
    return 0 if result["success"] else 1
