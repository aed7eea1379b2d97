"""The per-process copy of answers in front of the shared cache (CACHE_LOCAL_SECONDS)."""
from __future__ import annotations

import time
from collections.abc import Callable

import redis
from flask import Flask

from app.caching.answers import AnswerCache, CachedAnswer, encode_answer
from app.sources.recommender import Recommendation
from tests.conftest import FakeRecommender


class CountingBackend:
    """A cachelib-like backend that counts reads and can be switched off."""

    def __init__(self) -> None:
        self.data: dict[str, object] = {}
        self.reads = 0
        self.down = False

    def get(self, key: str) -> object:
        self.reads += 1
        if self.down:
            raise redis.ConnectionError("down")
        return self.data.get(key)

    def set(self, key: str, value: object, timeout: int | None = None) -> bool:
        if self.down:
            raise redis.ConnectionError("down")
        self.data[key] = value
        return True


def test_repeated_reads_are_served_from_the_process_copy() -> None:
    backend = CountingBackend()
    cache = AnswerCache(backend, ttl=300, local_seconds=5, local_items=100)  # type: ignore[arg-type]
    cache.put("k", Recommendation(["1000"]))
    for _ in range(5):
        answer = cache.get("k")
        assert answer is not None and answer.recommendation.item_ids == ["1000"]
    assert backend.reads == 0


def test_an_answer_another_worker_stored_is_read_once_then_kept() -> None:
    backend = CountingBackend()
    backend.data["k"] = encode_answer(CachedAnswer(Recommendation(["1037"]), stored_at=time.time()))
    cache = AnswerCache(backend, ttl=300, local_seconds=5, local_items=100)  # type: ignore[arg-type]
    assert [cache.get("k").recommendation.item_ids for _ in range(3)] == [["1037"]] * 3  # type: ignore[union-attr]
    assert backend.reads == 1


def test_without_local_seconds_every_read_goes_to_the_backend() -> None:
    backend = CountingBackend()
    cache = AnswerCache(backend, ttl=300, local_seconds=0, local_items=100)  # type: ignore[arg-type]
    cache.put("k", Recommendation(["1000"]))
    cache.get("k"), cache.get("k")
    assert backend.reads == 2


def test_an_expired_copy_is_not_served_fresh() -> None:
    backend = CountingBackend()
    cache = AnswerCache(backend, ttl=300, local_seconds=5, local_items=100)  # type: ignore[arg-type]
    old = CachedAnswer(Recommendation(["1000"]), stored_at=0.0)  # stored long before the TTL
    cache._remember("k", old)
    assert "k" not in (cache._local or {})  # never kept: it is not fresh
    backend.data["k"] = encode_answer(old)
    answer = cache.get("k")
    assert answer is not None and not cache.is_fresh(answer)  # the backend's stale copy, for stale-if-error
    assert backend.reads == 1


def test_the_copy_is_bounded() -> None:
    backend = CountingBackend()
    cache = AnswerCache(backend, ttl=300, local_seconds=5, local_items=3)  # type: ignore[arg-type]
    for n in range(10):
        cache.put(f"k{n}", Recommendation([str(n)]))
    assert len(cache._local or {}) == 3


def test_a_backend_outage_still_serves_recent_answers_from_the_copy() -> None:
    backend = CountingBackend()
    cache = AnswerCache(backend, ttl=300, local_seconds=5, local_items=100)  # type: ignore[arg-type]
    cache.put("k", Recommendation(["1000"]))
    backend.down = True
    answer = cache.get("k")
    assert answer is not None and answer.recommendation.item_ids == ["1000"]


def test_through_the_app_a_hit_on_the_copy_is_a_hit(make_app: Callable[..., Flask], redis_url: str) -> None:
    fake = FakeRecommender({"u1": ["1000", "1037"]})
    app = make_app({"recommender": fake}, cache_redis_url=redis_url, cache_local_seconds=5)
    client = app.test_client()
    first = client.get("/recommendations?user_id=u1&num_results=2")
    # Empty the shared cache: a second request still hits, from this worker's copy.
    redis.Redis.from_url(redis_url).flushdb()
    second = client.get("/recommendations?user_id=u1&num_results=2")
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert second.get_json() == first.get_json()
    assert len(fake.calls) == 1
