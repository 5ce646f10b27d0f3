"""Keeping pyOpenSSL out of a guest-tools process.

Twisted imports ``twisted.internet.ssl`` whenever pyOpenSSL is installed: the
reactor does (``twisted.internet.posixbase``, to offer ``connectSSL``; ``tcp``
for ``startTLS``), and so does ``twisted.internet.endpoints``.  That loads
pyOpenSSL and ``cryptography``: about 12 MB resident, more than all of
vmtoolsd, in every VM of a fleet.  The guest tools never speak TLS, so
``twistd vmtools`` keeps it out unless ``--tls`` asks for it (for a
``--power-hook`` that does).  Twisted then offers no TLS, as on a machine
where pyOpenSSL is not installed; anything else importing it is told why.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

BLOCKED = "OpenSSL"
WHY = "pyOpenSSL is kept out of twistd vmtools (about 12 MB resident); run it with --tls to allow TLS"


class _KeepOut:
    """A meta path finder that refuses pyOpenSSL, saying why (Twisted takes the ImportError as "no TLS")."""

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        if name == BLOCKED or name.startswith(BLOCKED + "."):
            raise ModuleNotFoundError(WHY, name=name)
        return None


def keep_tls_out() -> bool:
    """Refuse ``import OpenSSL`` in this process from now on; False if it is too late (already loaded).

    Call it before anything imports Twisted's reactor or endpoints, e.g. while parsing options.
    """
    if tls_kept_out():
        return True
    if BLOCKED in sys.modules or "twisted.internet.ssl" in sys.modules:
        return False
    sys.meta_path.insert(0, _KeepOut())
    return True


def tls_kept_out() -> bool:
    return any(isinstance(finder, _KeepOut) for finder in sys.meta_path)
