"""The long fuzz campaign: every decoder a peer can reach, a million inputs each.

    python benchmarks/fuzz.py                       # every target, 1,000,000 inputs each
    python benchmarks/fuzz.py --runs 20000 datamap  # some targets, fewer inputs
    python benchmarks/fuzz.py --engine random       # without atheris

With atheris installed (the engine by default then) each target runs in a child process under
libFuzzer, coverage-guided, from a seed corpus of valid encodings; otherwise a seeded
random-mutation driver runs in this process (bit flips, byte edits, splices of the seeds).  A
target may raise its codec's own error and nothing else; anything else is a crash: libFuzzer stops
and writes the input to `crash-*` in the working directory, the random driver stops and prints it.
The suite keeps a short, derandomized hypothesis run of the same properties
(tests/codecs/test_fuzz.py); figures from this script go in the README.
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

Target = Callable[[bytes], None]


@dataclass(frozen=True)
class Fuzzed:
    run: Target
    seeds: list[bytes]


def _targets() -> dict[str, Fuzzed]:
    # Imported here so that atheris can instrument them (see `_child`).
    from twisted.internet.task import Clock
    from twisted.logger import Logger
    from twisted.protocols import amp

    from twisted_vmtools.codecs import datamap, diskinfo, guestos, message, nicinfo, rpci, stream, tclo
    from twisted_vmtools.codecs import registers as bd
    from twisted_vmtools.vmx import control
    from twisted_vmtools.vmx.backdoor_host import BackdoorHost
    from twisted_vmtools.vmx.endpoints import backdoor_endpoints
    from twisted_vmtools.vmx.model import VMX

    def fuzz_datamap(data: bytes) -> None:
        try:
            datamap.decode_packet(data)
        except datamap.VsockPacketError:
            pass
        decoder = datamap.PacketDecoder(max_packet=4096)
        cut = data[0] % (len(data) + 1) if data else 0
        try:
            for chunk in (data[:cut], data[cut:]):
                decoder.feed(chunk)
        except datamap.VsockPacketError:
            pass

    def fuzz_text(data: bytes) -> None:
        for parse, error in (
            (tclo.parse_command, tclo.TCLOError),
            (tclo.parse_reply, tclo.TCLOError),
            (rpci.parse_request, rpci.RPCIFormatError),
            (rpci.parse_reply, rpci.RPCIFormatError),
            (stream.parse_preamble, stream.StreamPreambleError),
        ):
            try:
                parse(data)  # type: ignore[operator]
            except error:
                pass

    def fuzz_nicinfo(data: bytes) -> None:
        try:
            nicinfo.decode_guest_nic_proto(data)
        except nicinfo.NicInfoError:
            pass

    def fuzz_guest_reports(data: bytes) -> None:
        try:
            diskinfo.decode_disk_info(data)
        except diskinfo.DiskInfoError:
            pass
        try:
            guestos.decode_detailed_data(data)
        except guestos.GuestOSError:
            pass

    class Failed(Exception):
        """A handler failure the VMX logged: a crash for the fuzzer."""

    def raise_failures(event: dict[str, object]) -> None:
        if "log_failure" in event:
            failure = event["log_failure"]
            raise Failed(str(getattr(failure, "value", failure)))

    def fresh_vmx() -> VMX:
        vmx = VMX(Clock())
        vmx.rpci_server.log = Logger(observer=raise_failures)  # type: ignore[arg-type]
        return vmx

    def fuzz_rpci_server(data: bytes) -> None:
        fresh_vmx().rpci(data)

    def fuzz_message_vmx(data: bytes) -> None:
        # A guest's backdoor calls: each 29-byte record is an operation and 7 registers;
        # message, RPCI and TCLO handling of the VMX behind it all run, and none may raise.
        host = BackdoorHost(backdoor_endpoints(fresh_vmx()), high_bandwidth=bool(data[:1] and data[0] & 1))
        for pos in range(1, len(data) - 28, 29):
            op = data[pos] % 4
            ax, bx, cx, dx, si, di, bp = struct.unpack_from("<7I", data, pos + 1)
            if op < 2:  # most calls: message channel commands with the magic on the port
                ax, dx = bd.BDOOR_MAGIC, (dx & 0xFFFF0000) | bd.BDOOR_PORT
                cx = (cx & 0xFFFF0000) | bd.CMD_MESSAGE
            regs = bd.Registers(ax=ax, bx=bx, cx=cx, dx=dx, si=si, di=di, bp=bp)
            if op == 2:
                host.high_bandwidth_out(1, regs, data[pos : pos + (cx & 0xFF)])
            elif op == 3 and bx & 1:
                host.high_bandwidth_in(1, regs)
            else:
                host.low_bandwidth(1, regs)
        host.owner_exited(1)

    base = control.ControlCommand
    commands: list[type[amp.Command]] = [
        command
        for command in vars(control).values()
        if isinstance(command, type) and issubclass(command, base) and command is not base
    ]

    def fuzz_control(data: bytes) -> None:
        if not data:
            return
        command = commands[data[0] % len(commands)]
        fields = data[1:].split(b"\0")
        box = amp.AmpBox(zip(fields[::2], fields[1::2], strict=False))
        try:
            command.parseArguments(box, None)
        except control.ControlArgumentError:
            pass

    return {
        "datamap": Fuzzed(fuzz_datamap, _datamap_seeds(datamap)),
        "text": Fuzzed(fuzz_text, [b"ping", b"OK ATR toolbox", b"1 value\0", b"info-set guestinfo.x y", b"RPCI"]),
        "nicinfo": Fuzzed(fuzz_nicinfo, _nicinfo_seeds(nicinfo)),
        "guest_reports": Fuzzed(fuzz_guest_reports, _guest_report_seeds(diskinfo, guestos)),
        "rpci_server": Fuzzed(fuzz_rpci_server, _rpci_seeds()),
        "message_vmx": Fuzzed(fuzz_message_vmx, _message_seeds(bd, message)),
        "control": Fuzzed(fuzz_control, _control_seeds(commands)),
    }


# -- seeds: valid encodings the mutations start from


def _datamap_seeds(datamap: object) -> list[bytes]:
    from twisted_vmtools.codecs.datamap import VsockPacket

    return [VsockPacket.data(b"info-get guestinfo.ip").encode(), VsockPacket.ping().encode()]


def _nicinfo_seeds(nicinfo: object) -> list[bytes]:
    from twisted_vmtools.codecs.nicinfo import (
        GuestNicV3,
        IpAddressEntry,
        NicInfoV3,
        TypedIpAddress,
        encode_nic_info,
        to_v2,
    )

    nic = GuestNicV3(
        mac_address="00:50:56:01:02:03",
        ips=(IpAddressEntry(TypedIpAddress.from_ip("192.0.2.10"), 24),),
    )
    info = NicInfoV3(nics=(nic,))
    return [encode_nic_info(info), encode_nic_info(to_v2(info))]


def _guest_report_seeds(diskinfo: object, guestos: object) -> list[bytes]:
    from twisted_vmtools.codecs.diskinfo import DiskEntry, encode_disk_info
    from twisted_vmtools.codecs.guestos import DetailedData, encode_detailed_data

    disk = DiskEntry("/", 10 << 30, 20 << 30, "ext4", ("sda1",))
    return [encode_disk_info([disk]), encode_detailed_data(DetailedData("debian12-64", "prettyName='Debian'"))]


def _rpci_seeds() -> list[bytes]:
    return [
        b"info-set guestinfo.ip 192.0.2.1\0",
        b"info-get guestinfo.ip\0",
        b"tools.set.versiontype 12352 4\0",
        b"SetGuestInfo  4 192.0.2.1\0",
        b"tools.capability.hgfs_server toolbox 1\0",
        b"tools.os.statechange.status 1 2\0",
        b"SetGuestDiskInfo {}\0",
    ]


def _message_seeds(bd: object, message: object) -> list[bytes]:
    from twisted_vmtools.codecs.message import FLAG_COOKIE, PROTO_RPCI, MessageType

    def call(op: int, kind: int, bx: int = 0, channel: int = 0, size_cx: int = 0) -> bytes:
        cx = (kind << 16) | 30 if op < 2 else size_cx
        return bytes([op]) + struct.pack("<7I", 0, bx, cx, channel << 16, 0, 0, 0)

    request = b"info-get guestinfo.ip\0"
    words = [int.from_bytes(request[i : i + 4].ljust(4, b"\0"), "little") for i in range(0, len(request), 4)]
    open_rpci = call(0, MessageType.OPEN, PROTO_RPCI)
    send = [call(0, MessageType.SENDSIZE, len(request))] + [call(0, MessageType.SENDPAYLOAD, w) for w in words]
    receive = [call(0, MessageType.RECVSIZE), call(0, MessageType.RECVPAYLOAD, 1), call(0, MessageType.RECVSTATUS, 1)]
    close = call(0, MessageType.CLOSE)
    plain = b"\0" + open_rpci + b"".join(send + receive) + close
    cookie = b"\0" + call(0, MessageType.OPEN, PROTO_RPCI | FLAG_COOKIE) + close
    return [plain, cookie]


def _control_seeds(commands: list[type]) -> list[bytes]:
    boxes = {
        "SendTCLO": b"command\x001\x00command.0\x00ping\x00timeout\x0010",
        "GuestInfoGet": b"key\x00guestinfo.ip",
        "GuestInfoSet": b"key\x00guestinfo.ip\x00value\x001\x00value.0\x00192.0.2.1",
        "RPCLog": b"last\x0020",
    }
    return [bytes([index]) + boxes.get(command.__name__, b"") for index, command in enumerate(commands)]


# -- drivers


def _mutate(rng: random.Random, seeds: list[bytes], data: bytes) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(7)
        if choice == 0 and buffer:  # flip a bit
            buffer[rng.randrange(len(buffer))] ^= 1 << rng.randrange(8)
        elif choice == 1 and buffer:  # an interesting byte
            buffer[rng.randrange(len(buffer))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, 0x20, 0x2E))
        elif choice == 2:  # insert bytes
            at = rng.randrange(len(buffer) + 1)
            buffer[at:at] = rng.randbytes(rng.randint(1, 8))
        elif choice == 3 and buffer:  # delete a run
            at = rng.randrange(len(buffer))
            del buffer[at : at + rng.randint(1, 8)]
        elif choice == 4 and len(buffer) >= 4:  # an interesting 32-bit word, either endianness
            at = rng.randrange(len(buffer) - 3)
            word = rng.choice((0, 1, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, len(buffer), 0x10000))
            buffer[at : at + 4] = word.to_bytes(4, rng.choice(("little", "big")))
        elif choice == 5:  # splice in part of a seed
            other = rng.choice(seeds)
            at = rng.randrange(len(buffer) + 1)
            start = rng.randrange(len(other) + 1)
            buffer[at:at] = other[start : start + rng.randint(1, 32)]
        else:  # truncate
            del buffer[rng.randrange(len(buffer) + 1) :]
    return bytes(buffer)


def run_random(name: str, fuzzed: Fuzzed, runs: int, seed: int) -> tuple[int, float, bytes | None]:
    """The fallback driver: mutate seeds and earlier mutants; stop at the first crash."""
    rng = random.Random(f"{seed}:{name}")
    pool = list(fuzzed.seeds)
    start = time.perf_counter()
    for count in range(runs):
        if rng.random() < 0.05:
            data = rng.randbytes(rng.randint(0, 64))
        else:
            data = _mutate(rng, fuzzed.seeds, rng.choice(pool))
        try:
            fuzzed.run(data)
        except Exception:
            import traceback

            traceback.print_exc()
            return count + 1, time.perf_counter() - start, data
        if len(pool) < 1000 and rng.random() < 0.01:
            pool.append(data)
    return runs, time.perf_counter() - start, None


def _child(name: str, runs: int, corpus: str) -> None:
    """One target under atheris/libFuzzer (this process ends when it is done)."""
    import atheris

    with atheris.instrument_imports(include=["twisted_vmtools"]):
        targets = _targets()
    fuzzed = targets[name]
    for index, seed in enumerate(fuzzed.seeds):
        with open(os.path.join(corpus, f"seed-{index}"), "wb") as file:
            file.write(seed)
    atheris.Setup(
        [sys.argv[0], f"-runs={runs}", "-max_len=4096", "-print_final_stats=1", corpus],
        fuzzed.run,
    )
    atheris.Fuzz()


def run_atheris(name: str, runs: int) -> tuple[int, float, bytes | None]:
    with tempfile.TemporaryDirectory() as corpus:
        start = time.perf_counter()
        child = subprocess.run(
            [sys.executable, __file__, "--child", name, "--runs", str(runs), "--corpus", corpus],
            capture_output=True,
            text=True,
        )
        spent = time.perf_counter() - start
    executed = runs
    for line in child.stderr.splitlines():
        if line.startswith("stat::number_of_executed_units:"):
            executed = int(line.split(":")[-1])
    if child.returncode != 0:
        print(child.stderr[-4000:], file=sys.stderr)
        return executed, spent, b"(see crash-* in the working directory)"
    return executed, spent, None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help="default: all")
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs per target")
    parser.add_argument("--engine", choices=("atheris", "random"), help="default: atheris if installed")
    parser.add_argument("--seed", type=int, default=0, help="the random driver's seed")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.runs, args.corpus)
        return 0
    engine = args.engine
    if engine is None:
        try:
            import atheris  # noqa: F401
        except ImportError:
            engine = "random"
        else:
            engine = "atheris"
    targets = _targets()
    names = args.targets or list(targets)
    unknown = set(names) - set(targets)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; known: {', '.join(targets)}")
    print(f"engine: {engine}, {args.runs:,} inputs per target")
    print(f"{'target':<14} {'inputs':>10} {'seconds':>8} {'inputs/s':>9}  result")
    crashed = 0
    for name in names:
        if engine == "atheris":
            count, spent, crash = run_atheris(name, args.runs)
        else:
            count, spent, crash = run_random(name, targets[name], args.runs, args.seed)
        result = "ok" if crash is None else f"CRASH on {crash[:80]!r}"
        crashed += crash is not None
        print(f"{name:<14} {count:>10,} {spent:>8.1f} {count / spent:>9,.0f}  {result}", flush=True)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
