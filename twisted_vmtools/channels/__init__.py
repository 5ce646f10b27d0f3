"""Channels: the ways a guest's bytes reach the VMX (stream, backdoor, vsock)."""
