"""`vmtools-rpctool`'s command line."""

from __future__ import annotations

import pytest

from twisted_vmtools import __version__
from twisted_vmtools.rpctool import build_parser


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"vmtools-rpctool {__version__}"
