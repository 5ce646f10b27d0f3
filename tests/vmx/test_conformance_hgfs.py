"""The HGFS conformance steps against our server in memory (the run against vmtoolsd is in test_conformance)."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from tests.support import result_of
from twisted_vmtools.guest.hgfs_server import HGFSServer
from twisted_vmtools.protocols.tclo import TCLODispatcher
from twisted_vmtools.vmx.conformance import DELIBERATE, SCENARIOS
from twisted_vmtools.vmx.conformance_hgfs import STEPS, run_steps


def test_steps_against_our_server(tmp_path: Path) -> None:
    dispatcher = TCLODispatcher()
    HGFSServer(Clock()).install(dispatcher)
    old = os.umask(0o022)  # vmtoolsd's files get the umask, and so do ours
    try:
        seen = result_of(ensureDeferred(run_steps(dispatcher.handle, str(tmp_path / "tree"))))
    finally:
        os.umask(old)
    assert list(seen) == [step.name for step in STEPS]
    assert seen["hgfs-no-packet"] == "'ERROR 1 argument required'"
    assert seen["hgfs-create-session"].startswith("V4 SUCCESS, header session all-ones, max packet 65536")
    assert seen["hgfs-read"] == "V4 SUCCESS, data b'world'"
    assert seen["hgfs-getattr-written"] == "V4 SUCCESS, REGULAR, size 11, perms 644"  # the umask applies
    assert seen["hgfs-search-read"].count("SUCCESS") == 5 and seen["hgfs-search-read"].endswith("end")
    assert seen["hgfs-stale-session"] == "V4 STALE_SESSION"
    assert seen["hgfs-destroy-session"] == "V4 SUCCESS"
    for name in ("hgfs-size-beyond-data", "hgfs-legacy-garbage"):
        assert DELIBERATE[name].ours.reply == seen[name]
    assert {s.name for s in SCENARIOS if s.hgfs} == set(seen)
