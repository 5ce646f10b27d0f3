"""Debian's unmodified open-vm-tools binaries under the engine, against the
project's own VMX (message channels, RPCI server, guestinfo store)."""

from __future__ import annotations

import os
from typing import cast

import pytest
from twisted.internet.task import Clock

from twisted_vmtools.codecs.message import EndpointFactory
from twisted_vmtools.vmx.backdoor_host import BackdoorHost
from twisted_vmtools.vmx.endpoints import backdoor_endpoints
from twisted_vmtools.vmx.model import VMX
from twisted_vmtools.vmx.trap.engine import TrapEngine

pytestmark = pytest.mark.slow  # processes: see pyproject.toml's markers

RPCTOOL = "/usr/bin/vmware-rpctool"
CHECKVM = "/usr/bin/vmware-checkvm"


@pytest.fixture
def vmx() -> VMX:
    return VMX(Clock())


def vmx_host(vmx: VMX) -> BackdoorHost:
    return BackdoorHost(cast(EndpointFactory, backdoor_endpoints(vmx)))


def run(host, argv, output):
    engine = TrapEngine(host, timeout=20, stdout=output[0])
    status = engine.run(argv)
    text = output[1].read_text()
    os.ftruncate(output[0], 0)
    os.lseek(output[0], 0, os.SEEK_SET)
    return status, text, engine


@pytest.mark.skipif(not os.path.exists(RPCTOOL), reason="open-vm-tools not installed")
def test_rpctool_info_set_then_get(vmx, output):
    host = vmx_host(vmx)
    status, _text, engine = run(host, [RPCTOOL, "info-set guestinfo.x y"], output)
    assert status == 0
    assert vmx.guestinfo["guestinfo.x"] == b"y"
    # 2 GETVERSION + OPEN, SENDSIZE, RECVSIZE, RECVSTATUS, CLOSE; one HB each way.
    stats = engine.statistics
    assert (stats.low_bandwidth, stats.high_bandwidth_out, stats.high_bandwidth_in) == (7, 1, 1)
    # Its VMware probes (libvmtools' VmCheck and backdoor setup), on either CPUID path.
    assert stats.hypervisor_leaves == {0x40000000: 5, 0x40000010: 2}
    assert stats.cpuid == 10 or stats.faulting_images
    assert not host.channels.channels  # closed by the tool, or at its exit

    status, text, _engine = run(host, [RPCTOOL, "info-get guestinfo.x"], output)
    assert (status, text) == (0, "y\n")

    status, _text, _engine = run(host, [RPCTOOL, "info-get guestinfo.unknown"], output)
    assert status == 1


@pytest.mark.skipif(not os.path.exists(RPCTOOL), reason="open-vm-tools not installed")
def test_rpctool_twice_in_one_shell(vmx, output):
    # vfork + exec following, and per-process breakpoint tables.
    host = vmx_host(vmx)
    script = f"{RPCTOOL} 'info-set guestinfo.a 1' && {RPCTOOL} 'info-get guestinfo.a'"
    status, text, engine = run(host, ["/bin/sh", "-c", script], output)
    assert (status, text.strip()) == (0, "1")  # info-set prints an empty reply line
    assert engine.statistics.low_bandwidth == 14


@pytest.mark.skipif(not os.path.exists(CHECKVM), reason="open-vm-tools not installed")
def test_checkvm(vmx, output):
    # checkvm's backdoor code is in libvmtools.so.0, loaded with the program.
    host = vmx_host(vmx)
    status, text, engine = run(host, [CHECKVM], output)
    assert status == 0
    assert "VMware software version 6 (good)" in text
    assert engine.statistics.cpuid > 0
