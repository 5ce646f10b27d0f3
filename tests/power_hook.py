"""A `--power-hook` for the end-to-end tests: appends the state to $VMTOOLS_TEST_POWER_LOG.  Runs nothing."""

from __future__ import annotations

import os


def record(state: str) -> bool:
    with open(os.environ["VMTOOLS_TEST_POWER_LOG"], "a") as log:
        log.write(state + "\n")
    return True
