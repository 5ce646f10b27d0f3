"""Sans-I/O codecs: bytes in, typed values out, and back.  No Twisted here."""
