"""`UserHGFSFeature`: the transfers of guest operations, performed as the account that logged in.

It adds Vix ``HGFS_SEND_PACKET`` to the guest operations' command server and
serves it with `hgfs_users.UserHGFS` over the tools' HGFS server.  Like the
features it joins, it imports and builds nothing until the first packet: an
idle guest loads neither the HGFS code nor a helper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from twisted.application.service import Service
from zope.interface import implementer

from ..protocols.rpci import RPCI
from ..protocols.tclo import TCLODispatcher
from .feature import IGuestFeature
from .hgfs_feature import HGFSFeature
from .vix_feature import VixFeature

if TYPE_CHECKING:
    from ..codecs.vix import Request
    from .accounts import GuestUser
    from .hgfs_users import Reply, UserHGFS
    from .vix_server import VixCommandServer


@implementer(IGuestFeature)
class UserHGFSFeature(Service):
    """``HGFS_SEND_PACKET`` for ``vix``'s command server, over ``hgfs``'s server (built on first use)."""

    capabilities: Sequence[bytes] = ()  # HGFSFeature announces the HGFS server

    def __init__(self, reactor: object, *, hgfs: HGFSFeature, vix: VixFeature) -> None:
        self.reactor = reactor
        self.hgfs = hgfs
        self.vix = vix
        self._router: UserHGFS | None = None

    @property
    def router(self) -> UserHGFS:
        if self._router is None:
            from .hgfs_users import UserHGFS

            self._router = UserHGFS(self.reactor, self.hgfs.server, processes=self.vix.processes)
        return self._router

    def install(self, dispatcher: TCLODispatcher, rpci: RPCI | None = None) -> None:
        self.vix.when_built(self._add_op)

    def _add_op(self, server: VixCommandServer) -> None:
        from ..codecs.vix import Op

        server.register_op(Op.HGFS_SEND_PACKET, self._packet)

    def _packet(self, request: Request, user: GuestUser) -> Reply:
        return self.router.send_packet(request, user)

    def stopService(self) -> None:  # type: ignore[override]
        if self._router is not None:
            self._router.stop()  # each helper cuts off what it has open
        super().stopService()
