"""A cap on how many calls a second a command makes to a paid, provisioned upstream (Personalize)."""
from __future__ import annotations

import math
from types import TracebackType

from pyrate_limiter import AbstractClock, Duration, Limiter, Rate, StateBucket, TokenBucket

# A per-second rate as a whole number of calls per 1,000 s, so fractional rates (0.5 a second) are exact to 0.001.
PER_THOUSAND_SECONDS = 1000 * Duration.SECOND


class Pace:
    """Let calls start at most `per_second` a second, evenly spaced: `wait()` blocks until the next may start.

    A token bucket (pyrate-limiter) holding 10 ms worth of calls (at least one), refilled so that no second
    sees more than per_second + 1 starts. pyrate-limiter waits whole milliseconds: with a bucket of one token,
    a gap of 2.06 ms (485 a second) became 3 ms, and 485 a second became 334; the tokens that gather during
    the longer wait make up for it. None: no cap.
    """

    def __init__(self, per_second: float | None, clock: AbstractClock | None = None) -> None:
        self.per_second = per_second
        self._limiter: Limiter | None = None
        if per_second is not None:
            burst = max(1, math.ceil(per_second / 100))
            refill = per_second - (burst - 1)  # a full bucket and a second's refill: at most per_second + 1
            rate = Rate(max(1, round(refill * 1000)), PER_THOUSAND_SECONDS, burst=burst)
            self._limiter = Limiter(StateBucket([rate], algorithm=TokenBucket(), clock=clock), buffer_ms=0)

    def wait(self) -> None:
        """Return when the next call may start."""
        if self._limiter is not None:
            self._limiter.try_acquire("calls")  # blocking: never refuses a weight of 1

    def __enter__(self) -> Pace:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._limiter is not None:
            self._limiter.close()  # its background leak thread
