"""Protocols over the channels: the RPCI client and the TCLO dispatcher."""
