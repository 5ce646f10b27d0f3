"""What the trap engine asks of the VMX it serves: `IBackdoorHost`, declared beside both stacks."""

from __future__ import annotations

from twisted_vmtools.backdoor_interface import IBackdoorHost

__all__ = ["IBackdoorHost"]
