"""`HGFSFeature`: file transfers as a guest feature whose server is built by the first ``f`` packet.

One tools process runs in every VM of a fleet, and most of them never see a
file transfer: this feature announces the HGFS capability and owns the ``f``
command from the start, but the HGFS codec, the `HGFSServer` and its file
handlers (tarfile and gzip for archives, the process I/O table) are imported
and built when the first packet arrives.  What must happen at start does:
the upload journal is cleaned when the feature is installed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.logger import Logger
from zope.interface import implementer

from ..codecs.tclo import HGFS_CAPABILITY, HGFS_COMMAND
from ..protocols.rpci import RPCI
from ..protocols.tclo import HandlerResult, TCLODispatcher
from .feature import IGuestFeature
from .hgfs_files import UploadJournal

if TYPE_CHECKING:
    from .hgfs_handlers import FileHandlerRegistry
    from .hgfs_server import HGFSServer


@implementer(IGuestFeature)
class HGFSFeature(Service):
    """The guest's HGFS server, on demand.

    ``handlers`` makes the server's `FileHandlerRegistry` (called once, when
    the server is built); ``server_options`` are passed on to `HGFSServer`
    (``max_sessions``, ``idle_timeout``…).  ``server`` builds it at once.
    """

    log = Logger()
    name = "hgfs"
    capabilities: Sequence[bytes] = (HGFS_CAPABILITY,)

    def __init__(
        self,
        clock: object,
        *,
        handlers: Callable[[], FileHandlerRegistry] | None = None,
        journal: UploadJournal | None = None,
        **server_options: Any,
    ) -> None:
        self.clock = clock
        self.journal = journal or UploadJournal(None)
        self._handlers = handlers
        self._server_options = server_options
        self._server: HGFSServer | None = None

    @property
    def server(self) -> HGFSServer:
        if self._server is None:
            from .hgfs_server import HGFSServer

            handlers = self._handlers() if self._handlers is not None else None
            self._server = HGFSServer(
                self.clock, handlers=handlers, journal=self.journal, **self._server_options  # type: ignore[arg-type]
            )
        return self._server

    def install(self, dispatcher: TCLODispatcher, rpci: RPCI | None = None) -> None:
        # At start, not at the first packet: a crash's leftovers go whether or not anything is transferred.
        for temp in self.journal.clean():
            self.log.info("removed {temp}, an upload cut off by the last stop", temp=temp)
        # As a view: the packet reaches the HGFS codec without a copy to split off the ``f``.
        dispatcher.register(HGFS_COMMAND, self._command, views=True)

    def _command(self, args: bytes | memoryview) -> HandlerResult:
        return self.server.command(args)

    def stopService(self) -> None:  # type: ignore[override]
        super().stopService()
        if self._server is not None:
            self._server.stop()
