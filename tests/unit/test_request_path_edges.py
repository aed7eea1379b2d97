"""Edges of the request path that only the e2e tier used to notice: each test here kills a mutant that
survived the unit and integration tiers (issue 13)."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
from flask import Flask

from app.caching.singleflight import SingleFlight
from app.catalog.items import parse_catalog
from app.components import components
from app.sources.recommender import NO_OPTIONS, Options, Recommendation
from tests.conftest import FakeRecommender

BUDGET_MS = 800


class TimedRecommender:
    """Stands in for the guarded source: records the time it is given and answers at once."""

    name = "timed"
    key = "timed-source"

    def __init__(self) -> None:
        self.timeouts: list[float | None] = []

    def recommend(self, user_id: str | None, num_results: int, timeout: float | None = None,
                  options: Options = NO_OPTIONS) -> Recommendation:
        self.timeouts.append(timeout)
        return Recommendation(["1000"], "rid-timed")

    def check_ready(self) -> None:
        return None


def test_the_budget_counts_from_the_requests_start_not_from_the_source_call(make_app: Callable[..., Flask]) -> None:
    """Time spent before the service is asked (queueing, parsing, auth) comes out of the same budget."""
    app = make_app({"recommender": FakeRecommender()}, request_budget_ms=BUDGET_MS)
    service = components(app).service
    timed = service.recommender = TimedRecommender()

    service.recommend("edge-user", 3, started=time.monotonic() - 0.5)

    (timeout,) = timed.timeouts
    assert timeout is not None and timeout <= BUDGET_MS / 1000 - 0.5 + 0.05


def test_a_json_catalogs_numeric_zero_stock_is_out_of_stock() -> None:
    data = b"\n".join([
        b'{"id": "gone", "name": "Gone", "url": "https://x/gone", "stock": 0}',
        b'{"id": "minus", "name": "Minus", "url": "https://x/minus", "stock": -2}',
        b'{"id": "kept", "name": "Kept", "url": "https://x/kept", "stock": 3}',
        b'{"id": "float", "name": "Float", "url": "https://x/float", "stock": 0.0}',
    ])

    catalog = parse_catalog(data, "jsonl", "items.jsonl")

    assert set(catalog.encoded) == {"kept"}
    assert catalog.out_of_stock == 3


def test_the_cross_worker_lock_lasts_as_long_as_the_budget(redis_url: str) -> None:
    """A lock that expired before the leader's call ended would let a second worker call Personalize too."""
    client = redis.Redis.from_url(redis_url)
    answers = make_answer_cache()
    flights = SingleFlight(answers, client)
    key = "recs:v1:edge-lock"
    seen: list[int] = []

    def fetch(remaining: float) -> Recommendation:
        seen.append(int(client.pttl(f"{key}:lock")))
        return Recommendation(["1000"])

    flights.run(key, fetch, time.monotonic() + BUDGET_MS / 1000)

    (ttl_ms,) = seen
    assert BUDGET_MS - 200 <= ttl_ms <= BUDGET_MS
    client.close()


def make_answer_cache() -> Any:
    from cachelib import SimpleCache

    from app.caching.answers import AnswerCache

    return AnswerCache(SimpleCache(), ttl=60)


class OddIdRecommender(FakeRecommender):
    """Answers with a recommendation id that cannot travel in an HTTP header."""

    def __init__(self, recommendation_id: str) -> None:
        super().__init__({"u1": ["1000", "1037"]})
        self.recommendation_id = recommendation_id

    def recommend(self, user_id: str | None, num_results: int, options: Options = NO_OPTIONS) -> Recommendation:
        answer = super().recommend(user_id, num_results, options)
        return Recommendation(answer.item_ids, recommendation_id=self.recommendation_id)


def test_a_recommendation_id_that_is_not_printable_ascii_is_not_echoed(make_app: Callable[..., Flask]) -> None:
    for odd in ("rid\r\nX-Injected: yes", "rid-\x7f", "rid-ünï"):
        client = make_app({"recommender": OddIdRecommender(odd)}).test_client()

        response = client.get("/recommendations?user_id=u1&num_results=2")

        assert response.status_code == 200, odd
        assert "X-Recommendation-Id" not in response.headers, odd
        assert "X-Injected" not in response.headers
        assert [item["id"] for item in response.get_json()] == ["1000", "1037"]
