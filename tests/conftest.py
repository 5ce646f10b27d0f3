"""Suite-wide settings."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

from twisted_vmtools.vmx.trap.cpuid import cpuid_faulting_available

# The same examples on every run (CI must not pass or fail by luck), and no per-example
# deadline: the machines are small and busy, and speed is measured by the benchmarks.
settings.register_profile(
    "twisted_vmtools", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("twisted_vmtools")


def pytest_report_header() -> str:
    # The trap engine intercepts CPUID by one of two paths, chosen by the host:
    # say which one this run's "auto" tests exercise (the other is forced by
    # cpuid_mode="int3" tests; "fault" falls back to int3 without cpuid_fault).
    if cpuid_faulting_available():
        return "trap engine CPUID path: faulting (this CPU offers cpuid_fault)"
    return "trap engine CPUID path: int3 breakpoints (no cpuid_fault on this CPU)"
