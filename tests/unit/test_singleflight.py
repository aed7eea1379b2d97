"""app/caching/singleflight.py: one fetch per key, within a process (events) and across workers (a Redis lock)."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from cachelib import SimpleCache

from app.caching import singleflight
from app.caching.answers import AnswerCache, CachedAnswer, encode_answer
from app.caching.singleflight import SingleFlight
from app.components import components
from app.errors import UpstreamError
from app.sources.recommender import Recommendation
from tests.conftest import FakeRecommender

KEY = "recs:v1:{test-key}"
WAIT = 5.0  # upper bound on any wait for another thread; never reached when the code works


class Waiters:
    """Counts callers waiting on another caller's flight (see counted_flights)."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = threading.Condition()

    def arrived(self) -> None:
        with self._changed:
            self.count += 1
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 2.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.count >= count, timeout)


@pytest.fixture
def waiters(monkeypatch: pytest.MonkeyPatch) -> Waiters:
    """Make each flight's event report the callers that start waiting on it, so a leader can hold its
    fetch until every other caller has joined the flight (no race with late threads, no sleeps)."""
    counter = Waiters()

    class CountingEvent(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            counter.arrived()
            return super().wait(timeout)

    @dataclass
    class CountedFlight(singleflight._Flight):
        done: threading.Event = field(default_factory=CountingEvent)

    monkeypatch.setattr(singleflight, "_Flight", CountedFlight)
    return counter


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


class Fetches:
    """A fetch function factory that counts calls and can wait for a condition before answering."""

    def __init__(self, answer: Recommendation | None = None, error: BaseException | None = None,
                 before: Callable[[], None] | None = None) -> None:
        self.answer = answer or Recommendation(["1000", "1037"], "rid-1")
        self.error = error
        self.before = before
        self.calls: list[str] = []
        self.remaining: list[float] = []
        self._lock = threading.Lock()

    def for_(self, who: str) -> Callable[[float], Recommendation]:
        def fetch(remaining: float) -> Recommendation:
            with self._lock:
                self.calls.append(who)
                self.remaining.append(remaining)
            if self.before is not None:
                self.before()
            if self.error is not None:
                raise self.error
            return Recommendation(self.answer.item_ids, f"{self.answer.recommendation_id}-{who}")

        return fetch


def concurrently(calls: list[Callable[[], Any]]) -> list[Any]:
    """Start all calls at the same moment (a barrier) and return each one's result or exception."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait(WAIT)
        try:
            return call()
        except BaseException as exc:  # noqa: BLE001 - returned for the test to inspect
            return exc

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(run, call) for call in calls]
        return [future.result(timeout=3 * WAIT) for future in futures]


def memory_cache() -> AnswerCache:
    return AnswerCache(SimpleCache(), ttl=60)


def deadline(seconds: float = WAIT) -> float:
    return time.monotonic() + seconds


# --------------------------------------------------------------------------------------------------
# within one process


def test_concurrent_callers_for_one_key_share_one_fetch(waiters: Waiters) -> None:
    fetches = Fetches(before=lambda: waiters.wait_for(19))
    flights = SingleFlight(memory_cache())

    results = concurrently([lambda: flights.run(KEY, fetches.for_("w"), deadline())] * 20)

    assert len(fetches.calls) == 1
    assert all(isinstance(r, Recommendation) for r in results), results
    assert all(r is results[0] for r in results)
    assert results[0] == Recommendation(["1000", "1037"], "rid-1-w")


def test_different_keys_fetch_separately_and_at_the_same_time() -> None:
    started = {"a": threading.Event(), "b": threading.Event()}
    overlapped: dict[str, bool] = {}

    def fetch_for(key: str, other: str) -> Callable[[float], Recommendation]:
        def fetch(remaining: float) -> Recommendation:
            started[key].set()
            overlapped[key] = started[other].wait(WAIT)  # a global lock would deadlock here until WAIT
            return Recommendation([key])

        return fetch

    flights = SingleFlight(memory_cache())
    results = concurrently([
        lambda: flights.run("a", fetch_for("a", "b"), deadline()),
        lambda: flights.run("b", fetch_for("b", "a"), deadline()),
    ])

    assert results == [Recommendation(["a"]), Recommendation(["b"])]
    assert overlapped == {"a": True, "b": True}


@pytest.mark.parametrize(
    "error", [UpstreamError("throttled", code="upstream_throttled", status=503), RuntimeError("bug")],
    ids=["upstream", "crash"],
)
def test_the_leaders_error_reaches_every_waiter(waiters: Waiters, error: Exception) -> None:
    fetches = Fetches(error=error, before=lambda: waiters.wait_for(9))
    flights = SingleFlight(memory_cache())

    results = concurrently([lambda: flights.run(KEY, fetches.for_("w"), deadline())] * 10)

    assert len(fetches.calls) == 1
    assert all(r is error for r in results), results


def test_waiters_give_up_at_their_deadline(release: threading.Event) -> None:
    leader_started = threading.Event()

    def slow_fetch(remaining: float) -> Recommendation:
        leader_started.set()
        release.wait(WAIT)
        return Recommendation(["1000"])

    flights = SingleFlight(memory_cache())
    with ThreadPoolExecutor(max_workers=1) as pool:
        leader = pool.submit(flights.run, KEY, slow_fetch, deadline())
        assert leader_started.wait(WAIT)

        started = time.monotonic()
        with pytest.raises(UpstreamError) as info:
            flights.run(KEY, Fetches().for_("waiter"), started + 0.2)
        elapsed = time.monotonic() - started

        assert (info.value.code, info.value.status) == ("upstream_timeout", 504)
        assert 0.2 - 0.02 <= elapsed < 0.2 + 0.5
        release.set()
        assert leader.result(timeout=WAIT) == Recommendation(["1000"])


def test_a_waiter_past_its_deadline_fails_at_once(release: threading.Event) -> None:
    leader_started = threading.Event()

    def slow_fetch(remaining: float) -> Recommendation:
        leader_started.set()
        release.wait(WAIT)
        return Recommendation(["1000"])

    flights = SingleFlight(memory_cache())
    with ThreadPoolExecutor(max_workers=1) as pool:
        leader = pool.submit(flights.run, KEY, slow_fetch, deadline())
        assert leader_started.wait(WAIT)
        started = time.monotonic()
        with pytest.raises(UpstreamError, match="budget"):
            flights.run(KEY, Fetches().for_("waiter"), started - 1)
        assert time.monotonic() - started < 0.5
        release.set()
        leader.result(timeout=WAIT)


def test_the_fetch_is_given_the_seconds_left() -> None:
    fetches = Fetches()
    SingleFlight(memory_cache()).run(KEY, fetches.for_("w"), time.monotonic() + 0.8)
    assert 0.5 < fetches.remaining[0] <= 0.8


def test_the_flight_is_forgotten_after_it_lands() -> None:
    fetches = Fetches()
    flights = SingleFlight(memory_cache())

    first = flights.run(KEY, fetches.for_("first"), deadline())
    second = flights.run(KEY, fetches.for_("second"), deadline())

    assert fetches.calls == ["first", "second"]
    assert (first.recommendation_id, second.recommendation_id) == ("rid-1-first", "rid-1-second")


def test_the_flight_is_forgotten_after_it_fails() -> None:
    failing = Fetches(error=UpstreamError("down"))
    flights = SingleFlight(memory_cache())
    with pytest.raises(UpstreamError):
        flights.run(KEY, failing.for_("first"), deadline())

    working = Fetches()
    assert flights.run(KEY, working.for_("second"), deadline()).item_ids == ["1000", "1037"]
    assert working.calls == ["second"]


# --------------------------------------------------------------------------------------------------
# across workers, with the real Redis


class PolledCache(AnswerCache):
    """The shared answer cache; `polled` is set once a follower worker reads it while waiting."""

    def __init__(self, backend: Any, ttl: int) -> None:
        super().__init__(backend, ttl)
        self.polled = threading.Event()

    def get(self, key: str) -> CachedAnswer | None:
        self.polled.set()  # only SingleFlight's follower reads the cache in these tests
        return super().get(key)


@pytest.fixture
def redis_cache(make_app: Callable[..., Any], redis_url: str) -> PolledCache:
    """An AnswerCache on flask-caching's RedisCache, configured as app/caching/answers.py configures it."""
    app = make_app({"recommender": FakeRecommender()}, cache_redis_url=redis_url)
    service = components(app).service
    return PolledCache(service.cache.backend, service.cache.ttl)


@pytest.fixture
def lock_clients(redis_url: str) -> Iterator[Callable[[], redis.Redis]]:
    """Build Redis clients like app._lock_client does (one per simulated worker); closed at teardown."""
    made: list[redis.Redis] = []

    def build() -> redis.Redis:
        client = redis.Redis.from_url(redis_url, socket_timeout=0.25, socket_connect_timeout=0.25)
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_two_workers_times_ten_threads_fetch_once(
    waiters: Waiters, redis_cache: PolledCache, lock_clients: Callable[[], redis.Redis], redis_client: redis.Redis
) -> None:
    def hold_until_everyone_waits() -> None:
        # 9 waiters per worker, and the other worker's leader polling the cache for the answer.
        assert waiters.wait_for(18)
        assert redis_cache.polled.wait(WAIT)

    fetches = Fetches(before=hold_until_everyone_waits)
    workers = {"A": SingleFlight(redis_cache, lock_clients()), "B": SingleFlight(redis_cache, lock_clients())}

    calls = [lambda w=w: workers[w].run(KEY, fetches.for_(w), deadline()) for w in ("A", "B") for _ in range(10)]
    results = concurrently(calls)

    assert len(fetches.calls) == 1, fetches.calls
    leader = fetches.calls[0]
    # Every thread of both workers got the leader's answer: the follower worker read it from the cache.
    assert results == [Recommendation(["1000", "1037"], f"rid-1-{leader}")] * 20
    cached = redis_cache.get(KEY)
    assert cached is not None and cached.recommendation.recommendation_id == f"rid-1-{leader}"
    assert redis_client.exists(f"{KEY}:lock") == 0  # released once the answer landed


def test_the_follower_worker_returns_the_answer_the_leader_cached(
    redis_cache: PolledCache, lock_clients: Callable[[], redis.Redis]
) -> None:
    fetches = Fetches(before=lambda: redis_cache.polled.wait(WAIT))
    worker_a, worker_b = SingleFlight(redis_cache, lock_clients()), SingleFlight(redis_cache, lock_clients())

    results = concurrently([lambda: worker_a.run(KEY, fetches.for_("A"), deadline()),
                            lambda: worker_b.run(KEY, fetches.for_("B"), deadline())])

    assert len(fetches.calls) == 1
    expected = Recommendation(["1000", "1037"], f"rid-1-{fetches.calls[0]}")
    assert results == [expected, expected]
    cached = redis_cache.get(KEY)
    assert cached is not None and cached.recommendation == expected


def test_when_the_leader_worker_fails_followers_fail_promptly(
    waiters: Waiters, redis_cache: PolledCache, lock_clients: Callable[[], redis.Redis], redis_client: redis.Redis
) -> None:
    def fail_once_everyone_waits() -> None:
        assert waiters.wait_for(6)
        assert redis_cache.polled.wait(WAIT)

    error = UpstreamError("throttled", code="upstream_throttled", status=503)
    fetches = Fetches(error=error, before=fail_once_everyone_waits)
    workers = {"A": SingleFlight(redis_cache, lock_clients()), "B": SingleFlight(redis_cache, lock_clients())}

    started = time.monotonic()
    results = concurrently(
        [lambda w=w: workers[w].run(KEY, fetches.for_(w), started + WAIT) for w in ("A", "B") for _ in range(4)]
    )
    elapsed = time.monotonic() - started

    assert len(fetches.calls) == 1
    assert all(isinstance(r, UpstreamError) for r in results), results
    leader = fetches.calls[0]
    leader_results = results[:4] if leader == "A" else results[4:]
    follower_results = results[4:] if leader == "A" else results[:4]
    assert all(r is error for r in leader_results)
    assert all(r.code != "upstream_timeout" for r in follower_results)
    assert elapsed < 2.0  # well before the 5 s deadline
    assert redis_client.exists(f"{KEY}:lock") == 0


def test_the_lock_expires_within_the_budget(
    redis_cache: PolledCache, lock_clients: Callable[[], redis.Redis], redis_client: redis.Redis
) -> None:
    ttls: list[int] = []

    def record_ttl() -> None:
        ttls.append(redis_client.pttl(f"{KEY}:lock"))

    fetches = Fetches(before=record_ttl)
    SingleFlight(redis_cache, lock_clients()).run(KEY, fetches.for_("A"), time.monotonic() + 0.8)

    assert len(ttls) == 1
    assert 0 < ttls[0] <= 800  # a worker that dies holding it blocks others for one budget at most
    assert redis_client.exists(f"{KEY}:lock") == 0


def test_a_lock_taken_by_another_worker_after_expiry_is_not_released(
    redis_cache: PolledCache, lock_clients: Callable[[], redis.Redis], redis_client: redis.Redis
) -> None:
    def expire_and_let_another_worker_take_it() -> None:
        redis_client.set(f"{KEY}:lock", b"other-worker", px=5000)

    fetches = Fetches(error=UpstreamError("down"), before=expire_and_let_another_worker_take_it)
    with pytest.raises(UpstreamError):
        SingleFlight(redis_cache, lock_clients()).run(KEY, fetches.for_("A"), deadline())

    assert redis_client.get(f"{KEY}:lock") == b"other-worker"


def test_a_lock_left_by_a_dead_worker_only_costs_one_budget(
    redis_cache: PolledCache, lock_clients: Callable[[], redis.Redis], redis_client: redis.Redis
) -> None:
    redis_client.set(f"{KEY}:lock", b"dead-worker", px=300)  # taken, never released
    fetches = Fetches()
    flights = SingleFlight(redis_cache, lock_clients())

    started = time.monotonic()
    with pytest.raises(UpstreamError):
        flights.run(KEY, fetches.for_("A"), started + 2.0)
    assert time.monotonic() - started < 1.0  # gave up when the lock expired, not at the deadline
    assert fetches.calls == []

    # The lock is gone: the next request fetches.
    assert flights.run(KEY, fetches.for_("A"), deadline()).item_ids == ["1000", "1037"]
    assert fetches.calls == ["A"]


def test_with_redis_down_the_fetch_still_runs() -> None:
    dead = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=0.2, socket_connect_timeout=0.2)
    try:
        fetches = Fetches()
        flights = SingleFlight(memory_cache(), dead)
        started = time.monotonic()
        result = flights.run(KEY, fetches.for_("A"), deadline())
        assert time.monotonic() - started < 1.0
    finally:
        dead.close()

    assert result == Recommendation(["1000", "1037"], "rid-1-A")
    assert fetches.calls == ["A"]


def test_a_request_is_served_when_the_redis_cache_and_lock_are_down(make_app: Callable[..., Any]) -> None:
    fake = FakeRecommender({"u1": ["1000", "1037"]})
    app = make_app({"recommender": fake}, cache_redis_url="redis://127.0.0.1:1/0")

    response = app.test_client().get("/recommendations?user_id=u1&num_results=2")

    assert response.status_code == 200
    assert [item["id"] for item in response.get_json()] == ["1000", "1037"]
    assert response.headers["X-Recommendations-Source"] == "fake"
    assert fake.calls == [("u1", 2)]


class CountingConnection(redis.Connection):
    """A redis-py connection that counts the request thread's round trips: a command, or a whole pipeline, is one
    send (the recently-recommended counts are flushed by a thread of their own)."""

    trips = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if threading.current_thread() is threading.main_thread():
            type(self).trips += 1
        super().send_packed_command(command, check_health)


def test_a_miss_costs_two_redis_round_trips_and_a_hit_one(make_app: Callable[..., Any], redis_url: str,
                                                          redis_client: redis.Redis) -> None:
    """The read that takes the lock when there is no answer, then the write with the lock's release (not four:
    GET, SET NX, SET, release); a hit only reads, and takes no lock."""
    lock = redis.Redis(connection_pool=redis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection))
    fake = FakeRecommender({"u0": ["1000"], "u1": ["1037", "1074"]})
    app = make_app({"recommender": fake, "lock_client": lock}, cache_redis_url=redis_url)
    backend = components(app).service.cache.backend
    backend._read_client = backend._write_client = lock  # the answer cache's trips are counted too (one Redis)
    http = app.test_client()
    http.get("/recommendations?user_id=u0")  # the release script's first use on this Redis loads it
    CountingConnection.trips = 0

    assert http.get("/recommendations?user_id=u1").headers["X-Cache"] == "MISS"

    assert CountingConnection.trips == 2
    service = components(app).service
    key = service.answer_key(service.recommender, "u1", 10)
    stored = redis_client.get(service.cache.redis_key(key))
    assert stored is not None and b'"1037"' in stored
    assert redis_client.exists(f"{key}:lock") == 0
    components(app).service.cache._local = None  # this process's copy off: the hit goes to Redis
    CountingConnection.trips = 0
    assert http.get("/recommendations?user_id=u1").headers["X-Cache"] == "HIT" and len(fake.calls) == 2
    assert CountingConnection.trips == 1 and redis_client.exists(f"{key}:lock") == 0
    lock.close()


def test_an_answer_and_its_lock_share_a_cluster_slot(redis_cache: PolledCache) -> None:
    from redis.crc import key_slot

    key = AnswerCache.key("source", "u1", {"num_results": 10})
    answer_key = redis_cache.redis_key(key)
    assert answer_key is not None and answer_key != key  # the backend's prefix is in it
    assert key_slot(answer_key.encode()) == key_slot(f"{key}:lock".encode())
    assert key_slot(AnswerCache.key("source", "u2", {"num_results": 10}).encode()) != key_slot(key.encode())


def test_an_answer_written_since_the_miss_is_served_without_a_fetch(
    redis_cache: PolledCache, lock_clients: Callable[[], redis.Redis], redis_client: redis.Redis
) -> None:
    """Another worker stored the answer and released its lock between this caller's miss and its lock."""
    redis_cache.put(KEY, Recommendation(["1000"], "rid-other"))
    fetches = Fetches()
    answer = SingleFlight(redis_cache, lock_clients()).run(KEY, fetches.for_("A"), deadline())
    assert answer == Recommendation(["1000"], "rid-other")
    assert fetches.calls == []
    assert redis_client.exists(f"{KEY}:lock") == 0


def test_lookup_claims_a_miss_but_not_a_stale_answer(redis_cache: PolledCache, lock_clients: Callable[[], redis.Redis],
                                                     redis_client: redis.Redis) -> None:
    flights = SingleFlight(redis_cache, lock_clients())
    answer, claim = flights.lookup(KEY, deadline())
    assert answer is None and claim is not None and redis_client.get(f"{KEY}:lock") == claim
    assert flights.lookup(KEY, deadline()) == (None, None)  # taken: the second caller has no claim
    assert flights.run(KEY, Fetches().for_("A"), deadline(), claim).recommendation_id == "rid-1-A"
    assert redis_client.exists(f"{KEY}:lock") == 0

    stale = CachedAnswer(Recommendation(["1000"], "old"), time.time() - redis_cache.ttl - 1)
    redis_client.set(redis_cache.redis_key(KEY), encode_answer(stale))
    answer, claim = SingleFlight(redis_cache, lock_clients()).lookup(KEY, deadline())
    assert answer == stale and claim is None  # kept for stale-if-error; run() takes the lock itself


def test_the_caller_holding_the_lock_fetches_even_when_another_thread_leads_here(
    redis_cache: PolledCache, lock_clients: Callable[[], redis.Redis], redis_client: redis.Redis
) -> None:
    """Thread A's lookup took the lock; thread B, without it, reached run() first and polls Redis for the
    holder's answer. A must fetch it rather than wait for B (each would wait for the other until the deadline)."""
    flights = SingleFlight(redis_cache, lock_clients())
    _, claim = flights.lookup(KEY, deadline())
    assert claim is not None
    fetches = Fetches()
    with ThreadPoolExecutor(1) as pool:
        b = pool.submit(flights.run, KEY, fetches.for_("B"), deadline())
        assert redis_cache.polled.wait(WAIT)  # B leads here, found the lock taken and polls for the answer
        a = flights.run(KEY, fetches.for_("A"), deadline(), claim)
        assert b.result(WAIT) == a == Recommendation(["1000", "1037"], "rid-1-A")
    assert fetches.calls == ["A"]
    assert redis_client.exists(f"{KEY}:lock") == 0
