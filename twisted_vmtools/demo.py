"""`vmtools-sim demo`: our guest tools against an embedded VMX, over a real Unix socket."""

from __future__ import annotations

import os
import tempfile

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from .channels.stream import StreamChannel
from .endpoint_strings import client_for, parse_server
from .printable import abridged
from .protocols.rpci import RPCIError
from .service import ToolsService
from .vmx.model import VMX, RPCRecord
from .vmx.simulator import SimulatorService

DEMO_BYTES = 120


def _show(record: RPCRecord) -> None:
    # The NUL some guests end a request with says nothing; a binary report's first bytes say enough.
    text = abridged(record.data.rstrip(b"\0"), DEMO_BYTES)
    print(f"    {record.arrow}  {text}")


async def _wait_running(reactor: IReactorTime, vmx: VMX, seconds: float = 10.0) -> bool:
    for _ in range(int(seconds / 0.05)):
        if vmx.running:
            return True
        await deferLater(reactor, 0.05, lambda: None)
    return False


async def run_demo(reactor: IReactorTime, where: str | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="vmtools-demo-") as directory:
        where = where or os.path.join(directory, "vmx.sock")
        vmx = VMX(reactor)
        simulator = SimulatorService(reactor, where, vmx=vmx)
        tools = ToolsService(reactor, StreamChannel(reactor, client_for(parse_server(where))))
        simulator.startService()  # CannotListen, before a word of the tour: nothing to show without it
        print(f"== A simulated VMX listens on {where}; our guest tools connect to it.")
        vmx.observe(_show)
        tools.startService()
        try:
            return await _tour(reactor, vmx, tools)
        finally:
            await tools.stopService()
            await simulator.stopService()


async def _tour(reactor: IReactorTime, vmx: VMX, tools: ToolsService) -> int:
    print("\n== On connect the VMX sends reset and ping:")
    if not await _wait_running(reactor, vmx):
        print("!! the guest tools never answered")
        return 1
    await deferLater(reactor, 0.2, lambda: None)
    print(f"\n   guest.toolsRunningStatus = {vmx.status()['guest.toolsRunningStatus']}")

    print("\n== The VMX asks the tools to register their capabilities:")
    await vmx.send(b"Capabilities_Register")
    print("\n== The VMX asks the guest to broadcast its IP:")
    await vmx.send(b"Set_Option broadcastIP 1")
    print("\n== An unknown command, and an option with no value:")
    await vmx.send(b"No_Such_Command")
    await vmx.send(b"Set_Option broadcastIP")
    print("\n== The guest reads and writes guestinfo through RPCI:")
    vmx.guestinfo["guestinfo.demo.greeting"] = b"hello from the host"
    await tools.rpci.call(b"info-get guestinfo.demo.greeting")
    await tools.rpci.call(b"info-set guestinfo.demo.reply hello from the guest")
    try:
        await tools.rpci.call(b"info-get guestinfo.demo.missing")
    except RPCIError:
        pass
    print("\n== What the VMX now shows (vmtools-sim status):")
    for key, value in vmx.status().items():
        print(f"   {key:32} {value}")
    return 0
