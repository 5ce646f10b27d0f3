"""Conformance: the same scenarios against open-vm-tools' vmtoolsd and against ours.

Both guests talk to a fresh simulated VMX each.  vmtoolsd (and
vmware-rpctool) run unmodified under the trap engine; ours runs as
``twistd vmtools`` (over the backdoor under the trap engine when the C
extension is there, else over the Unix stream transport) and
``vmtools-rpctool``.  For every scenario the observations are normalised
(uptimes, build strings) and compared; a difference must be explained in
`DELIBERATE` or the run fails.  ``vmtools-sim conformance --output
docs/conformance.md`` regenerates the table.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from .conformance_hgfs import STEPS as HGFS_STEPS
from .conformance_hgfs import run_steps
from .conformance_vix import STEPS as VIX_STEPS
from .conformance_vix import Account, temporary_account
from .conformance_vix import run_steps as run_vix_steps
from .model import VMX
from .simulator import SimulatorService
from .trapped import spawn_guest

log = Logger()

VMTOOLSD_CONF = """\
[logging]
log = false
[guestinfo]
poll-interval = 2
[guestoperations]
useVGAuth = false
"""

# Timer-driven reports: they arrive whenever the guest's gather loop runs, not in
# answer to a command, so they are compared in their own scenario.
PERIODIC = re.compile(rb"^(SetGuestInfo  (1|4|5|6|7|8|9|10|11) |SetGuestDiskInfo |info-set guestinfo\.vmtools\.)")


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str  # shown in the table
    tclo: bytes | None = None  # a TCLO command to send
    rpctool: bytes | None = None  # or an RPCI request for the rpctool
    settle: float = 0.5  # how long RPCs caused by the command may trail its reply
    hgfs: bool = False  # one of the HGFS steps (conformance_hgfs), run in order in one session
    vix: bool = False  # one of the Vix steps (conformance_vix), run in order as a test account


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("rpctool-info-set", "rpctool `info-set guestinfo.conformance one two`",
             rpctool=b"info-set guestinfo.conformance one two"),
    Scenario("rpctool-info-get", "rpctool `info-get guestinfo.conformance`", rpctool=b"info-get guestinfo.conformance"),
    Scenario("rpctool-info-get-missing", "rpctool `info-get` of a missing key",
             rpctool=b"info-get guestinfo.conformance.missing"),
    Scenario("rpctool-unknown", "rpctool unknown request `no.such.request`", rpctool=b"no.such.request"),
    Scenario("reset", "TCLO `reset`", tclo=b"reset", settle=1.0),
    Scenario("ping", "TCLO `ping`", tclo=b"ping"),
    Scenario("capabilities", "TCLO `Capabilities_Register`", tclo=b"Capabilities_Register", settle=1.0),
    Scenario("set-option-broadcastip", "TCLO `Set_Option broadcastIP 1`", tclo=b"Set_Option broadcastIP 1"),
    Scenario("set-option-synctime", "TCLO `Set_Option synctime 0` (known)", tclo=b"Set_Option synctime 0"),
    Scenario("set-option-unknown", "TCLO `Set_Option bogusOption 1` (unknown)", tclo=b"Set_Option bogusOption 1"),
    Scenario("set-option-empty", "TCLO `Set_Option broadcastIP` (no value)", tclo=b"Set_Option broadcastIP"),
    Scenario("set-option-bare", "TCLO `Set_Option` (no option)", tclo=b"Set_Option"),
    Scenario("unknown-command", "TCLO `No_Such_Command`", tclo=b"No_Such_Command"),
    Scenario("guest-nics", "guest info: NICs reported (`SetGuestInfo 10`, decoded)"),
    Scenario("guest-routes", "guest info: routes reported (`guest.ipStack`, decoded)"),
    Scenario("guest-dns", "guest info: DNS configuration reported (`guest.ipStack`, decoded)"),
    Scenario("guest-disks", "guest info: disks reported (`guest.disk`: mount point, file system, capacity)"),
    Scenario("guest-os", "guest info: OS reported (`guest.guestId`, `guestFamily`, `guestFullName`, `osName`)"),
    *(Scenario(step.name, step.what, hgfs=True) for step in HGFS_STEPS),
    *(Scenario(step.name, step.what, vix=True) for step in VIX_STEPS),
)

@dataclass
class Observation:
    reply: str = ""
    rpcs: list[str] = field(default_factory=list)

    def show(self) -> str:
        text = self.reply
        if self.rpcs:
            text += " · RPCs: " + "; ".join(self.rpcs)
        return text


@dataclass(frozen=True)
class Deliberate:
    """A difference we chose: what ours must observe instead, and why."""

    ours: Observation
    why: str


# Where ours differs on purpose, keyed by scenario name.  Only that exact observation of
# ours counts as explained: any other difference in these scenarios still fails the run.
DELIBERATE: dict[str, Deliberate] = {
    "capabilities": Deliberate(
        Observation("'OK '", [
            "tools.capability.guest_conf_directory /etc/vmware-tools",
            "tools.capability.statechange",
            "tools.capability.softpowerop_retry",
            "tools.capability.hgfs_server toolbox 1",
            "tools.set.version 2147483647",
        ]),
        "vmtoolsd reports its own version with `tools.set.versiontype 12352 4` (OVT); ours is not an "
        "open-vm-tools build, so it says `tools.set.version 2147483647`, the unmanaged marker the VMX shows as "
        "guestToolsUnmanaged. Each capability is announced by the feature that provides it, in the order the "
        "features are installed (core, guest info, power operations, HGFS), so `hgfs_server` comes last; ours has "
        "no vmbackup (`tools.capability.features 36=0`) yet.",
    ),
    "hgfs-size-beyond-data": Deliberate(
        Observation("V4 PROTOCOL_ERROR"),
        "a V4 header whose packetSize exceeds the bytes sent: vmtoolsd fails the header parse, is then left "
        "without the session id and answers `STALE_SESSION`; ours answers `PROTOCOL_ERROR`, which says what is "
        "wrong with the packet (the Go toolbox panics here).",
    ),
    "hgfs-legacy-garbage": Deliberate(
        Observation("legacy PROTOCOL_ERROR"),
        "a packet naming no HGFS op: vmtoolsd cannot build a reply (`HGFS_ERROR_INTERNAL`) and sends none, and "
        "its TCLO channel is lost (the VMX sees the guest go and come back); ours answers an 8-byte legacy reply "
        "with the request id and `PROTOCOL_ERROR`, so a malformed packet always gets an error status.",
    ),
    "vix-kill": Deliberate(
        Observation("OK, then listed as ended with exit -1"),
        "a program ended by TerminateProcess (SIGTERM) has no exit status: vmtoolsd lists it with exit code 0, "
        "which reads as success; ours lists -1, so `guest run` and vSphere clients can tell a killed program from "
        "one that succeeded.",
    ),
    "vix-from-guest-archive": Deliberate(
        Observation(f"OK, size {(1 << 63) - 1}, type 0"),
        "`/archive:/path` (with `?format=tgz` and `prefix=`) names a tree moved as a tar stream, as the Go "
        "toolbox serves it; vmtoolsd knows no such path.  Our checks read it as the HGFS server does: the tree must "
        "exist and be readable by the account, and the size is unknown (the VMX reads until an empty read).  A "
        "directory named as it is stays NotAFile, as in vmtoolsd; `IGuestOperations` asks for its archive then.",
    ),
    "vix-to-guest-archive": Deliberate(
        Observation("OK"),
        "an upload to `/archive:/path` unpacks a tar stream into that directory (new, or existing with "
        "overwrite): our checks ask what unpacking needs (a writable parent, or a writable directory); vmtoolsd "
        "knows no such path.",
    ),
    "set-option-empty": Deliberate(
        Observation("'ERROR Unknown or invalid option'"),
        "vmtoolsd 12.2 answers `OK` and acts on an option with no value (here it even broadcasts the IP); ours "
        "answers `ERROR Unknown or invalid option`, as the TCLO specification says a missing value must.",
    ),
}


def normalise(request: bytes) -> str:
    request = request.rstrip(b"\0")
    request = re.sub(rb"^SetGuestInfo  7 \d+", b"SetGuestInfo  7 <uptime>", request)
    request = re.sub(rb"^(log toolbox: Version:) .*", rb"\1 <version>", request)
    return request.decode("utf-8", "replace").rstrip()


class Guest:
    """One guest implementation under test."""

    name = "guest"

    async def start(self, reactor: Any, vmx: VMX, where: str, workdir: str) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def rpctool(self, reactor: Any, vmx: VMX, where: str, request: bytes, workdir: str) -> Observation:
        raise NotImplementedError


async def _run_trapped(reactor: Any, vmx: VMX, argv: list[str], workdir: str) -> tuple[int, str, str]:
    out_path, err_path = os.path.join(workdir, "out"), os.path.join(workdir, "err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        program = spawn_guest(reactor, vmx, argv, stdout=out.fileno(), stderr=err.fileno(), timeout=30)
        code = await program.ended
    with open(out_path, "rb") as out, open(err_path, "rb") as err:
        return code, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")


class _Collect(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode or 0)


def _rpctool_observation(code: int, out: str, err: str) -> Observation:
    return Observation(f"exit {code}, stdout {out.strip()!r}, stderr {err.strip()!r}")


class Vmtoolsd(Guest):
    """open-vm-tools' vmtoolsd and vmware-rpctool, unmodified, under the trap engine."""

    name = "vmtoolsd"

    def __init__(self) -> None:
        self._program: Any = None
        self._devnull: int | None = None

    @staticmethod
    def available() -> bool:
        return bool(shutil.which("vmtoolsd") and shutil.which("vmware-rpctool"))

    async def start(self, reactor: Any, vmx: VMX, where: str, workdir: str) -> None:
        conf = os.path.join(workdir, "tools.conf")
        with open(conf, "w") as f:
            f.write(VMTOOLSD_CONF)
        self._devnull = os.open(os.devnull, os.O_WRONLY)
        self._program = spawn_guest(reactor, vmx, ["vmtoolsd", "-n", "vmsvc", "-c", conf],
                                    stdout=self._devnull, stderr=self._devnull)

    async def stop(self) -> None:
        if self._program is not None:
            self._program.terminate()
            await self._program.ended
        if self._devnull is not None:
            os.close(self._devnull)
            self._devnull = None

    async def rpctool(self, reactor: Any, vmx: VMX, where: str, request: bytes, workdir: str) -> Observation:
        code, out, err = await _run_trapped(reactor, vmx, ["vmware-rpctool", request.decode()], workdir)
        return _rpctool_observation(code, out, err)


class Ours(Guest):
    """twistd vmtools and vmtools-rpctool."""

    name = "twisted_vmtools"

    def __init__(self, transport: str = "stream") -> None:
        self.transport = transport
        self._process: Any = None
        self._collect: _Collect | None = None
        self._program: Any = None

    def _transport_option(self, where: str) -> str:
        return "backdoor" if self.transport == "backdoor" else f"unix:{where}"

    async def start(self, reactor: Any, vmx: VMX, where: str, workdir: str) -> None:
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
                "--logfile", os.path.join(workdir, "twistd.log"), "vmtools",
                "--transport", self._transport_option(where), "--guestinfo-interval", "2"]
        if self.transport == "backdoor":
            self._program = spawn_guest(reactor, vmx, argv)
            return
        self._collect = _Collect()
        self._process = reactor.spawnProcess(self._collect, sys.executable, argv, env=os.environ, path=os.getcwd())

    async def stop(self) -> None:
        if self._program is not None:
            self._program.terminate()
            await self._program.ended
        if self._process is not None and self._collect is not None:
            self._process.signalProcess("TERM")
            await self._collect.ended

    async def rpctool(self, reactor: Any, vmx: VMX, where: str, request: bytes, workdir: str) -> Observation:
        argv = [sys.executable, "-m", "twisted_vmtools.rpctool", "--transport", self._transport_option(where),
                request.decode()]
        if self.transport == "backdoor":
            return _rpctool_observation(*await _run_trapped(reactor, vmx, argv, workdir))
        collect = _Collect()
        reactor.spawnProcess(collect, sys.executable, argv, env=os.environ, path=os.getcwd())
        code = await collect.ended
        return _rpctool_observation(code, collect.out.decode(), collect.err.decode())


async def _sleep(reactor: Any, seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def _wait(reactor: Any, condition: Callable[[], bool], timeout: float) -> bool:
    for _ in range(int(timeout / 0.1)):
        if condition():
            return True
        await _sleep(reactor, 0.1)
    return condition()


def _requests_since(vmx: VMX, mark: int) -> list[str]:
    records = vmx.records.since(mark)
    return [normalise(r.data) for r in records if r.direction == "rpci-in" and not PERIODIC.match(r.data)]


async def _tclo_scenario(reactor: Any, vmx: VMX, scenario: Scenario) -> Observation:
    assert scenario.tclo is not None
    mark = vmx.records.total
    try:
        reply = (await vmx.send(scenario.tclo, timeout=10)).decode("utf-8", "replace")
    except Exception as error:
        reply = f"no reply ({error})"
    await _sleep(reactor, scenario.settle)
    return Observation(repr(reply), _requests_since(vmx, mark))


def _nics(vmx: VMX) -> Observation:
    net = vmx.status().get("guest.net")
    if not net:
        return Observation("no NIC report" if 10 not in vmx.tools.guest_info else "undecodable NIC report")
    shown = []
    for nic in net:  # type: ignore[attr-defined]
        addresses = sorted(f"{ip}/{prefix}" for ip, prefix in zip(nic["ipAddress"], nic["prefixes"], strict=True))
        shown.append(f"{nic['macAddress']} {' '.join(addresses)}")
    return Observation("; ".join(sorted(shown)))


def _reports(status: dict[str, object]) -> dict[str, Observation]:
    """The decoded routes, DNS, disks and OS, less what changes by the second (free space)."""
    stack: Any = status.get("guest.ipStack") or []
    routes = sorted(
        f"{r['network']}/{r['prefixLength']} via {r['gateway']['ipAddress'] or '-'} dev {r['gateway']['device']}"
        for entry in stack for r in entry["ipRouteConfig"]["ipRoute"]
    )
    dns = [
        f"host {c['hostName']} domain {c['domainName']} servers {' '.join(c['ipAddress'])} "
        f"search {' '.join(c['searchDomain'])}"
        for entry in stack if (c := entry.get("dnsConfig")) is not None
    ]
    disks: Any = status.get("guest.disk")
    os_fields = ("guest.guestId", "guest.guestFamily", "guest.guestFullName", "guest.osName")
    return {
        "guest-routes": Observation("; ".join(routes) if stack else "no route report"),
        "guest-dns": Observation("; ".join(dns) if dns else "no DNS report"),
        "guest-disks": Observation(
            "; ".join(sorted(f"{d['diskPath']} {d['filesystemType']} {d['capacity']}" for d in disks))
            if disks is not None else "no disk report"),
        "guest-os": Observation(" · ".join(f"{name[6:]}={status.get(name)}" for name in os_fields)),
    }


async def observe(reactor: Any, guest: Guest, account: Account | None = None) -> dict[str, Observation]:
    """Run every scenario against ``guest`` and its own fresh VMX (the Vix ones as ``account``)."""
    with tempfile.TemporaryDirectory(prefix="vmtools-conformance-") as workdir:
        where = os.path.join(workdir, "vmx.sock")
        vmx = VMX(reactor, ping_interval=60)
        simulator = SimulatorService(reactor, where, vmx=vmx)
        simulator.startService()
        results: dict[str, Observation] = {}
        try:
            for scenario in SCENARIOS:
                if scenario.rpctool is not None:
                    results[scenario.name] = await guest.rpctool(reactor, vmx, where, scenario.rpctool, workdir)
            await guest.start(reactor, vmx, where, workdir)
            if not await _wait(reactor, lambda: vmx.running, 30):
                raise RuntimeError(f"{guest.name} never answered the VMX")
            await _sleep(reactor, 1.0)  # let start-up traffic finish
            for scenario in SCENARIOS:
                if scenario.tclo is not None:
                    results[scenario.name] = await _tclo_scenario(reactor, vmx, scenario)
            await _wait(reactor, lambda: 10 in vmx.tools.guest_info, 15)
            results["guest-nics"] = _nics(vmx)
            await _wait(reactor, lambda: vmx.tools.disk_info is not None, 15)
            results.update(_reports(vmx.status()))
            hgfs = await run_steps(lambda command: vmx.send(command, timeout=10), os.path.join(workdir, "hgfs"))
            results.update((name, Observation(text)) for name, text in hgfs.items())
            vix = await run_vix_steps(lambda command: vmx.send(command, timeout=30), os.path.join(workdir, "vix"),
                                      account, reactor)
            results.update((name, Observation(text)) for name, text in vix.items())
        finally:
            await guest.stop()
            await simulator.stopService()
        return results


@dataclass
class Comparison:
    scenario: Scenario
    theirs: Observation
    ours: Observation

    @property
    def same(self) -> bool:
        return self.theirs == self.ours

    @property
    def verdict(self) -> str:
        if self.same:
            return "same"
        deliberate = DELIBERATE.get(self.scenario.name)
        if deliberate is not None and deliberate.ours == self.ours:
            return "deliberately different"
        return "DIFFERENT (unexplained)"


def compare(theirs: dict[str, Observation], ours: dict[str, Observation]) -> list[Comparison]:
    return [Comparison(s, theirs.get(s.name, Observation("not run")), ours.get(s.name, Observation("not run")))
            for s in SCENARIOS]


def markdown(comparisons: list[Comparison], ours_transport: str) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        "# Conformance with open-vm-tools",
        "",
        "Generated by `vmtools-sim conformance --output docs/conformance.md`; do not edit by hand.",
        "",
        "Each scenario runs against open-vm-tools' `vmtoolsd -n vmsvc` and `vmware-rpctool` (Debian's "
        "binaries, unmodified, under the trap engine) and against ours (`twistd vmtools` and `vmtools-rpctool`, "
        f"transport: {ours_transport}), each with a fresh simulated VMX. Uptimes and version strings are "
        "normalised before comparing. The Vix guest operations log in as a real unprivileged account made for "
        "the run (vmtoolsd checks it through PAM with `useVGAuth = false`; ours through PAM too) and act on a "
        "tree made for the run; pids, times and temporary names' digits are normalised.",
        "",
        "| scenario | vmtoolsd | twisted_vmtools | verdict |",
        "|---|---|---|---|",
    ]
    for c in comparisons:
        lines.append(f"| {cell(c.scenario.what)} | {cell(c.theirs.show())} | {cell(c.ours.show())} | {c.verdict} |")
    lines += ["", "## Deliberate differences", ""]
    for name, deliberate in DELIBERATE.items():
        lines.append(f"- **{name}**: {deliberate.why}")
    return "\n".join(lines) + "\n"


def our_default_transport() -> str:
    try:
        from .. import _backdoor  # noqa: F401
    except ImportError:
        return "stream"
    return "backdoor"


async def run_conformance(reactor: Any, output: str | None, transport: str | None = None) -> int:
    if not Vmtoolsd.available():
        print("vmtools-sim conformance: open-vm-tools is not installed (apt-get install open-vm-tools)")
        return 2
    transport = transport or our_default_transport()
    with temporary_account() as account:
        theirs = await observe(reactor, Vmtoolsd(), account)
        ours = await observe(reactor, Ours(transport), account)
    comparisons = compare(theirs, ours)
    document = markdown(comparisons, transport)
    if output:
        with open(output, "w") as f:
            f.write(document)
    print(document)
    return 0 if all(c.verdict != "DIFFERENT (unexplained)" for c in comparisons) else 1
