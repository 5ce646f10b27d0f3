"""`no_tls`: in a process that has loaded pyOpenSSL already it changes nothing (the guest's own
start, where it keeps pyOpenSSL out, is tested as a process in test_footprint.py)."""

from __future__ import annotations

import sys

import pytest

from twisted_vmtools.no_tls import _KeepOut, keep_tls_out, tls_kept_out


def test_too_late_once_twisted_has_loaded_it() -> None:
    from twisted.internet import reactor  # noqa: F401 - what loads twisted.internet.ssl, if pyOpenSSL is here

    if "twisted.internet.ssl" not in sys.modules:
        pytest.skip("pyOpenSSL is not installed here")
    before = list(sys.meta_path)
    assert keep_tls_out() is False and not tls_kept_out()
    assert sys.meta_path == before


def test_the_finder_refuses_only_pyopenssl_and_says_why() -> None:
    finder = _KeepOut()
    for name in ("OpenSSL", "OpenSSL.SSL"):
        with pytest.raises(ModuleNotFoundError, match="--tls"):
            finder.find_spec(name, None)
    assert finder.find_spec("OpenSSLfoo", None) is None and finder.find_spec("ssl", None) is None
