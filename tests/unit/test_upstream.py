"""app/sources/guard.py: GuardedRecommender's deadline, concurrency cap and circuit breaker around small fakes."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import circuitbreaker
import pytest

from app.errors import InvalidParameterError, UpstreamError
from app.sources.guard import GuardedRecommender
from app.sources.recommender import CALL_DEADLINE, NO_OPTIONS, Options, Recommendation
from tests.conftest import FakeRecommender

# Generous: a fail-fast path must not wait on anything, but CI machines stall now and then.
AT_ONCE = 0.5
MARGIN = 0.5


class BlockingRecommender:
    """A source whose calls block until `release` is set; it counts the calls that started and ended."""

    name = "blocking"
    key = "blocking-source"

    def __init__(self, release: threading.Event, answer: Recommendation | None = None,
                 error: Exception | None = None) -> None:
        self.release = release
        self.answer = answer or Recommendation(["1000"], "rid-blocking")
        self.error = error
        self.calls: list[tuple[str, int]] = []
        self.finished = 0
        self._changed = threading.Condition()

    def recommend(self, user_id: str | None, num_results: int, options: Options = NO_OPTIONS) -> Recommendation:
        with self._changed:
            self.calls.append((user_id, num_results))
            self._changed.notify_all()
        try:
            if not self.release.wait(10):
                raise AssertionError("the test never released the blocked call")
            if self.error is not None:
                raise self.error
            return self.answer
        finally:
            with self._changed:
                self.finished += 1
                self._changed.notify_all()

    def check_ready(self) -> None:
        return None

    def wait_started(self, count: int, timeout: float = 2.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.calls) >= count, timeout)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event blocked fakes wait on; always set at teardown so no pool thread is left hanging."""
    event = threading.Event()
    yield event
    event.set()


def guard(inner: object, max_concurrency: int = 4, failure_threshold: int = 1000,
          recovery_seconds: float = 30.0) -> GuardedRecommender:
    return GuardedRecommender(inner, max_concurrency=max_concurrency, failure_threshold=failure_threshold,
                              recovery_seconds=recovery_seconds)  # type: ignore[arg-type]


def until(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Poll condition on a monotonic clock, up to timeout seconds (for states with no event to wait on)."""
    end = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < end:
        if condition():
            return True
        pause.wait(0.005)
    return condition()


def raises_upstream(call: Callable[[], object]) -> tuple[UpstreamError, float]:
    """Run call, which must raise UpstreamError; return it and how long the call took."""
    started = time.monotonic()
    with pytest.raises(UpstreamError) as info:
        call()
    return info.value, time.monotonic() - started


def succeeds(g: GuardedRecommender) -> bool:
    try:
        g.recommend("u1", 3, timeout=2)
    except UpstreamError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# answers and deadline


def test_returns_the_inner_answer_and_names_the_inner_source() -> None:
    inner = FakeRecommender({"u1": ["1000", "1037", "1074"]}, key="campaign-key")
    g = guard(inner)

    assert g.recommend("u1", 2, timeout=2) == Recommendation(["1000", "1037"], "rid-u1")
    assert inner.calls == [("u1", 2)]
    assert (g.name, g.key) == ("fake", "campaign-key")


def test_without_a_timeout_the_answer_is_awaited(release: threading.Event) -> None:
    inner = BlockingRecommender(release)
    g = guard(inner)
    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.append(g.recommend("u1", 1)))
    worker.start()
    assert inner.wait_started(1)
    release.set()
    worker.join(5)
    assert outcome == [inner.answer]


def test_a_call_slower_than_the_timeout_raises_upstream_timeout_at_the_deadline(release: threading.Event) -> None:
    inner = BlockingRecommender(release)
    g = guard(inner)

    error, elapsed = raises_upstream(lambda: g.recommend("u1", 3, timeout=0.2))

    assert (error.code, error.status) == ("upstream_timeout", 504)
    assert 0.2 - 0.02 <= elapsed < 0.2 + MARGIN
    assert inner.calls == [("u1", 3)]  # it was really called, and is still running


def test_an_inner_upstream_error_passes_through_unchanged() -> None:
    inner = FakeRecommender()
    inner.error = UpstreamError("throttled", code="upstream_throttled", status=503, retry_after=1)
    g = guard(inner)

    error, _ = raises_upstream(lambda: g.recommend("u1", 3, timeout=2))

    assert error is inner.error


def test_an_invalid_parameter_error_passes_through() -> None:
    inner = FakeRecommender()
    inner.error = InvalidParameterError("bad user", code="rejected_by_personalize")
    g = guard(inner)

    with pytest.raises(InvalidParameterError) as info:
        g.recommend("u1", 3, timeout=2)
    assert info.value is inner.error


# --------------------------------------------------------------------------------------------------
# concurrency cap


def test_calls_beyond_max_concurrency_fail_at_once_without_queueing(release: threading.Event) -> None:
    inner = BlockingRecommender(release)
    g = guard(inner, max_concurrency=2)
    outcomes: list[object] = []

    def call() -> None:
        try:
            outcomes.append(g.recommend("u1", 1, timeout=5))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcomes.append(exc)

    in_flight = [threading.Thread(target=call) for _ in range(2)]
    for thread in in_flight:
        thread.start()
    assert inner.wait_started(2)

    for _ in range(3):
        error, elapsed = raises_upstream(lambda: g.recommend("u2", 1, timeout=5))
        assert (error.code, error.status) == ("upstream_busy", 503)
        assert elapsed < AT_ONCE
    assert len(inner.calls) == 2  # the refused calls never reached the source

    release.set()
    for thread in in_flight:
        thread.join(5)
    assert outcomes == [inner.answer, inner.answer]
    assert g.recommend("u3", 1, timeout=2) == inner.answer  # the slots came back
    assert g.recommend("u3", 1, timeout=2) == inner.answer


@pytest.mark.parametrize(
    "error",
    [UpstreamError("down", code="upstream_unavailable"), InvalidParameterError("bad"), RuntimeError("bug")],
    ids=["upstream", "invalid", "crash"],
)
def test_slots_are_released_after_failures(error: Exception) -> None:
    inner = FakeRecommender()
    inner.error = error
    g = guard(inner, max_concurrency=1)

    for _ in range(4):  # with a leaked slot, the second call would be refused as busy
        with pytest.raises(type(error)) as info:
            g.recommend("u1", 1, timeout=2)
        assert info.value is error
    assert len(inner.calls) == 4


def test_slots_are_released_after_timeouts_once_the_inner_call_returns(release: threading.Event) -> None:
    inner = BlockingRecommender(release)
    g = guard(inner, max_concurrency=2)

    for _ in range(2):
        error, _ = raises_upstream(lambda: g.recommend("u1", 1, timeout=0.05))
        assert error.code == "upstream_timeout"
    # Both timed-out calls still run on the pool: they hold the slots until they return.
    error, elapsed = raises_upstream(lambda: g.recommend("u1", 1, timeout=5))
    assert error.code == "upstream_busy"
    assert elapsed < AT_ONCE
    assert len(inner.calls) == 2

    release.set()
    assert until(lambda: succeeds(g))
    assert g.recommend("u1", 1, timeout=2) == inner.answer
    assert inner.finished == len(inner.calls)


# --------------------------------------------------------------------------------------------------
# circuit breaker


def test_the_breaker_opens_after_failure_threshold_upstream_errors() -> None:
    inner = FakeRecommender({"u1": ["1000"]})
    inner.error = UpstreamError("down", code="upstream_unavailable")
    g = guard(inner, failure_threshold=3)

    for _ in range(3):
        error, _ = raises_upstream(lambda: g.recommend("u1", 1, timeout=2))
        assert error is inner.error
    assert len(inner.calls) == 3

    inner.error = None  # even a source that would answer now is not asked while the breaker is open
    for _ in range(5):
        error, elapsed = raises_upstream(lambda: g.recommend("u1", 1, timeout=2))
        assert (error.code, error.status) == ("circuit_open", 503)
        assert elapsed < AT_ONCE
    assert len(inner.calls) == 3


def test_fewer_failures_than_the_threshold_keep_the_breaker_closed() -> None:
    inner = FakeRecommender({"u1": ["1000"]})
    inner.error = UpstreamError("down", code="upstream_unavailable")
    g = guard(inner, failure_threshold=3)

    for _ in range(2):
        raises_upstream(lambda: g.recommend("u1", 1, timeout=2))
    inner.error = None

    assert g.recommend("u1", 1, timeout=2).item_ids == ["1000"]
    assert len(inner.calls) == 3


def test_invalid_parameter_errors_do_not_open_the_breaker() -> None:
    inner = FakeRecommender({"u1": ["1000"]})
    inner.error = InvalidParameterError("bad user id", code="rejected_by_personalize")
    g = guard(inner, failure_threshold=2)

    for _ in range(6):
        with pytest.raises(InvalidParameterError):
            g.recommend("u1", 1, timeout=2)
    assert len(inner.calls) == 6
    assert not g.breaker.opened

    inner.error = None
    assert g.recommend("u1", 1, timeout=2).item_ids == ["1000"]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Replace circuitbreaker's monotonic clock with one the test moves by hand: clock[0] += seconds."""
    now = [time.monotonic()]
    monkeypatch.setattr(circuitbreaker, "monotonic", lambda: now[0])
    return now


def test_after_recovery_seconds_a_success_closes_the_breaker(clock: list[float]) -> None:
    inner = FakeRecommender({"u1": ["1000"]})
    inner.error = UpstreamError("down", code="upstream_unavailable")
    g = guard(inner, failure_threshold=2, recovery_seconds=30)
    for _ in range(2):
        raises_upstream(lambda: g.recommend("u1", 1, timeout=2))

    clock[0] += 29
    assert raises_upstream(lambda: g.recommend("u1", 1, timeout=2))[0].code == "circuit_open"
    assert len(inner.calls) == 2

    clock[0] += 2  # past recovery_seconds: one trial call goes through
    inner.error = None
    assert g.recommend("u1", 1, timeout=2).item_ids == ["1000"]
    assert len(inner.calls) == 3

    # Closed again: a single new failure does not reopen it (the count starts over).
    inner.error = UpstreamError("blip", code="upstream_unavailable")
    assert raises_upstream(lambda: g.recommend("u1", 1, timeout=2))[0] is inner.error
    inner.error = None
    assert g.recommend("u1", 1, timeout=2).item_ids == ["1000"]
    assert len(inner.calls) == 5


def test_a_failed_trial_call_reopens_the_breaker(clock: list[float]) -> None:
    inner = FakeRecommender({"u1": ["1000"]})
    inner.error = UpstreamError("down", code="upstream_unavailable")
    g = guard(inner, failure_threshold=2, recovery_seconds=30)
    for _ in range(2):
        raises_upstream(lambda: g.recommend("u1", 1, timeout=2))

    clock[0] += 31
    assert raises_upstream(lambda: g.recommend("u1", 1, timeout=2))[0] is inner.error  # the trial
    assert raises_upstream(lambda: g.recommend("u1", 1, timeout=2))[0].code == "circuit_open"
    assert len(inner.calls) == 3


def test_the_breaker_recovers_on_the_real_clock() -> None:
    inner = FakeRecommender({"u1": ["1000"]})
    inner.error = UpstreamError("down", code="upstream_unavailable")
    g = guard(inner, failure_threshold=1, recovery_seconds=0.2)
    raises_upstream(lambda: g.recommend("u1", 1, timeout=2))
    assert raises_upstream(lambda: g.recommend("u1", 1, timeout=2))[0].code == "circuit_open"

    inner.error = None
    started = time.monotonic()
    assert until(lambda: succeeds(g), timeout=2.0)
    assert time.monotonic() - started >= 0.1  # not before the recovery time
    assert len(inner.calls) == 2


def test_opening_and_closing_the_breaker_are_logged_once_each(
    clock: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    inner = FakeRecommender({"u1": ["1000"]})
    inner.error = UpstreamError("down", code="upstream_unavailable")
    g = guard(inner, failure_threshold=2, recovery_seconds=30)
    with caplog.at_level(logging.WARNING, logger="app.sources.guard"):
        for _ in range(5):  # 2 failures open it; 3 more are refused without a call
            raises_upstream(lambda: g.recommend("u1", 1, timeout=2))
        clock[0] += 31
        inner.error = None
        for _ in range(3):
            g.recommend("u1", 1, timeout=2)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert messages == [
        (logging.ERROR, "fake failed 2 times in a row: answering from the fallback for 30 s"),
        (logging.WARNING, "fake answers again: circuit breaker closed"),
    ]


# --------------------------------------------------------------------------------------------------
# in the caller's thread when the source's own timeouts end the call in time


class SelfTimingRecommender:
    """A source that says its own timeouts end a call within `ends_in` seconds; it records where it ran."""

    name = "self-timing"
    key = "self-timing-source"

    def __init__(self, ends_in: float, error: Exception | None = None) -> None:
        self.ends_in = ends_in
        self.error = error
        self.asked: list[float] = []
        self.threads: list[threading.Thread] = []
        self.deadlines: list[float | None] = []

    def ends_within(self, seconds: float) -> bool:
        self.asked.append(seconds)
        return self.ends_in <= seconds

    def recommend(self, user_id: str | None, num_results: int, options: Options = NO_OPTIONS) -> Recommendation:
        self.threads.append(threading.current_thread())
        self.deadlines.append(CALL_DEADLINE.get())
        if self.error is not None:
            raise self.error
        return Recommendation(["1000"], "rid-self-timing")


def test_a_call_its_own_timeouts_end_in_time_runs_in_the_callers_thread_with_the_deadline_set() -> None:
    inner = SelfTimingRecommender(ends_in=0.7)
    g = guard(inner)

    before = time.monotonic()
    assert g.recommend("u1", 1, timeout=0.79) == Recommendation(["1000"], "rid-self-timing")
    after = time.monotonic()

    assert inner.asked == [0.79]
    assert inner.threads == [threading.current_thread()]
    [deadline] = inner.deadlines
    assert deadline is not None and before + 0.79 <= deadline <= after + 0.79
    assert CALL_DEADLINE.get() is None  # reset once the call is over


def test_a_call_its_own_timeouts_cannot_end_in_time_runs_on_the_pool_with_the_deadline_set() -> None:
    inner = SelfTimingRecommender(ends_in=0.8)
    g = guard(inner)

    before = time.monotonic()
    g.recommend("u1", 1, timeout=0.79)

    assert inner.asked == [0.79]
    [thread] = inner.threads
    assert thread is not threading.current_thread() and thread.name.startswith("self-timing-call")
    [deadline] = inner.deadlines
    assert deadline is not None and before + 0.79 <= deadline <= time.monotonic() + 0.79


def test_a_source_without_ends_within_always_runs_on_the_pool() -> None:
    inner = FakeRecommender({"u1": ["1000"]})
    threads: list[threading.Thread] = []
    answer = inner.recommend

    def recording(*args: object, **kwargs: object) -> Recommendation:
        threads.append(threading.current_thread())
        return answer(*args, **kwargs)  # type: ignore[arg-type]

    inner.recommend = recording  # type: ignore[method-assign]
    guard(inner).recommend("u1", 1, timeout=30)
    assert threads and threads[0] is not threading.current_thread()


def test_failures_in_the_callers_thread_open_the_breaker_and_release_their_slots() -> None:
    inner = SelfTimingRecommender(ends_in=0.1, error=UpstreamError("Personalize did not answer in time.",
                                                                   code="upstream_timeout", status=504))
    g = guard(inner, max_concurrency=1, failure_threshold=3)

    codes = [raises_upstream(lambda: g.recommend("u1", 1, timeout=0.5))[0].code for _ in range(4)]

    # Each failure gave its one slot back (else the second call would be upstream_busy); the third opened it.
    assert codes == ["upstream_timeout"] * 3 + ["circuit_open"]
    assert len(inner.threads) == 3
    assert g.breaker.opened
