"""Guard the live recommendation source: a hard deadline, a cap on concurrent calls and a circuit breaker."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from circuitbreaker import CircuitBreaker, CircuitBreakerError

from app.errors import UpstreamError
from app.sources.recommender import (
    CALL_DEADLINE,
    NO_OPTIONS,
    Options,
    Recommendation,
    Recommender,
)

log = logging.getLogger(__name__)


def _circuit_open() -> UpstreamError:
    return UpstreamError("Personalize is failing; answering from the fallback.", code="circuit_open", status=503)


class GuardedRecommender:
    """Call a recommender within a deadline, at most max_concurrency at a time, behind a circuit breaker.

    When the inner source says its own timeouts end the call in time (`ends_within(seconds)`, e.g.
    botocore's connect and read timeouts), the call runs in the caller's thread. Otherwise it runs on a
    small thread pool, so a request can stop waiting at its deadline even when the source has not given
    up yet; the late answer is simply dropped. The hand-off costs little CPU itself but, under load, a
    worker's threads queue for the GIL at every hand-over, which costs a miss CPU (README, Benchmark).
    Either way the deadline is in CALL_DEADLINE during the call. Calls beyond the cap and calls while the
    breaker is open fail at once, so requests go to the fallback instead of queueing behind a dead
    upstream (and Personalize's provisioned TPS is not multiplied by a burst).
    """

    def __init__(
        self, inner: Recommender, max_concurrency: int, failure_threshold: int, recovery_seconds: float,
        on_state_change: Callable[[str], None] | None = None,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.key = inner.key
        # answers already in a shared store (a batch job): not cached again nor counted (service.recommend)
        self.precomputed: bool = getattr(inner, "precomputed", False)
        self.recovery_seconds = recovery_seconds
        self.breaker = CircuitBreaker(
            failure_threshold=failure_threshold,
            recovery_timeout=recovery_seconds,
            # Only upstream failures trip it; a request Personalize rejects as invalid is the caller's fault.
            expected_exception=UpstreamError,
            name=f"{inner.name}-breaker",
        )
        self._call = self.breaker.decorate(inner.recommend)
        self.last_error: str | None = None  # the code of the last call's failure; None once a call succeeds
        self._breaker_state = self.breaker.state
        self._on_state_change = on_state_change  # e.g. the breaker gauge in the metrics
        if on_state_change is not None:
            on_state_change(self._breaker_state)
        self._ends_within: Callable[[float], bool] | None = getattr(inner, "ends_within", None)
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix=f"{inner.name}-call")

    def check_ready(self) -> None:
        """Ready whenever the inner source is."""
        self.inner.check_ready()

    def state(self) -> dict[str, str | None]:
        """Return the breaker's state and the last call's error code, for /readyz."""
        return {"breaker": self.breaker.state, "last_error": self.last_error}

    def note_error(self, code: str) -> None:
        """Record a failure found without a call (e.g. no credentials at start), for /readyz."""
        self.last_error = code

    def recommend(
        self, user_id: str | None, num_results: int, timeout: float | None = None, options: Options = NO_OPTIONS
    ) -> Recommendation:
        """Return the inner source's answer, or raise UpstreamError at once or when timeout seconds pass."""
        if self.breaker.opened:
            raise _circuit_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        inline = timeout is None or (self._ends_within is not None and self._ends_within(timeout))
        if not self._slots.acquire(blocking=False):
            raise UpstreamError("Too many Personalize calls in flight.", code="upstream_busy", status=503)
        if inline:
            return self._run(user_id, num_results, options, deadline)
        try:
            future = self._pool.submit(self._run, user_id, num_results, options, deadline)
        except BaseException:
            self._slots.release()
            raise
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            self.last_error = "upstream_timeout"
            raise UpstreamError(
                "Personalize did not answer within the request budget.", code="upstream_timeout", status=504
            ) from None

    def _run(self, user_id: str | None, num_results: int, options: Options, deadline: float | None
             ) -> Recommendation:
        """Call the inner source (holding a slot, which this releases) with CALL_DEADLINE set to deadline."""
        token = CALL_DEADLINE.set(deadline)
        try:
            recommendation = self._call(user_id, num_results, options)
        except CircuitBreakerError:
            raise _circuit_open() from None
        except UpstreamError as exc:
            self.last_error = exc.code
            raise
        finally:
            CALL_DEADLINE.reset(token)
            self._slots.release()
            self._log_breaker_change()
        self.last_error = None
        return recommendation

    def _log_breaker_change(self) -> None:
        """Log when the breaker opens or closes: on call's logs, the one line that explains a wave of fallbacks."""
        state = self.breaker.state
        if state == self._breaker_state:
            return
        self._breaker_state = state
        if self._on_state_change is not None:
            self._on_state_change(state)
        if state == "open":
            log.error("%s failed %d times in a row: answering from the fallback for %s s",
                      self.name, self.breaker.failure_count, self.recovery_seconds)
        elif state == "closed":
            log.warning("%s answers again: circuit breaker closed", self.name)
