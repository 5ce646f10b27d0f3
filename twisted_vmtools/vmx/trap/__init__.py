"""The ptrace trap engine: run unmodified guest-tools programs against a
simulated VMX by emulating their VMware backdoor instructions.

Public API (imported lazily, so that the sandbox launcher, which runs as
``python -m twisted_vmtools.vmx.trap.launch``, starts without Twisted):

- `TrapEngine`, `TrapStatistics`, `TrapEngineError`, `HostIsVMwareError`
  (`engine`): the blocking engine;
- `spawn_trapped`, `TrappedProgram` (`spawn`): the Twisted wrapper;
- `IBackdoorHost` (`interfaces`): what the VMX side implements.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrapEngine": "engine",
    "TrapStatistics": "engine",
    "TrapEngineError": "engine",
    "HostIsVMwareError": "engine",
    "spawn_trapped": "spawn",
    "TrappedProgram": "spawn",
    "IBackdoorHost": "interfaces",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(name)
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
