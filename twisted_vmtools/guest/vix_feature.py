"""`VixFeature`: guest operations as a guest feature (the Vix command server and its process manager).

It owns the TCLO commands ``Vix_1_Relayed_Command`` and
``Vix_1_Get_ToolsProperties``, and announces no capability (vmtoolsd's vix
plugin announces only SAML token support, which needs VGAuth).

Most guests never see a guest operation, and one tools process runs in every
VM of a fleet: the command server, the Vix codec, the process manager (and
psutil behind it) are imported and built on first use (the first command, or
the first use of ``processes``), not when the service is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from ..codecs.tclo import VIX_GET_TOOLS_PROPERTIES, VIX_RELAYED_COMMAND
from ..protocols.rpci import RPCI
from ..protocols.tclo import TCLODispatcher
from .auth import IAuthenticator, NoAuthenticator
from .feature import IGuestFeature

if TYPE_CHECKING:
    from ..protocols.tclo import Pieces
    from .fileops_runner import IFileOperationRunner
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
        if authenticator is None:
            from .auth import PAMAuthenticator

            authenticator = PAMAuthenticator(reactor)
        self.authenticator = authenticator
        self.disabled = disabled
        self._processes = processes
        self._files = files
        self._server: VixCommandServer | None = None
        self._when_built: list[Callable[[VixCommandServer], object]] = []

    @property
    def processes(self) -> ProcessManager:
        if self._processes is None:
            from .processes import ProcessManager

            self._processes = ProcessManager(self.reactor)
        return self._processes

    @property
    def server(self) -> VixCommandServer:
        if self._server is None:
            from .fileops_runner import FileOperationRunner
            from .vix_server import VixCommandServer

            self._server = VixCommandServer(
                self.reactor,
                authenticator=self.authenticator,
                processes=self.processes,
                files=self._files or FileOperationRunner(self.reactor),
                disabled=self.disabled,
            )
            for hook in self._when_built:
                hook(self._server)
        return self._server

    def when_built(self, hook: Callable[[VixCommandServer], object]) -> None:
        """Call ``hook`` with the command server once it exists (at once if it does): another feature
        adds its op there (`VixCommandServer.register_op`) without building it early."""
        if self._server is not None:
            hook(self._server)
        else:
            self._when_built.append(hook)

    def install(self, dispatcher: TCLODispatcher, rpci: RPCI | None = None) -> None:
        # As views: an upload's 520 KB HGFS packet reaches the HGFS server without a copy to split off the name.
        dispatcher.register(VIX_RELAYED_COMMAND, self._relayed_command, views=True)
        dispatcher.register(VIX_GET_TOOLS_PROPERTIES, self._tools_properties)

    # Looked up at each command, so that the server is built by the first one.
    def _relayed_command(self, args: bytes) -> Deferred[Pieces]:
        return self.server.relayed_command(args)

    def _tools_properties(self, args: bytes) -> bytes:
        return self.server.tools_properties(args)

    def startService(self) -> None:
        super().startService()
        if isinstance(self.authenticator, NoAuthenticator):
            self.log.warn(
                "guest operations accept ANY login and act as {user} (--auth none)",
                user=self.authenticator.user.name,
            )

    def stopService(self) -> None:  # type: ignore[override]
        # Nothing was started if nothing was used.
        if self._processes is not None:
            self._processes.stop()
        stop_helpers = getattr(self._server.files, "stop", None) if self._server is not None else None
        if stop_helpers is not None:
            stop_helpers()
        super().stopService()
