"""`VixFeature`: guest operations as a guest feature (the Vix command server and its process manager).

It owns the TCLO commands ``Vix_1_Relayed_Command`` and
``Vix_1_Get_ToolsProperties``, and announces no capability (vmtoolsd's vix
plugin announces only SAML token support, which needs VGAuth).
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.application.service import Service
from twisted.logger import Logger
from zope.interface import implementer

from ..codecs.vix import GET_TOOLS_PROPERTIES, RELAYED_COMMAND
from ..protocols.rpci import RPCI
from ..protocols.tclo import TCLODispatcher
from .auth import IAuthenticator, NoAuthenticator, PAMAuthenticator
from .feature import IGuestFeature
from .fileops_runner import FileOperationRunner, IFileOperationRunner
from .processes import ProcessManager
from .vix_server import VixCommandServer


@implementer(IGuestFeature)
class VixFeature(Service):
    """Guest operations.  ``authenticator`` defaults to PAM; ``processes`` and ``files`` to the real ones.

    ``vix.processes.register(name, function)`` makes a Python function
    startable as a process by name (StartProgram with that program path).
    """

    log = Logger()
    capabilities: Sequence[bytes] = ()

    def __init__(
        self,
        reactor: object,
        *,
        authenticator: IAuthenticator | None = None,
        processes: ProcessManager | None = None,
        files: IFileOperationRunner | None = None,
        disabled: frozenset[str] = frozenset(),
    ) -> None:
        self.reactor = reactor
        self.processes = processes or ProcessManager(reactor)
        self.server = VixCommandServer(
            reactor,
            authenticator=authenticator or PAMAuthenticator(reactor),
            processes=self.processes,
            files=files or FileOperationRunner(reactor),
            disabled=disabled,
        )

    def install(self, dispatcher: TCLODispatcher, rpci: RPCI | None = None) -> None:
        dispatcher.register(RELAYED_COMMAND, self.server.relayed_command)
        dispatcher.register(GET_TOOLS_PROPERTIES, self.server.tools_properties)

    def startService(self) -> None:
        super().startService()
        if isinstance(self.server.authenticator, NoAuthenticator):
            self.log.warn(
                "guest operations accept ANY login and act as {user} (--auth none)",
                user=self.server.authenticator.user.name,
            )

    def stopService(self) -> None:  # type: ignore[override]
        self.processes.stop()
        stop_helpers = getattr(self.server.files, "stop", None)
        if stop_helpers is not None:
            stop_helpers()
        super().stopService()
