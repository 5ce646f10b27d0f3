"""Where a guest and `vmtools-sim` meet: the default socket, and a ``--socket`` value as a client endpoint.

Shared by both sides (``twistd vmtools --simulate``, ``vmtools-sim``), so
neither imports the other for it; nothing here loads Twisted's reactor,
psutil or either stack.
"""

from __future__ import annotations

import os
import tempfile


def default_simulator_socket() -> str:
    """``$XDG_RUNTIME_DIR/vmtools-sim-<uid>.sock`` (else in the temporary directory): private per user."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return os.path.join(base, f"vmtools-sim-{os.getuid()}.sock")


def client_description(where: str) -> str:
    """A client endpoint description for ``where``: a bare path is shorthand for ``unix:PATH``."""
    return where if ":" in where else f"unix:{where}"
