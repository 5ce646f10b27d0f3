"""The seam every guest feature plugs into: `IGuestFeature`.

A feature is one module: a `twisted.application.service.Service` that
`ToolsService` installs (its TCLO handlers and observers), starts and stops
as a child, and whose capabilities it announces on ``Capabilities_Register``.
See docs/architecture.md for the picture and an example.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.application.service import IService
from twisted.logger import Logger
from zope.interface import Attribute

from ..protocols.rpci import RPCI, RPCIError
from ..protocols.tclo import TCLODispatcher

log = Logger()


class IGuestFeature(IService):
    """Something the guest tools do, plugged into `ToolsService`.

    ``install`` runs once, before the service starts; ``startService`` and
    ``stopService`` follow the tools' own (the feature is a child service).
    """

    capabilities: Sequence[bytes] = Attribute(
        "RPCI requests announcing what this feature offers, sent on Capabilities_Register "
        "(e.g. b'tools.capability.hgfs_server toolbox 1'); empty if it announces nothing."
    )

    def install(dispatcher: TCLODispatcher, rpci: RPCI) -> None:
        """Register this feature's TCLO handlers and observers; keep ``rpci`` to call the VMX.

        ``dispatcher.register(name, handler)`` for the commands it owns (a
        name owned twice is refused); ``dispatcher.observe(name, observer)``
        for those it must react to but does not own (``reset``,
        ``Capabilities_Register``, ``Set_Option``).
        """


def check_features(features: Sequence[object]) -> None:
    """Refuse anything that does not declare `IGuestFeature`, with a sentence naming it."""
    for feature in features:
        if not IGuestFeature.providedBy(feature):
            raise TypeError(f"{feature!r} does not provide IGuestFeature (see docs/architecture.md)")


async def send_quietly(rpci: RPCI, request: bytes) -> bytes | None:
    """Send an RPC whose failure must not fail the command that caused it; None if it failed."""
    try:
        return await rpci.call(request)
    except RPCIError as error:
        log.info("VMX refused {request!r}: {error}", request=request[:80], error=str(error))
    except Exception as error:
        log.warn("RPC {request!r} failed: {error}", request=request[:80], error=str(error))
    return None
