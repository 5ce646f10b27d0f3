"""Log lines that a peer can provoke, rate limited: bad input must not fill the VMX's log."""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

BURST = 10  # lines at once
PER_MINUTE = 10  # refilled


class RateLimitedLog:
    """A token bucket in front of a `Logger`: at most `BURST` lines at once, then
    `PER_MINUTE` a minute; what is dropped is counted and reported with the next line."""

    def __init__(
        self, log: Logger, clock: Callable[[], float] | None = None, *, burst: int = BURST, per_minute: int = PER_MINUTE
    ) -> None:
        import time

        self._log = log
        self._clock = clock or time.monotonic
        self._burst = burst
        self._rate = per_minute / 60.0
        self._tokens = float(burst)
        self._last = self._clock()
        self.dropped = 0

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1:
            self.dropped += 1
            return False
        self._tokens -= 1
        return True

    def warn(self, format: str, **fields: object) -> None:
        if not self.allow():
            return
        if self.dropped:
            format += " ({dropped} similar lines dropped)"
            fields["dropped"], self.dropped = self.dropped, 0
        self._log.warn(format, **fields)
