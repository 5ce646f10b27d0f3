"""The tests, laid out as the package is: tests/codecs tests twisted_vmtools/codecs, and so on.

A package (``tests.codecs``, never a top-level ``codecs`` that would shadow the standard library's),
imported from the checkout's root; shared helpers live in `tests.support`.
"""
