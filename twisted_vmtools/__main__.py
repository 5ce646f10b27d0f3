"""``python -m twisted_vmtools [OPTIONS]``: the guest tools in the foreground.

The same as ``twistd -n --pidfile= vmtools [OPTIONS]`` (twistd's runner, logging
to stdout, no pid file: what a service manager wants), but found without the
twistd plugin: an install whose ``twisted/plugins`` twistd cannot see still
runs.  ``--help`` lists the options; the other commands are ``vmtools-sim``
(the simulated VMX) and ``vmtools-rpctool`` (one RPCI request).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.application.service import IService, IServiceMaker
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions, runApp
from zope.interface import implementer

from .exit_codes import UsageError, report

PROGRAM = "python -m twisted_vmtools"


@implementer(IServiceMaker)
class _VMTools:
    """What twisted/plugins/vmtools.py offers twistd, handed to it directly (no plugin lookup)."""

    tapname = "vmtools"
    description = "VMware guest tools (RPCI, TCLO, guest operations)"

    def options(self) -> usage.Options:
        from .tap import Options

        class Named(Options):
            prog = PROGRAM  # its errors begin with the command the user typed
            def getSynopsis(self) -> str:  # noqa: N802
                return f"Usage: {PROGRAM} [options]"  # not twistd's "twistd [options] vmtools [options]"

        return Named()

    def makeService(self, options: usage.Options) -> IService:  # noqa: N802
        from .tap import makeService

        return makeService(options)  # type: ignore[arg-type]


VMTOOLS = _VMTools()


class _VMToolsOnly(ServerOptions):
    """twistd's options, offering the one command this package makes."""

    @staticmethod
    def _getPlugins(interface: Any, package: Any = None) -> Iterable[Any]:  # noqa: N802
        return [VMTOOLS] if interface is IServiceMaker else []


def main(argv: Sequence[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    config = _VMToolsOnly()
    try:
        config.parseOptions(["--nodaemon", "--pidfile=", VMTOOLS.tapname, *arguments])
    except usage.UsageError as error:  # twistd's own checks (vmtools' options report their own, the same way)
        raise SystemExit(report(PROGRAM, UsageError(f"{error} (see {PROGRAM} --help)"))) from None
    runApp(config)


if __name__ == "__main__":
    main()
