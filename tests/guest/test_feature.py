"""The guest-feature seam: ToolsService's feature list, capabilities, and docs/architecture.md's example."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import Service
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.support import Harness, RecordingPowerHandler
from twisted_vmtools.guest.core import CoreFeature
from twisted_vmtools.guest.feature import IGuestFeature
from twisted_vmtools.guest.guestinfo import GuestInfo
from twisted_vmtools.guest.hgfs_feature import HGFSFeature
from twisted_vmtools.guest.hgfs_users_feature import UserHGFSFeature
from twisted_vmtools.guest.powerops import PowerOps
from twisted_vmtools.guest.vix_feature import VixFeature
from twisted_vmtools.protocols.rpci import RPCI
from twisted_vmtools.protocols.tclo import AlreadyRegistered, TCLODispatcher
from twisted_vmtools.service import ToolsService, default_features


def features(clock: Clock, **options: Any) -> list[IGuestFeature]:
    # Never the default power handler: nothing here may reach /sbin/shutdown.
    return default_features(clock, power_handler=RecordingPowerHandler(), **options)


ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def documented_example() -> type:
    """The example feature exactly as docs/architecture.md shows it."""
    blocks = re.findall(r"```python\n(.*?)```", ARCHITECTURE.read_text(), re.S)
    source = next(block for block in blocks if "class Motd" in block)
    assert len(source.splitlines()) <= 35, "the example should stay short"
    namespace: dict[str, Any] = {}
    exec(compile(source, str(ARCHITECTURE), "exec"), namespace)
    return namespace["Motd"]  # type: ignore[no-any-return]


def test_the_documented_example_feature_plugs_in() -> None:
    motd = documented_example()
    harness = Harness(features=lambda clock: [*features(clock, primary_ip="198.51.100.7"), motd()])
    harness.start()
    assert harness.send(b"Capabilities_Register") == b"OK "
    capabilities = harness.vmx.status()["guest.toolsCapabilities"]
    assert isinstance(capabilities, dict)
    in_feature_order = ["guest_conf_directory", "statechange", "softpowerop_retry", "hgfs_server", "motd"]
    assert list(capabilities) == in_feature_order
    assert capabilities["motd"] == "1"
    assert harness.send(b"Motd_Get") == b"OK hello"
    assert harness.send(b"Set_Option motd greetings") == b"OK "
    assert harness.send(b"Motd_Get") == b"OK greetings"
    assert harness.vmx.guestinfo["guestinfo.motd"] == b"greetings"
    # The core still owns Set_Option: its own option and its refusals are unchanged.
    assert harness.send(b"Set_Option broadcastIP 1") == b"OK "
    assert harness.vmx.status()["guest.ipAddress"] == "198.51.100.7"
    assert harness.send(b"Set_Option motd") == b"ERROR Unknown or invalid option"
    assert harness.send(b"Motd_Get") == b"OK greetings"


def test_the_features_are_child_services_started_after_the_channel() -> None:
    harness = Harness()
    service = harness.service
    assert [type(f) for f in service.features] == [CoreFeature, GuestInfo, PowerOps, VixFeature, HGFSFeature,
                                                     UserHGFSFeature]
    assert all(verifyObject(IGuestFeature, f) for f in service.features)
    assert list(service) == list(service.features)
    assert service.feature(GuestInfo) is service.guest_info
    harness.start()
    assert all(f.running for f in service.features)
    harness.service.stopService()
    harness.settle()
    assert not any(f.running for f in service.features)


@implementer(IGuestFeature)
class Claims(Service):
    """A feature owning a command another feature already owns."""

    capabilities = ()

    def install(self, dispatcher: TCLODispatcher, rpci: RPCI) -> None:
        dispatcher.register(b"ping", lambda args: b"mine")


def test_a_feature_may_not_take_another_features_command() -> None:
    with pytest.raises(AlreadyRegistered, match="ping"):
        Harness(features=lambda clock: [*features(clock), Claims()])


def test_only_features_are_accepted() -> None:
    harness = Harness()
    with pytest.raises(TypeError, match="IGuestFeature"):
        ToolsService(Clock(), harness.channel, features=[object()])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="default features"):
        ToolsService(Clock(), harness.channel, features=[], primary_ip="192.0.2.1")


def test_without_guest_info_nothing_observes_reset_but_the_core() -> None:
    harness = Harness(features=lambda clock: [CoreFeature(primary_ip=lambda: None)])
    harness.start()
    assert harness.service.guest_info is None
    assert harness.send(b"reset") == b"OK ATR toolbox"
    assert harness.send(b"Capabilities_Register") == b"OK "
    assert harness.vmx.status()["guest.toolsVersion"] == "2147483647"
