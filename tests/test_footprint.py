"""What an idle guest has imported: a regression guard for its resident memory.

``twistd vmtools`` runs in every VM of a fleet.  A guest started as twistd
starts it (`tap.Options`, `tap.makeService` before the reactor is imported)
talks to a simulated VMX in this process through the VMX's whole start
sequence (reset, ping, Capabilities_Register, the guest info report), and is
then asked, over TCLO, which modules it holds.  Anything only one option or a
first guest operation needs must not be among them: an eager import anywhere
on the start-up path fails this test.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from twisted_vmtools.codecs.guestinfo import GuestInfoKey
from twisted_vmtools.vmx.model import VMX
from twisted_vmtools.vmx.simulator import SimulatorService

pytestmark = pytest.mark.slow  # a guest process

REPO = Path(__file__).resolve().parent.parent
LOADED = b"Test_Loaded_Modules"

# Loaded on first use only (or never, by the guest): the simulator, the control channel's AMP, the
# guest operations and HGFS servers and their codecs, archives, PAM, HTTP, TLS, other transports.
NEVER_IDLE = (
    "OpenSSL", "cryptography", "twisted.internet.ssl", "twisted.internet._sslverify", "service_identity",
    "twisted.protocols.amp", "twisted_vmtools.vmx", "twisted_vmtools.web", "twisted.web", "treq",
    "twisted_vmtools.codecs.vix", "twisted_vmtools.guest.vix_server", "twisted_vmtools.guest.processes",
    "twisted_vmtools.guest.fileops", "twisted_vmtools.guest.fileops_runner", "twisted_vmtools.guest.roundtrip",
    "twisted_vmtools.codecs.hgfs", "twisted_vmtools.guest.hgfs_server", "twisted_vmtools.guest.hgfs_archive",
    "twisted_vmtools.archive", "tarfile", "gzip", "pam", "configparser", "hypothesis", "capstone", "tqdm",
    "twisted_vmtools.channels.backdoor", "twisted_vmtools.channels.vsock", "twisted_vmtools.codecs.message",
)
# Before the VMX has asked for anything, guest info has not been gathered yet either.
NOT_BEFORE_FIRST_REPORT = ("psutil",)
# After a first guest operation and a first HGFS packet: what only a login or an archive needs.
NOT_BEFORE_THEIR_OWN_USE = (
    "pam", "tarfile", "gzip", "OpenSSL", "twisted_vmtools.vmx", "twisted.protocols.amp",
)

GUEST = f"""
import json, sys
from twisted_vmtools import tap

def loaded(args=b""):
    return json.dumps(sorted(name for name, module in sys.modules.items() if module is not None)).encode()

options = tap.Options()
options.parseOptions(sys.argv[1:])
service = tap.makeService(options)  # no reactor given: as twistd calls it, before importing one
service.dispatcher.register({LOADED!r}, loaded)
service.startService()
sys.stdout.buffer.write(loaded() + b"\\n")
sys.stdout.flush()
from twisted.internet import reactor
reactor.run()
"""


def heavy(loaded: list[str], names: tuple[str, ...]) -> list[str]:
    return [m for m in loaded if any(m == name or m.startswith(name + ".") for name in names)]


def test_heavy_is_heavy() -> None:
    # The guard's own matching: a module, and everything under a package.
    assert heavy(["tarfile", "twisted_vmtools.vmx.model", "twisted_vmtools.vmxfoo", "psutil"], NEVER_IDLE) == [
        "tarfile", "twisted_vmtools.vmx.model"]


async def wait_until(condition: object, what: str, turns: int = 1500) -> None:
    for _ in range(turns):  # 30 s at most
        if condition():  # type: ignore[operator]
            return
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"the guest never got to {what}")


@pytest_twisted.ensureDeferred
async def test_an_idle_guest_has_loaded_only_what_it_uses(tmp_path: Path) -> None:
    where = str(tmp_path / "vmx.sock")
    vmx = VMX(reactor)
    simulator = SimulatorService(reactor, where, vmx=vmx)
    simulator.startService()
    arguments = ["--transport", f"unix:{where}", "--transfer-state", str(tmp_path / "state"), "--auth", "none"]
    with open(tmp_path / "built.json", "wb") as out, open(tmp_path / "guest.log", "wb") as log:
        guest = subprocess.Popen([sys.executable, "-c", GUEST, *arguments], stdout=out, stderr=log, cwd=REPO)
    try:
        await wait_until(lambda: vmx.running, "answer reset, ping and Capabilities_Register")
        await wait_until(lambda: GuestInfoKey.UPTIME in vmx.tools.guest_info, "report its guest info")
        reply = await vmx.send(LOADED)
        assert reply.startswith(b"OK ")
        idle = json.loads(reply[3:])
        started = json.loads((tmp_path / "built.json").read_text())
        assert (await vmx.send(b"Vix_1_Get_ToolsProperties")).startswith(b"OK ")  # builds the Vix server
        await vmx.send(b"f " + bytes(16))  # a malformed HGFS packet, answered by the server it builds
        used = json.loads((await vmx.send(LOADED))[3:])
    finally:
        guest.terminate()
        guest.wait(30)
        await simulator.stopService()
    assert "twisted_vmtools.channels.stream" in idle and "twisted_vmtools.guest.guestinfo" in idle  # it ran
    assert heavy(started, NEVER_IDLE + NOT_BEFORE_FIRST_REPORT) == []
    assert heavy(idle, NEVER_IDLE) == []
    assert "twisted_vmtools.guest.vix_server" in used and "twisted_vmtools.guest.hgfs_server" in used
    assert heavy(used, NOT_BEFORE_THEIR_OWN_USE) == []


TLS_PROBE = """
import sys
from twisted_vmtools import tap
tap.Options().parseOptions(sys.argv[1:])
from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString
loaded = "OpenSSL" in sys.modules
try:
    import OpenSSL
    refusal = ""
except ImportError as error:
    refusal = str(error)
print(loaded, sys.modules["twisted.internet.posixbase"].ssl is not None)  # does the reactor offer TLS
print(refusal)
"""


@pytest.mark.skipif(importlib.util.find_spec("OpenSSL") is None, reason="pyOpenSSL is not installed here")
@pytest.mark.parametrize("tls", [False, True])
def test_pyopenssl_is_kept_out_unless_tls_is_asked_for(tls: bool) -> None:
    arguments = ["--transport", "unix:/nonexistent/vmx.sock", *(["--tls"] if tls else [])]
    probe = subprocess.run([sys.executable, "-c", TLS_PROBE, *arguments], capture_output=True, text=True,
                           cwd=REPO, timeout=60, check=True)
    loaded, refusal = probe.stdout.splitlines()
    if tls:
        assert loaded == "True True" and refusal == ""
    else:
        assert loaded == "False False"  # neither loaded nor offered by the reactor
        assert "--tls" in refusal  # anything that tries is told why


BACKDOOR_GUEST = """
import json, sys
from twisted_vmtools import tap

options = tap.Options()
options.parseOptions(sys.argv[1:])  # as twistd does: the options first, then the channel and the reactor
from twisted.internet import reactor
from twisted_vmtools.channels.detect import BackdoorInterface, Detection
from twisted_vmtools.channels.select import make_channel

# Detection and the backdoor itself are injected (this is no VMware VM); the rest is twistd's path.
found = Detection(True, "a test", interface=BackdoorInterface.PORT)
channel = make_channel("backdoor", reactor, detection=lambda: found, backdoor=lambda call: None)
service = tap.tools_service(reactor, channel, options)
print(json.dumps(sorted(name for name, module in sys.modules.items() if module is not None)))
"""


def test_a_guest_on_the_backdoor_loads_no_stream_or_vsock_channel(tmp_path: Path) -> None:
    arguments = ["--transport", "backdoor", "--transfer-state", str(tmp_path / "state")]
    probe = subprocess.run([sys.executable, "-c", BACKDOOR_GUEST, *arguments], capture_output=True, text=True,
                           cwd=REPO, timeout=60, check=True)
    loaded = json.loads(probe.stdout)
    assert "twisted_vmtools.channels.backdoor" in loaded
    others = ("twisted_vmtools.channels.stream", "twisted_vmtools.channels.vsock", "twisted_vmtools.channels.auto",
              "twisted.internet.endpoints", "twisted.application.internet")
    on_the_backdoor = tuple(n for n in NEVER_IDLE if n not in ("twisted_vmtools.channels.backdoor",
                                                               "twisted_vmtools.codecs.message"))
    assert heavy(loaded, others + on_the_backdoor + NOT_BEFORE_FIRST_REPORT) == []
