"""VMware guest tools as a Twisted protocol stack."""

__version__ = "0.1.0"
