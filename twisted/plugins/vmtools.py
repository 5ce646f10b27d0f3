"""Twisted plugin: ``twistd vmtools``.  The options live in twisted_vmtools.tap."""

from twisted.application.service import ServiceMaker

vmtools = ServiceMaker(
    "twisted_vmtools",
    "twisted_vmtools.tap",
    "VMware guest tools (RPCI, TCLO, guest operations)",
    "vmtools",
)
