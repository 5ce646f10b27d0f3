"""Suite-wide settings."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# The same examples on every run (CI must not pass or fail by luck), and no per-example
# deadline: the machines are small and busy, and speed is measured by the benchmarks.
settings.register_profile(
    "twisted_vmtools", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("twisted_vmtools")
