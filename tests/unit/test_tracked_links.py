"""LINK_TRACKING: every item url names its item and its answer (recs_item, recs_rid), whatever source answered."""
from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask

from app.errors import UpstreamError
from app.settings import ConfigError, Settings
from tests.conftest import FakeRecommender


def tracked(response: object) -> list[dict[str, list[str]]]:
    """Return each item url's query, parsed."""
    items = response.json  # type: ignore[attr-defined]
    assert items, "no items"
    return [parse_qs(urlsplit(item["url"]).query) for item in items]


def test_fresh_and_cached_answers_name_personalizes_id(make_app: Callable[..., Flask],
                                                       fake_recommender: FakeRecommender) -> None:
    client = make_app({"recommender": fake_recommender}, link_tracking=True,
                      link_query="utm_source=braze&utm_campaign={campaign}").test_client()
    fresh = client.get("/recommendations?user_id=u1&num_results=3&campaign=spring")
    cached = client.get("/recommendations?user_id=u1&num_results=3&campaign=spring")
    assert (fresh.headers["X-Cache"], cached.headers["X-Cache"]) == ("MISS", "HIT")
    for response in (fresh, cached):
        queries = tracked(response)
        assert [q["recs_item"] for q in queries] == [["1000"], ["1037"], ["1074"]]
        assert all(q["recs_rid"] == ["rid-u1"] and q["utm_campaign"] == ["spring"] for q in queries)
    # LINK_QUERY's pairs first, then the two tracking parameters
    assert fresh.json[0]["url"].endswith("?utm_source=braze&utm_campaign=spring&recs_item=1000&recs_rid=rid-u1")
    other = client.get("/recommendations?user_id=u2&num_results=2")
    assert {q["recs_rid"][0] for q in tracked(other)} == {"rid-u2"}


def test_a_stale_answer_keeps_its_id(make_app: Callable[..., Flask], fake_recommender: FakeRecommender) -> None:
    client = make_app({"recommender": fake_recommender}, link_tracking=True, cache_ttl_seconds=1).test_client()
    client.get("/recommendations?user_id=u1&num_results=3")
    fake_recommender.error = UpstreamError("down", code="upstream_timeout")
    app_cache = client.application.extensions["recommendation_service"].service.cache
    app_cache.ttl = 0  # every entry is now past its TTL: only a failing source may serve it
    stale = client.get("/recommendations?user_id=u1&num_results=3")
    assert stale.headers["X-Recommendations-Source"] == "stale"
    assert {q["recs_rid"][0] for q in tracked(stale)} == {"rid-u1"}


def test_batch_answers_get_a_stable_id_per_user(make_app: Callable[..., Flask]) -> None:
    client = make_app(link_tracking=True).test_client()  # the sample batch output is the source
    first = client.get("/recommendations?user_id=user123&num_results=3")
    again = client.get("/recommendations?user_id=user123&num_results=3")
    other = client.get("/recommendations?user_id=user456&num_results=3")
    assert first.headers["X-Recommendations-Source"] == "batch"
    rids = [{q["recs_rid"][0] for q in tracked(r)} for r in (first, again, other)]
    assert len(rids[0]) == 1 and rids[0] == rids[1] and rids[0] != rids[2]
    rid = rids[0].pop()
    assert rid.startswith("batch-") and len(rid) <= 40
    assert [q["recs_item"][0] for q in tracked(first)] == [item["id"] for item in first.json]


def test_fallback_answers_get_a_fallback_id(make_app: Callable[..., Flask],
                                            fake_recommender: FakeRecommender) -> None:
    fake_recommender.error = UpstreamError("down", code="upstream_timeout")
    client = make_app({"recommender": fake_recommender}, link_tracking=True).test_client()
    response = client.get("/recommendations?user_id=u1&num_results=3&format=object")
    assert response.headers["X-Recommendations-Source"] == "fallback"
    queries = [parse_qs(urlsplit(item["url"]).query) for item in response.json["items"]]
    rids = {q["recs_rid"][0] for q in queries}
    assert len(rids) == 1 and rids.pop().startswith("fallback-")
    assert [q["recs_item"][0] for q in queries] == [item["id"] for item in response.json["items"]]


def test_off_by_default(client: object) -> None:
    response = client.get("/recommendations?user_id=u1&num_results=3")  # type: ignore[attr-defined]
    assert all("recs_" not in item["url"] for item in response.json)


def test_link_query_may_not_take_the_tracking_names() -> None:
    with pytest.raises(ConfigError, match="recs_rid"):
        Settings.from_mapping({"catalog_uri": "c.csv", "recommendations_uri": "b.out",
                               "link_query": "utm_source=braze&recs_rid={campaign}"})
