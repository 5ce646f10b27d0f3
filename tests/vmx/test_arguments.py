"""Number options are refused where they are parsed, in one sentence, with exit code 2."""

from __future__ import annotations

import pytest

from twisted_vmtools import __version__
from twisted_vmtools.vmx.cli import build_parser


@pytest.mark.parametrize("argv", [
    ["tclo", "--timeout", "0", "ping"], ["tclo", "--timeout", "-1", "ping"], ["tclo", "--timeout", "nan", "ping"],
    ["tclo", "--timeout", "inf", "ping"], ["serve", "--ping-interval", "0"], ["run", "--timeout", "-1", "--", "true"],
    ["log", "--last", "-5"], ["log", "--last", "x"], ["power", "shutdown", "--timeout", "nan"],
    ["guest", "http", "--timeout", "0", "GET", "http://127.0.0.1/"],
    ["guestinfo", "get", "ip"], ["guestinfo", "set", "guestinfo.", "x"],  # not a guestinfo key
])
def test_bad_numbers_exit_2_with_a_sentence(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument" in err and "Traceback" not in err


def test_good_numbers_pass() -> None:
    assert build_parser().parse_args(["tclo", "--timeout", "2.5", "ping"]).timeout == 2.5
    assert build_parser().parse_args(["run", "--timeout", "0", "--", "true"]).timeout == 0
    assert build_parser().parse_args(["log", "--last", "5"]).last == 5


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"vmtools-sim {__version__}"
