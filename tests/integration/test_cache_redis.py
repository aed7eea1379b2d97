"""The answer cache on a real Redis (the tests' own redis-server, emptied by the redis_url fixture): shared, private, expiring, optional."""
from __future__ import annotations

import logging
import os
import pickle
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import redis
from flask import Flask
from werkzeug.test import TestResponse

from app.caching.answers import AnswerCache, CachedAnswer, encode_answer
from app.extensions import cache as cache_extension
from app.sources.recommender import Recommendation
from tests.conftest import FakeRecommender
from tests.redis_server import given_redis_url

DOWN_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connections are refused at once


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def get(app: Flask, **params: Any) -> TestResponse:
    return app.test_client().get("/recommendations", query_string=urlencode(params))


def full_key(app: Flask, source_key: str, user_id: str, num_results: int = 10) -> str:
    """The Redis key of an answer: flask-caching's key prefix + AnswerCache.key()."""
    backend = app.extensions["cache"][cache_extension]
    prefix = backend.key_prefix
    assert prefix == "flask_cache_"  # flask-caching's CACHE_KEY_PREFIX default; the app sets none
    return prefix + AnswerCache.key(source_key, user_id, {"num_results": num_results})


def answer_keys(client: redis.Redis) -> list[str]:
    return [k.decode() for k in client.scan_iter(count=1000) if not k.endswith(b":lock")]


def test_two_apps_share_the_redis_cache(make_app: Callable[..., Flask], redis_url: str, tmp_path: Any) -> None:
    fake_a = FakeRecommender({"u1": ["1000", "1037"]})
    fake_b = FakeRecommender({"u1": ["9999"]})  # would answer differently if asked
    # Different cache_dirs: only Redis can connect them (two hosts).
    host_a = make_app({"recommender": fake_a}, cache_redis_url=redis_url, cache_dir=str(tmp_path / "a"))
    host_b = make_app({"recommender": fake_b}, cache_redis_url=redis_url, cache_dir=str(tmp_path / "b"))

    a = get(host_a, user_id="u1")
    b = get(host_b, user_id="u1")

    assert a.status_code == b.status_code == 200
    assert a.headers["X-Cache"] == "MISS"
    assert b.headers["X-Cache"] == "HIT"
    assert fake_a.calls == [("u1", 10)]
    assert fake_b.calls == []
    assert b.get_json() == a.get_json()
    assert b.headers["X-Recommendation-Id"] == "rid-u1"


def test_users_do_not_share_redis_entries(make_app: Callable[..., Flask], redis_url: str,
                                          redis_client: redis.Redis) -> None:
    fake = FakeRecommender({"u1": ["1000"], "u2": ["1037"]})
    app = make_app({"recommender": fake}, cache_redis_url=redis_url)

    one, two = get(app, user_id="u1"), get(app, user_id="u2")

    assert one.headers["X-Cache"] == two.headers["X-Cache"] == "MISS"
    assert fake.calls == [("u1", 10), ("u2", 10)]
    assert len(answer_keys(redis_client)) == 2


def test_redis_keys_hold_no_user_id(make_app: Callable[..., Flask], redis_url: str, redis_client: redis.Redis,
                                    unique: str) -> None:
    user_id = f"alice.{unique}@example.com"
    fake = FakeRecommender({user_id: ["1000"]})
    app = make_app({"recommender": fake}, cache_redis_url=redis_url)

    assert get(app, user_id=user_id).status_code == 200

    keys = [k.decode("utf-8", "replace") for k in redis_client.scan_iter(count=1000)]
    assert full_key(app, fake.key, user_id) in keys
    for key in keys:
        for clear in (user_id, unique, "alice", urlencode({"u": user_id})[2:]):
            assert clear not in key


def test_redis_entry_expires(make_app: Callable[..., Flask], redis_url: str, redis_client: redis.Redis) -> None:
    fake = FakeRecommender({"u1": ["1000"]})
    app = make_app({"recommender": fake}, cache_redis_url=redis_url, cache_ttl_seconds=60, cache_stale_seconds=0)

    resp = get(app, user_id="u1")

    ttl = redis_client.ttl(full_key(app, fake.key, "u1"))
    assert 0 < ttl <= 60
    assert resp.headers["Cache-Control"] == "private, max-age=60"


def test_redis_entry_outlives_ttl_only_for_the_stale_window(
    make_app: Callable[..., Flask], redis_url: str, redis_client: redis.Redis
) -> None:
    """With stale-if-error on, the key lives cache_stale_seconds (never forever), served fresh only for the TTL."""
    fake = FakeRecommender({"u1": ["1000"]})
    app = make_app({"recommender": fake}, cache_redis_url=redis_url, cache_ttl_seconds=60, cache_stale_seconds=3600)

    resp = get(app, user_id="u1")

    ttl = redis_client.ttl(full_key(app, fake.key, "u1"))
    assert 60 < ttl <= 3600
    assert resp.headers["Cache-Control"] == "private, max-age=60"


def test_redis_down_serves_without_cache_and_logs_once(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeRecommender({"u1": ["1000", "1037"]})
    app = make_app({"recommender": fake}, cache_redis_url=DOWN_REDIS_URL)
    client = app.test_client()

    with caplog.at_level(logging.WARNING):
        started = time.monotonic()
        responses = [client.get("/recommendations", query_string="user_id=u1") for _ in range(5)]
        elapsed = time.monotonic() - started

    for resp in responses:
        assert resp.status_code == 200
        assert resp.headers["X-Cache"] == "MISS"
        assert resp.headers["X-Recommendations-Source"] == "fake"
        assert [item["id"] for item in resp.get_json()][:2] == ["1000", "1037"]
    assert fake.calls == [("u1", 10)] * 5
    cache_errors = [r for r in caplog.records if r.name == "app.caching.answers" and r.levelno >= logging.ERROR]
    assert len(cache_errors) == 1, [r.getMessage() for r in cache_errors]
    assert "answer cache failing" in cache_errors[0].getMessage()
    assert elapsed < 5  # a refused connection costs milliseconds, not socket timeouts


def test_redis_down_readyz_and_healthz_still_answer(make_app: Callable[..., Flask]) -> None:
    app = make_app({"recommender": FakeRecommender()}, cache_redis_url=DOWN_REDIS_URL)
    client = app.test_client()

    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def _stale_class_pickle() -> bytes:
    """An answer pickled by a build whose class has since been renamed (what a deploy can leave in Redis)."""
    data = pickle.dumps(CachedAnswer(Recommendation(["1037"]), time.time()))
    assert b"CachedAnswer" in data
    return b"!" + data.replace(b"CachedAnswer", b"CachedAnswex")


REDIS_GARBAGE = [
    pytest.param(b"", id="empty"),
    pytest.param(b"garbage", id="not-pickled"),
    pytest.param(b"12", id="an-integer"),
    pytest.param(b"!garbage", id="bad-pickle"),
    pytest.param(b"!\x80\x05", id="truncated-pickle"),
    pytest.param(b"!" + pickle.dumps({"item_ids": ["1037"]}), id="wrong-type"),
    pytest.param(b"!" + pickle.dumps(Recommendation(["1037"])), id="bare-recommendation"),
    pytest.param(
        b"!cnosuchmodule\nAnswer\n.",
        id="missing-module",
    ),
    pytest.param(
        _stale_class_pickle(),
        id="stale-class",
    ),
]


@pytest.mark.parametrize("garbage", REDIS_GARBAGE)
def test_garbage_under_the_key_is_a_miss(
    make_app: Callable[..., Flask], redis_url: str, redis_client: redis.Redis, garbage: bytes
) -> None:
    fake = FakeRecommender({"u1": ["1000", "1074"]})
    app = make_app({"recommender": fake}, cache_redis_url=redis_url)
    first = get(app, user_id="u1")
    key = full_key(app, fake.key, "u1")
    assert redis_client.exists(key)  # the key computed here is the one the app wrote
    redis_client.set(key, garbage, ex=60)

    resp = get(app, user_id="u1")

    assert resp.status_code == 200
    assert resp.headers["X-Cache"] == "MISS"
    assert resp.get_json() == first.get_json()
    assert len(fake.calls) == 2
    # The fresh answer replaced the garbage.
    assert get(app, user_id="u1").headers["X-Cache"] == "HIT"
    assert len(fake.calls) == 2


def test_hit_max_age_never_exceeds_ttl_when_another_hosts_clock_runs_ahead(
    make_app: Callable[..., Flask], redis_url: str, redis_client: redis.Redis
) -> None:
    fake = FakeRecommender({"u1": ["1000"]})
    app = make_app({"recommender": fake}, cache_redis_url=redis_url, cache_ttl_seconds=60)
    # Host B (clock 30 s ahead) stored the answer; this host reads it from the shared Redis.
    written_by_b = CachedAnswer(Recommendation(["1037"], recommendation_id="rid-b"), time.time() + 30)
    redis_client.set(full_key(app, fake.key, "u1"), encode_answer(written_by_b), ex=60)

    resp = get(app, user_id="u1")

    assert resp.headers["X-Cache"] == "HIT"
    assert fake.calls == []
    cache_control = resp.headers["Cache-Control"]
    assert cache_control.startswith("private, max-age=")
    assert 0 <= int(cache_control.removeprefix("private, max-age=")) <= 60


def test_redis_refusing_writes_is_logged_once(
    make_app: Callable[..., Flask], redis_url: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture,
) -> None:
    """Reads work, writes fail: a read-only replica after a failover, or maxmemory with noeviction.

    The tests' own Redis is made to refuse every write (min-replicas-to-write with no replica), the lock's
    and the answer's alike, whichever client or pipeline sends them.
    """
    fake = FakeRecommender({"u1": ["1000"]})
    app = make_app({"recommender": fake}, cache_redis_url=redis_url)
    client = app.test_client()
    redis_client.config_set("min-replicas-to-write", 1)
    try:
        with caplog.at_level(logging.WARNING):
            statuses = [client.get("/recommendations", query_string="user_id=u1").status_code for _ in range(5)]
    finally:
        redis_client.config_set("min-replicas-to-write", 0)

    assert statuses == [200] * 5
    assert len(fake.calls) == 5
    cache_logs = [r.getMessage() for r in caplog.records if r.name == "app.caching.answers"]
    assert len(cache_logs) == 1, cache_logs


def test_the_tests_redis_is_their_own(redis_url: str) -> None:
    """Other programs share the Redis on 6379: the tests start a redis-server of their own and empty only it."""
    if given_redis_url() is not None:
        pytest.skip("TEST_REDIS_URL names a Redis given to the tests")
    info = redis.Redis.from_url(redis_url).info("server")
    assert info["tcp_port"] != 6379
    with open(f"/proc/{info['process_id']}/stat") as stat:
        parent = int(stat.read().rsplit(")", 1)[1].split()[1])
    assert parent == os.getpid()  # started by this test session


def test_a_crafted_redis_entry_does_not_run(make_app: Callable[..., Flask], redis_url: str,
                                            redis_client: redis.Redis, tmp_path: Any) -> None:
    """Whoever can write the Redis must not run code in the service: a pickle that creates a file stays data."""
    from tests.unit.test_cache_safety import crafted_pickle

    fake = FakeRecommender({"u1": ["1000", "1074"]})
    app = make_app({"recommender": fake}, cache_redis_url=redis_url)
    first = get(app, user_id="u1")
    key = full_key(app, fake.key, "u1")
    marker = tmp_path / "ran"
    redis_client.set(key, b"!" + crafted_pickle(marker), ex=60)  # cachelib's pickle marker, then the pickle

    resp = get(app, user_id="u1")

    assert not marker.exists()
    assert resp.headers["X-Cache"] == "MISS" and resp.get_json() == first.get_json()
    assert redis_client.get(key).startswith(b'{"items":["1000","1074"]')  # stored as JSON data


def test_recently_recommended_counts_are_shared_through_redis(redis_url: str, redis_client: redis.Redis) -> None:
    """Two workers (or hosts) count their own misses; either one reads the sum."""
    assert two_workers_count(lambda: redis.Redis.from_url(redis_url)) == ["1037", "1000", "1074"]
    buckets = [k for k in redis_client.scan_iter("\\{recs:recent\\}:[0-9]*")]
    assert len(buckets) == 1 and 24 * 3600 < redis_client.ttl(buckets[0]) <= 25 * 3600  # gone after the window


def two_workers_count(make_client: Callable[[], Any]) -> list[str]:
    """Let two workers, each with a client of its own, count answers; return the top list both then read."""
    from app.sources.popularity import RecentlyRecommended, RedisCounts

    workers = [RecentlyRecommended(RedisCounts(make_client()), start_flusher=False, top_seconds=0) for _ in range(2)]
    workers[0].count(["1000", "1037"])
    workers[0].count(["1000"])
    workers[1].count(["1037", "1074"])
    workers[1].count(["1037"])
    for worker in workers:
        worker.flush()
    tops = [worker.top() for worker in workers]
    assert tops[0] == tops[1] and not any(worker._failing for worker in workers)
    return tops[0]


def test_each_thread_keeps_one_connection_for_the_miss_path(redis_url: str) -> None:
    """SharedRedis.for_this_thread: the same client, on the same connection, every time in one thread; another
    thread's own; a new one once the shared client is rebuilt. The miss path's scripts run on it."""
    import threading

    from app.caching.redis import shared_redis

    shared = shared_redis(redis_url)
    assert shared is not None
    mine = shared.for_this_thread()
    mine.set("thread-test", "1")
    connection = mine.connection
    assert shared.for_this_thread() is mine and mine.get("thread-test") == b"1" and mine.connection is connection
    others: list[Any] = []
    thread = threading.Thread(target=lambda: others.append(shared.for_this_thread()))
    thread.start()
    thread.join()
    assert others[0] is not mine and others[0].connection_pool is mine.connection_pool
    shared.close()
    rebuilt = shared.for_this_thread()
    assert rebuilt is not mine and rebuilt.get("thread-test") == b"1"
    shared.close()


def test_the_miss_path_scripts_run_on_the_thread_s_connection(make_app: Callable[..., Flask], redis_url: str) -> None:
    app = make_app({"recommender": FakeRecommender()}, cache_redis_url=redis_url)
    from app.components import components

    shared = components(app).service.flights.lock_client
    client = app.test_client()
    assert client.get("/recommendations?user_id=thread-u1").status_code == 200
    kept = shared.for_this_thread()
    kept_id = kept.client_id()  # this connection's last command is now CLIENT ID
    assert client.get("/recommendations?user_id=thread-u2").headers["X-Cache"] == "MISS"
    observer = redis.Redis.from_url(redis_url)
    (entry,) = [c for c in observer.client_list() if int(c["id"]) == kept_id]
    observer.close()
    assert entry["cmd"] == "evalsha"  # the miss's lock-and-read and its write-and-release went through it
    assert client.get("/recommendations?user_id=thread-u2").headers["X-Cache"] == "HIT"
