"""Exit codes, the same for the same condition in every tool (the README has the table).

``vmtools-sim``, ``vmtools-rpctool`` and ``twistd vmtools`` end with one
sentence on stderr and one of these codes.  ``vmtools-sim run`` and ``serve
--trap`` exit with the trapped program's own code instead, as a shell would.

An error a user can cause derives from `ToolError` and carries its code, so
each tool has one place (`report`) that turns it into the sentence and the
code, whichever layer raised it.
"""

from __future__ import annotations

import sys
from enum import IntEnum
from typing import TextIO


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # asked and answered no: an error reply, no such value, no reply in time, no guest connected
    USAGE = 2  # a command line that cannot work: an unknown option, a value out of range, a bad endpoint string
    UNREACHABLE = 3  # nothing to talk to: no simulator at the address, a socket of another user, not a VMware VM
    CANNOT_LISTEN = 4  # the simulator cannot listen: socket or port in use, directory missing, not allowed


MEANINGS = {
    ExitCode.OK: "success",
    ExitCode.FAILED: "the request was answered with an error (error reply, no value, timeout, no guest connected)",
    ExitCode.USAGE: "bad usage: an unknown option, a value out of range, an endpoint string that cannot work, "
                    "options that exclude each other",
    ExitCode.UNREACHABLE: "nothing to talk to: no simulator at the address, a socket another user owns, "
                          "not a VMware VM",
    ExitCode.CANNOT_LISTEN: "the simulator cannot listen: the socket or port is in use, its directory is missing "
                            "or not ours, permission denied",
}


class ToolError(Exception):
    """A mistake or condition a user can cause; ``str()`` is one sentence, `exit_code` says which."""

    exit_code = ExitCode.FAILED

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(ToolError):
    """Options or values that cannot work together."""

    exit_code = ExitCode.USAGE


class Unreachable(ToolError):
    """Nothing to talk to where the user pointed."""

    exit_code = ExitCode.UNREACHABLE


class CannotListen(ToolError):
    """The simulator cannot listen where it was told to."""

    exit_code = ExitCode.CANNOT_LISTEN


def report(prog: str, error: ToolError, stream: TextIO | None = None) -> int:
    """Print ``prog: sentence`` and return the exit code that goes with ``error``."""
    print(f"{prog}: {error}", file=stream if stream is not None else sys.stderr)
    return int(error.exit_code)
