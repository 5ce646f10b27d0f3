"""Twisted plugin: the ``vsock:`` client endpoint (``vsock:PORT``, ``vsock:port=PORT:privileged=1``).

It reaches a port of the hypervisor (vsock CID 0) of a VMware VM, as
``clientFromString`` does for any other endpoint; elsewhere connecting fails
with a clear error.  The parsing lives in twisted_vmtools.channels.vsock,
imported only when a ``vsock:`` string is parsed: twistd imports every plugin.
"""

from typing import Any

from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class VsockClientParser:
    prefix = "vsock"

    def parseStreamClient(self, reactor: Any, *args: str, **kwargs: str) -> Any:
        from twisted_vmtools.channels.vsock import parse_vsock_client

        return parse_vsock_client(reactor, *args, **kwargs)


vsock = VsockClientParser()
