"""Resilience of `gunicorn wsgi:app` as run in production (3 workers, gthread, Redis, boto3 -> the stand-in).

Braze waits at most 2 s and marks a host unhealthy when >90% of its calls fail with 408/429/5xx, so every
test measures what Braze would see (status, latency client-side, headers) and what Personalize would see
(the stand-in's call count). Each test starts a gunicorn of its own (`gunicorn_factory`), because the
settings differ and a breaker opened here must not leak into other tests. Run with `-s` to see the figures.
"""
from __future__ import annotations

import collections
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import WORKERS, Gunicorn, get, read_catalog
from tests.redis_server import RedisServer
from tests.standin.personalize import StandinHandle

DEFAULT_BUDGET_MS = 800  # REQUEST_BUDGET_MS's default (README)
CLIENT_TIMEOUT = 5.0  # far past Braze's 2 s: a request that hangs is a failure we want to see, not a stuck test


# -- helpers ----------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One request as the client saw it."""

    user_id: str
    status: int  # 0 when the request itself failed (connection error, client timeout)
    seconds: float
    started: float  # time.monotonic() when it was sent
    headers: dict[str, str]
    body: Any
    error: str | None = None


def popular_ids() -> list[str]:
    """The sample catalog's items by POPULARITY_RANK, lowest first (read independently of app.catalog.items)."""
    rows = read_catalog()
    ranked = [(int(row["POPULARITY_RANK"]), item_id) for item_id, row in rows.items() if row.get("POPULARITY_RANK")]
    return [item_id for _, item_id in sorted(ranked)]


def fetch(session: requests.Session | None, url: str, user_id: str, num_results: int = 5,
          timeout: float = CLIENT_TIMEOUT) -> Outcome:
    """GET /recommendations on the session (keep-alive), or on a connection of its own when session is None."""
    params = {"user_id": user_id, "num_results": num_results}
    started = time.monotonic()
    try:
        if session is None:
            response = get(url + "/recommendations", params, timeout=timeout)
        else:
            response = session.get(url + "/recommendations", params=params, timeout=timeout)
    except requests.RequestException as exc:
        return Outcome(user_id, 0, time.monotonic() - started, started, {}, None, repr(exc))
    seconds = time.monotonic() - started
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return Outcome(user_id, response.status_code, seconds, started, dict(response.headers), body)


def burst(url: str, users: Sequence[str], concurrency: int, num_results: int = 5) -> tuple[list[Outcome], float]:
    """Send one request per entry of users from `concurrency` threads, each with its own requests.Session."""
    local = threading.local()
    sessions: list[requests.Session] = []
    sessions_lock = threading.Lock()

    def one(user_id: str) -> Outcome:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            with sessions_lock:
                sessions.append(session)
        return fetch(session, url, user_id, num_results)

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="burst") as pool:
            outcomes = list(pool.map(one, users))
    finally:
        for session in sessions:
            session.close()
    return outcomes, time.monotonic() - started


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (fraction in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))  # ceil(n * fraction), at least 1
    return ordered[int(rank) - 1]


def latency_line(outcomes: Sequence[Outcome]) -> str:
    ms = [o.seconds * 1000 for o in outcomes]
    return (f"n={len(ms)} p50={percentile(ms, 0.50):.0f}ms p99={percentile(ms, 0.99):.0f}ms "
            f"max={max(ms):.0f}ms")


def tally(outcomes: Sequence[Outcome], key: Callable[[Outcome], Any]) -> dict[Any, int]:
    return dict(collections.Counter(key(o) for o in outcomes).most_common())


def report(title: str, **figures: Any) -> None:
    """Print a test's measured figures, one block per test, for `pytest -s`."""
    print(f"\n[resilience] {title}")
    for name, value in figures.items():
        print(f"    {name}: {value}")


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll condition until it is true or timeout seconds pass (monotonic clock); return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def warm_workers(server: Gunicorn, standin: StandinHandle) -> int:
    """Have every worker answer requests from a healthy Personalize, so each has built its boto3 client.

    A worker builds the client on its first call (a burst of CPU in 3 workers at once on 2 cores); a service
    that has been running has long done so. Batches of 8 simultaneous connections, so several workers accept.
    Best effort: returns how many workers answered. Then the stand-in's counts are cleared.
    """
    request_ids: set[str] = set()
    workers: set[int] = set()
    with ThreadPoolExecutor(max_workers=8) as pool:
        for batch in range(10):
            ids = [f"warm-{batch}-{n}" for n in range(8)]
            request_ids.update(ids)
            responses = list(pool.map(
                lambda rid: get(server.url + "/recommendations", {"user_id": f"user-{rid}"}, rid), ids))
            assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
            workers = set(server.served_by(request_ids, timeout=1.0).values())
            if len(workers) >= WORKERS:
                break
    standin.reset()
    return len(workers)


@contextmanager
def clients_asking(url: str, users: Sequence[str], threads: int, spread: int) -> Iterator[list[Outcome]]:
    """Keep `threads` clients (keep-alive sessions) asking for users in turn, each starting `spread` users after
    the last, until the block ends; yield the list of outcomes they fill."""
    outcomes: list[Outcome] = []
    outcomes_lock = threading.Lock()
    stop = threading.Event()

    def client(offset: int) -> None:
        with requests.Session() as session:
            n = offset
            while not stop.is_set():
                outcome = fetch(session, url, users[n % len(users)])
                with outcomes_lock:
                    outcomes.append(outcome)
                n += 1

    workers = [threading.Thread(target=client, args=(n * spread,), name=f"client-{n}") for n in range(threads)]
    for worker in workers:
        worker.start()
    try:
        yield outcomes
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=10)


def failures(outcomes: Sequence[Outcome]) -> list[str]:
    bad = [o for o in outcomes if o.status != 200]
    return [f"{o.user_id}: {o.status} {o.error or str(o.body)[:200]}" for o in bad[:10]]


# -- a private Redis ----------------------------------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis.log").start()
    try:
        yield server
    finally:
        server.stop()


# -- 1. a hanging Personalize -----------------------------------------------------------------------------------


def test_a_hanging_personalize_is_answered_from_the_fallback_within_the_budget(
    gunicorn_factory: Callable[..., Gunicorn], standin: StandinHandle
) -> None:
    server = gunicorn_factory()  # production defaults: REQUEST_BUDGET_MS 800, breaker 5 / 30 s
    warmed = warm_workers(server, standin)
    standin.set_fault("hang")
    users = [f"hang-user-{n % 50:02d}" for n in range(200)]  # 50 users, 4 requests each, interleaved

    outcomes, elapsed = burst(server.url, users, concurrency=32)

    limit_ms = DEFAULT_BUDGET_MS + 200
    report("1. upstream hangs: 200 requests, 32 concurrent, 50 users",
           latency=latency_line(outcomes), limit=f"{limit_ms}ms each", wall=f"{elapsed:.1f}s",
           workers_warmed=f"{warmed} of {WORKERS}", statuses=tally(outcomes, lambda o: o.status),
           sources=tally(outcomes, lambda o: o.headers.get("X-Recommendations-Source")),
           fallback_reasons=tally(outcomes, lambda o: o.headers.get("X-Fallback-Reason")),
           standin_calls=standin.calls()["total"])
    assert not failures(outcomes), failures(outcomes)
    slow = sorted((round(o.seconds * 1000), o.user_id) for o in outcomes if o.seconds * 1000 >= limit_ms)
    assert not slow, f"{len(slow)} responses took {limit_ms} ms or more: {slow[-10:]}"
    popular = popular_ids()
    assert popular, "sample/catalog.csv has no POPULARITY_RANK column; the fallback needs one"
    for o in outcomes:
        assert o.headers.get("X-Recommendations-Source") == "fallback", (o.user_id, o.headers)
        assert o.headers.get("X-Fallback-Reason"), (o.user_id, o.headers)
        assert isinstance(o.body, list) and o.body, (o.user_id, o.body)
        assert [item["id"] for item in o.body] == popular[:5]


# -- 2. throttling and 500s: a burst of 2,000 -------------------------------------------------------------------

BREAKER_THRESHOLD = 5
MAX_CONCURRENCY = 4
MAX_ATTEMPTS = 2


@pytest.mark.parametrize("fault", ["throttle", "error500"])
def test_a_burst_against_a_failing_personalize_is_all_2xx_and_the_breaker_bounds_the_calls(
    gunicorn_factory: Callable[..., Gunicorn], standin: StandinHandle, fault: str
) -> None:
    server = gunicorn_factory(
        BREAKER_FAILURE_THRESHOLD=str(BREAKER_THRESHOLD),
        # Longer than the burst, so the breaker never half-opens during it and the bound below holds.
        BREAKER_RECOVERY_SECONDS="120",
        PERSONALIZE_MAX_CONCURRENCY=str(MAX_CONCURRENCY),
        PERSONALIZE_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
    )
    standin.set_fault(fault)
    users = [f"{fault}-user-{n:04d}" for n in range(2000)]

    outcomes, elapsed = burst(server.url, users, concurrency=48)

    calls = standin.calls()["total"]
    # Per worker: at most THRESHOLD failures complete before the breaker opens, plus MAX_CONCURRENCY calls
    # already in flight when it does; botocore makes up to MAX_ATTEMPTS HTTP calls for each.
    bound = WORKERS * (BREAKER_THRESHOLD + MAX_CONCURRENCY) * MAX_ATTEMPTS
    report(f"2. Personalize {fault}: 2,000 requests, 48 concurrent, distinct users, keep-alive sessions",
           latency=latency_line(outcomes), wall=f"{elapsed:.1f}s",
           statuses=tally(outcomes, lambda o: o.status),
           fallback_reasons=tally(outcomes, lambda o: o.headers.get("X-Fallback-Reason")),
           standin_calls=calls,
           bound=f"{WORKERS} workers x ({BREAKER_THRESHOLD} threshold + {MAX_CONCURRENCY} concurrency) "
                 f"x {MAX_ATTEMPTS} attempts = {bound}")
    non_2xx = [o for o in outcomes if not 200 <= o.status < 300]
    assert not non_2xx, f"{len(non_2xx)} non-2xx responses: {failures(non_2xx)}"
    assert all(o.headers.get("X-Recommendations-Source") == "fallback" for o in outcomes)
    assert 1 <= calls <= bound, f"Personalize got {calls} calls, more than the breaker's bound {bound}"
    assert elapsed < 30, f"the burst took {elapsed:.1f} s"


# -- 3. Redis stopped mid-run -----------------------------------------------------------------------------------


def test_redis_killed_mid_run_costs_no_request_and_hits_resume_once_it_is_back(
    gunicorn_factory: Callable[..., Gunicorn], standin: StandinHandle, private_redis: RedisServer
) -> None:
    # Without the per-process copy every hit is a Redis read, so the outage is really felt (and proven below).
    server = gunicorn_factory(CACHE_REDIS_URL=private_redis.url, CACHE_LOCAL_SECONDS="0")
    users = [f"redis-user-{n:02d}" for n in range(20)]  # repeated, so the healthy phase has hits
    with clients_asking(server.url, users, threads=4, spread=5) as outcomes:
        time.sleep(1.0)  # healthy
        killing = time.monotonic()
        private_redis.kill(signal.SIGKILL)
        killed = time.monotonic()  # the process is gone: nothing sent after this can reach Redis
        time.sleep(1.5)  # down
        restarting = time.monotonic()
        private_redis.start()  # same port, empty
        restarted = time.monotonic()
        time.sleep(1.0)  # back

    phases = {
        "before": [o for o in outcomes if o.started + o.seconds < killing],
        "during": [o for o in outcomes if killed <= o.started and o.started + o.seconds < restarting],
        "after": [o for o in outcomes if o.started >= restarted],
    }
    # Hits resume without restarting gunicorn: a user asked twice is a MISS, then a HIT from the new Redis.
    probe_user = "redis-probe"
    probes: list[Outcome] = []

    def hit_again() -> bool:
        probes.append(fetch(None, server.url, probe_user))
        return probes[-1].headers.get("X-Cache") == "HIT"

    resumed = wait_for(hit_again, timeout=5.0, interval=0.05)
    report("3. Redis SIGKILLed mid-run, then restarted on the same port (4 client threads)",
           **{f"{name} ({len(group)} requests)": f"{latency_line(group) if group else '-'} "
                                                  f"statuses={tally(group, lambda o: o.status)} "
                                                  f"x_cache={tally(group, lambda o: o.headers.get('X-Cache'))}"
              for name, group in phases.items()},
           total_requests=len(outcomes), all_statuses=tally(outcomes, lambda o: o.status),
           probe_x_cache=[p.headers.get("X-Cache") for p in probes],
           standin_calls=standin.calls()["total"])
    assert not failures(outcomes), failures(outcomes)
    for name, group in phases.items():
        assert len(group) >= 5, f"too few requests {name} the outage to tell: {len(group)}"
    assert "HIT" in {o.headers.get("X-Cache") for o in phases["before"]}
    assert "HIT" not in {o.headers.get("X-Cache") for o in phases["during"]}, "Redis was not really down"
    assert all(p.status == 200 for p in probes), failures(probes)
    assert resumed, f"no cache HIT within 5 s of Redis coming back: {[p.headers.get('X-Cache') for p in probes]}"
    assert server.process.poll() is None, "gunicorn died"


# -- 4. one user, 100 requests at once --------------------------------------------------------------------------


def test_a_hundred_simultaneous_requests_for_one_cold_user_make_one_personalize_call(
    gunicorn_factory: Callable[..., Gunicorn], standin: StandinHandle
) -> None:
    server = gunicorn_factory()
    standin.set_fault("latency", latency_ms=200)  # long enough that all 100 overlap the first call
    barrier = threading.Barrier(100)

    def one(_: int) -> Outcome:
        barrier.wait(timeout=10)
        return fetch(None, server.url, "thundering-herd")  # a connection each: any worker may take it

    with ThreadPoolExecutor(max_workers=100) as pool:
        outcomes = list(pool.map(one, range(100)))

    calls = standin.calls()
    report("4. 100 simultaneous requests, one cold user, Personalize latency 200 ms",
           latency=latency_line(outcomes), statuses=tally(outcomes, lambda o: o.status),
           x_cache=tally(outcomes, lambda o: o.headers.get("X-Cache")),
           sources=tally(outcomes, lambda o: o.headers.get("X-Recommendations-Source")),
           distinct_bodies=len({repr(o.body) for o in outcomes}),
           standin_calls=f"{calls['total']} (by user {calls['by_user']})")
    assert not failures(outcomes), failures(outcomes)
    assert len({repr(o.body) for o in outcomes}) == 1
    assert [item["id"] for item in outcomes[0].body] == standin.ranked("thundering-herd", 5)
    assert calls["total"] == 1


# -- 5. stale-if-error ------------------------------------------------------------------------------------------


def test_an_expired_answer_is_served_stale_when_personalize_fails(
    gunicorn_factory: Callable[..., Gunicorn], standin: StandinHandle
) -> None:
    server = gunicorn_factory(CACHE_TTL_SECONDS="1")
    healthy = fetch(None, server.url, "stale-user")
    assert healthy.status == 200, healthy.body
    assert healthy.headers["X-Recommendations-Source"] == "personalize"
    assert [item["id"] for item in healthy.body] == standin.ranked("stale-user", 5)
    answered = time.monotonic()

    # Personalize fails from now on. Until the TTL passes the answer is a HIT (no call); the first request
    # after it must fall back to the expired answer. Poll for that instead of sleeping a guessed time.
    standin.set_fault("error500")
    polls: list[Outcome] = []

    def expired() -> bool:
        polls.append(fetch(None, server.url, "stale-user"))
        return polls[-1].headers.get("X-Cache") != "HIT"

    assert wait_for(expired, timeout=3.0, interval=0.05), "still a cache HIT 3 s after a 1 s TTL"
    stale = polls[-1]
    report("5. stale-if-error: TTL 1 s, then Personalize 500",
           healthy=f"{healthy.seconds * 1000:.0f}ms {healthy.headers.get('X-Cache')}",
           expired_after=f"{stale.started - answered:.2f}s ({len(polls) - 1} HIT polls before)",
           stale=f"{stale.seconds * 1000:.0f}ms status={stale.status} X-Cache={stale.headers.get('X-Cache')} "
                 f"source={stale.headers.get('X-Recommendations-Source')} "
                 f"reason={stale.headers.get('X-Fallback-Reason')}",
           standin_calls=standin.calls()["total"])
    assert all(p.status == 200 for p in polls), failures(polls)
    assert stale.status == 200
    assert stale.headers["X-Recommendations-Source"] == "stale"
    assert stale.headers["X-Cache"] == "STALE"
    assert stale.headers.get("X-Fallback-Reason") in ("upstream_error", "upstream_timeout")
    assert stale.headers["Cache-Control"] == "no-store"
    assert stale.body == healthy.body
    assert standin.calls()["total"] >= 2  # the healthy call, then at least one failed attempt


# -- 6. graceful shutdown ---------------------------------------------------------------------------------------


def test_sigterm_lets_in_flight_requests_finish_and_gunicorn_exits_0(
    gunicorn_factory: Callable[..., Gunicorn], standin: StandinHandle
) -> None:
    # Personalize answers in 500 ms: the read timeout and the budget leave room for it, so the in-flight
    # requests finish with Personalize's answer rather than a fallback.
    server = gunicorn_factory(PERSONALIZE_READ_TIMEOUT="2", REQUEST_BUDGET_MS="1500",
                              PERSONALIZE_MAX_CONCURRENCY="10")
    standin.set_fault("latency", latency_ms=500)
    users = [f"shutdown-user-{n}" for n in range(10)]

    with ThreadPoolExecutor(max_workers=10) as pool:
        futures = [pool.submit(fetch, None, server.url, user) for user in users]
        in_flight = wait_for(lambda: standin.calls()["total"] >= len(users), timeout=2.0)
        calls_at_sigterm = standin.calls()["total"]
        assert calls_at_sigterm >= 1, "no request reached Personalize within 2 s"
        sigterm_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        outcomes = [f.result(timeout=15) for f in futures]
    try:
        code = server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gunicorn did not exit within 15 s of SIGTERM:\n{server.output()[-3000:]}")
    exited = time.monotonic() - sigterm_at

    report("6. SIGTERM to the master with 10 requests in flight (Personalize latency 500 ms)",
           calls_at_sigterm=f"{calls_at_sigterm} (all 10 in flight: {in_flight})",
           latency=latency_line(outcomes), statuses=tally(outcomes, lambda o: o.status),
           sources=tally(outcomes, lambda o: o.headers.get("X-Recommendations-Source")),
           exit_code=code, exited_after_sigterm=f"{exited:.2f}s")
    assert not failures(outcomes), failures(outcomes)
    assert {o.headers.get("X-Recommendations-Source") for o in outcomes} == {"personalize"}
    for o in outcomes:
        assert [item["id"] for item in o.body] == standin.ranked(o.user_id, 5)
    assert code == 0, server.output()[-3000:]
    assert "Shutting down: Master" in server.output()


# -- 7. a frozen Redis while Personalize hangs -----------------------------------------------------------------


def test_a_frozen_redis_does_not_stretch_the_request_budget(
    gunicorn_factory: Callable[..., Gunicorn], standin: StandinHandle, private_redis: RedisServer
) -> None:
    """Redis accepts connections but never answers (SIGSTOP): each Redis call costs its 0.25 s socket timeout.
    With Personalize hanging too, the answer must still come within the budget the README promises."""
    server = gunicorn_factory(CACHE_REDIS_URL=private_redis.url, BREAKER_FAILURE_THRESHOLD="100")
    standin.set_fault("hang")
    assert private_redis.process is not None
    private_redis.process.send_signal(signal.SIGSTOP)
    try:
        outcomes = [fetch(None, server.url, f"frozen-redis-user-{n}") for n in range(3)]
    finally:
        private_redis.process.send_signal(signal.SIGCONT)

    limit_ms = DEFAULT_BUDGET_MS + 200
    report("7. Redis frozen (SIGSTOP) and Personalize hanging: 3 sequential requests",
           latency=latency_line(outcomes), limit=f"{limit_ms}ms each",
           statuses=tally(outcomes, lambda o: o.status),
           fallback_reasons=tally(outcomes, lambda o: o.headers.get("X-Fallback-Reason")))
    assert not failures(outcomes), failures(outcomes)
    assert all(o.headers.get("X-Recommendations-Source") == "fallback" for o in outcomes)
    slow = [round(o.seconds * 1000) for o in outcomes if o.seconds * 1000 >= limit_ms]
    assert not slow, f"{len(slow)} of {len(outcomes)} responses took {limit_ms} ms or more: {slow}"
