"""capstone against the builtin length decoder over every ELF object on this machine.

    python benchmarks/cpuid_sites.py [PATTERN ...]

For each ELF file matched (default: /usr/bin/*, /usr/sbin/*, /usr/lib/x86_64-linux-gnu/**/*.so*,
the dynamic loader), find the `cpuid` sites with both sweepers and print the objects, sites, the
time each decoder took, and every object where they disagree.  The suite compares them on the
objects the engine actually scans (tests/trap/test_disasm.py); this is the wide sweep, which also
walks data that compilers leave in `.text` (a disagreement there is about bytes that are no code).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

from twisted_vmtools.vmx.trap import disasm, elf

DEFAULT = [
    "/usr/bin/*",
    "/usr/sbin/*",
    "/usr/lib/x86_64-linux-gnu/**/*.so*",
    "/lib64/ld-linux-x86-64.so.2",
]


def objects(patterns: list[str]) -> list[str]:
    found = set()
    for pattern in patterns:
        for path in glob.glob(pattern, recursive=True):
            if os.path.isfile(path) and not os.path.islink(path):
                found.add(os.path.realpath(path))
    return sorted(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("patterns", nargs="*", default=DEFAULT)
    args = parser.parse_args()
    capstone = disasm.capstone_sweeper()
    if capstone is None:
        print("capstone is not installed: pip install -e '.[disasm]'", file=sys.stderr)
        return 1
    builtin = disasm.BuiltinSweeper()
    scanned = sites = 0
    spent = {"capstone": 0.0, "builtin": 0.0}
    disagreements = []
    for path in objects(args.patterns):
        try:
            with open(path, "rb") as file:
                data = file.read()
            if data[:4] != b"\x7fELF":
                continue
            image = elf.ELFFile(data)
        except (OSError, elf.ELFError, ValueError, IndexError):
            continue
        scanned += 1
        found = {}
        for sweeper in (capstone, builtin):
            start = time.perf_counter()
            found[sweeper.name] = image.cpuid_offsets(sweeper)
            spent[sweeper.name] += time.perf_counter() - start
        sites += len(found["capstone"])
        if found["capstone"] != found["builtin"]:
            only_capstone = sorted(set(found["capstone"]) - set(found["builtin"]))
            only_builtin = sorted(set(found["builtin"]) - set(found["capstone"]))
            disagreements.append(f"{path}: capstone only {only_capstone}, builtin only {only_builtin}")
    print(f"{scanned} ELF objects, {sites} cpuid sites (capstone)")
    print(f"time: capstone {spent['capstone']:.2f} s, builtin {spent['builtin']:.2f} s")
    print(f"{len(disagreements)} objects where they disagree")
    for line in disagreements:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
