"""RecommendationService's fallback chain, backfill and time budget, through the test client and directly.

When the recommendation source fails the service answers, in order, from a stale cached answer, the batch
output file, then the popular items (POPULAR_ITEMS_URI, else the catalog's rank column, then the items
recommended most lately, then the catalog's order); only a catalog without items is a 503, never a 500. Short lists are backfilled from the popular items, in stock only.
"""
from __future__ import annotations

import csv
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from app import warm_up
from app.caching.answers import CachedAnswer, decode_answer, encode_answer
from app.catalog.items import Catalog
from app.components import components
from app.errors import InvalidParameterError, UnavailableError, UpstreamError
from app.recommendations.service import RecommendationService
from app.sources.recommender import NO_OPTIONS, Options, Recommendation
from tests.conftest import SAMPLE_BATCH, SAMPLE_CATALOG, FakeRecommender

ARN = "arn:aws:personalize:us-east-1:123456789012:campaign/x"
UPSTREAM_ERRORS = [
    UpstreamError("Personalize did not answer in time.", code="upstream_timeout", status=504),
    UpstreamError("Personalize is throttling requests.", code="upstream_throttled", status=503, retry_after=1),
    UpstreamError("Personalize could not be reached.", code="upstream_unavailable", status=502),
    UpstreamError("No such campaign.", code="recommender_not_found"),
    UpstreamError("Personalize is failing.", code="circuit_open", status=503),
]
ERROR_IDS = [e.code for e in UPSTREAM_ERRORS]


# --------------------------------------------------------------------------------------------------
# helpers (the expectations are read from the sample files independently of app/)


def sample_rows() -> list[dict[str, str]]:
    with SAMPLE_CATALOG.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def sample_popular() -> list[str]:
    """The sample catalog's ids by POPULARITY_RANK, most popular first."""
    return [r["ITEM_ID"] for r in sorted(sample_rows(), key=lambda r: float(r["POPULARITY_RANK"]))]


def sample_batch(user_id: str) -> list[str]:
    for line in SAMPLE_BATCH.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            if record["input"]["userId"] == user_id:
                return record["output"]["recommendedItems"]
    raise KeyError(user_id)


def write_catalog(path: Path, rows: list[dict[str, Any]]) -> str:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def plain_catalog(path: Path) -> str:
    """The sample catalog without its POPULARITY_RANK column."""
    return write_catalog(path, [{k: v for k, v in r.items() if k != "POPULARITY_RANK"} for r in sample_rows()])


def ids(response: TestResponse) -> list[str]:
    body = response.get_json()
    assert isinstance(body, list), body
    assert all(isinstance(item, dict) and item.get("id") for item in body), body  # no nulls, no holes
    return [item["id"] for item in body]


def get(app: Flask, user_id: str, num_results: int | None = None) -> TestResponse:
    query = {"user_id": user_id} | ({"num_results": num_results} if num_results is not None else {})
    return app.test_client().get("/recommendations", query_string=query)


def failing(error: Exception) -> FakeRecommender:
    fake = FakeRecommender({"u1": ["1000", "1037", "1074"], "user123": ["1000", "1037", "1074"]})
    fake.error = error
    return fake


def service_of(app: Flask) -> RecommendationService:
    return components(app).service


def store_answer(app: Flask, user_id: str, num_results: int, item_ids: list[str], age: float) -> tuple[str, float]:
    """Write an answer into the app's cache as if stored `age` seconds ago; return its key and stored_at."""
    service = service_of(app)
    key = service.cache.key(service.recommender.key, user_id, {"num_results": num_results})
    stored_at = time.time() - age
    service.cache.backend.set(key, encode_answer(CachedAnswer(Recommendation(item_ids, "rid-old"), stored_at)),
                              timeout=service.cache.keep_seconds)
    return key, stored_at


def assert_fallback_headers(response: TestResponse, source: str, reason: str, cache: str = "MISS") -> None:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["X-Recommendations-Source"] == source
    assert response.headers["X-Cache"] == cache
    assert response.headers["X-Fallback-Reason"] == reason
    assert response.headers["Cache-Control"] == "no-store"


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


# --------------------------------------------------------------------------------------------------
# (a) a stale answer


@pytest.mark.parametrize("error", UPSTREAM_ERRORS, ids=ERROR_IDS)
def test_a_stale_answer_is_served_first(make_app: Callable[..., Flask], error: UpstreamError) -> None:
    fake = failing(error)
    app = make_app({"recommender": fake})  # the sample batch is configured too: stale still comes first
    key, stored_at = store_answer(app, "user123", 3, ["1111", "1148", "1222"], age=400)  # TTL is 300

    response = get(app, "user123", 3)

    assert_fallback_headers(response, "stale", error.code, cache="STALE")
    assert ids(response) == ["1111", "1148", "1222"]
    assert fake.calls == [("user123", 3)]  # the stale answer was not served as a hit
    kept = decode_answer(service_of(app).cache.backend.get(key))
    assert kept is not None and kept.stored_at == stored_at  # not rewritten as fresh
    assert get(app, "user123", 3).headers["X-Cache"] == "STALE"


def test_a_stale_answer_through_the_service(make_app: Callable[..., Flask]) -> None:
    app = make_app({"recommender": failing(UpstreamError("down", code="upstream_unavailable"))},
                   cache_ttl_seconds=1)
    store_answer(app, "u1", 2, ["1074", "1000"], age=5)

    with app.app_context():
        result = service_of(app).recommend("u1", 2)

    assert [item["id"] for item in result.items] == ["1074", "1000"]
    assert (result.source, result.cache, result.max_age, result.fallback_reason) == (
        "stale", "STALE", 0, "upstream_unavailable")
    assert result.backfilled == 0


def test_a_fresh_answer_is_a_hit_without_calling_the_source(make_app: Callable[..., Flask]) -> None:
    fake = failing(UpstreamError("down"))
    app = make_app({"recommender": fake})
    store_answer(app, "u1", 2, ["1074", "1000"], age=10)

    response = get(app, "u1", 2)

    assert response.headers["X-Cache"] == "HIT"
    assert ids(response) == ["1074", "1000"]
    assert fake.calls == []


# --------------------------------------------------------------------------------------------------
# (b) the batch output


@pytest.mark.parametrize("error", UPSTREAM_ERRORS, ids=ERROR_IDS)
def test_without_a_stale_answer_the_batch_output_answers(make_app: Callable[..., Flask], error: UpstreamError) -> None:
    fake = failing(error)
    app = make_app({"recommender": fake}, personalize_campaign_arn=ARN, recommendations_uri=str(SAMPLE_BATCH))

    response = get(app, "user123")

    assert_fallback_headers(response, "batch", error.code)
    assert ids(response) == sample_batch("user123")[:10]
    assert fake.calls == [("user123", 10)]


def test_the_batch_answer_is_cut_to_num_results(make_app: Callable[..., Flask]) -> None:
    app = make_app({"recommender": failing(UpstreamError("down"))}, personalize_campaign_arn=ARN,
                   recommendations_uri=str(SAMPLE_BATCH))

    response = get(app, "user456", 3)

    assert_fallback_headers(response, "batch", "upstream_error")
    assert ids(response) == sample_batch("user456")[:3]


def test_a_user_the_batch_lacks_gets_the_popular_items(make_app: Callable[..., Flask]) -> None:
    app = make_app({"recommender": failing(UpstreamError("down"))}, personalize_campaign_arn=ARN,
                   recommendations_uri=str(SAMPLE_BATCH))

    response = get(app, "nobody-in-the-batch", 4)

    assert_fallback_headers(response, "fallback", "upstream_error")
    assert ids(response) == sample_popular()[:4]


# --------------------------------------------------------------------------------------------------
# (c) the popular items


@pytest.mark.parametrize("error", UPSTREAM_ERRORS, ids=ERROR_IDS)
def test_without_stale_or_batch_the_catalogs_ranking_answers(make_app: Callable[..., Flask],
                                                             error: UpstreamError) -> None:
    app = make_app({"recommender": failing(error)}, personalize_campaign_arn=ARN, recommendations_uri=None)

    response = get(app, "user123", 5)

    assert_fallback_headers(response, "fallback", error.code)
    assert ids(response) == sample_popular()[:5]


POPULAR = ["1111", "1000", "2221", "unknown-id", "1074", "1148"]


def write_popular(path: Path, kind: str, item_ids: list[str]) -> str:
    if kind == "csv":
        target = path / "popular.csv"
        target.write_text("ITEM_ID,SALES\n" + "".join(f"{i},{100 - n}\n" for n, i in enumerate(item_ids)))
    else:
        target = path / "popular.json"
        target.write_text(json.dumps([int(i) if i.isdigit() and n % 2 else i for n, i in enumerate(item_ids)]))
    return str(target)


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_popular_items_uri_wins_over_the_catalogs_ranking(make_app: Callable[..., Flask], tmp_path: Path,
                                                          kind: str) -> None:
    app = make_app({"recommender": failing(UpstreamError("down"))}, personalize_campaign_arn=ARN,
                   recommendations_uri=None, popular_items_uri=write_popular(tmp_path, kind, POPULAR))

    response = get(app, "user123", 4)

    assert_fallback_headers(response, "fallback", "upstream_error")
    assert ids(response) == ["1111", "1000", "2221", "1074"]  # its order; ids the catalog lacks skipped


def test_an_unreadable_popular_file_falls_back_to_the_catalogs_ranking(make_app: Callable[..., Flask],
                                                                       tmp_path: Path) -> None:
    broken = tmp_path / "popular.json"
    broken.write_text("{not json")
    app = make_app({"recommender": failing(UpstreamError("down"))}, personalize_campaign_arn=ARN,
                   recommendations_uri=None, popular_items_uri=str(broken))

    response = get(app, "user123", 3)

    assert_fallback_headers(response, "fallback", "upstream_error")
    assert ids(response) == sample_popular()[:3]


def test_an_empty_popular_file_falls_back_to_the_catalogs_ranking(make_app: Callable[..., Flask],
                                                                  tmp_path: Path) -> None:
    empty = tmp_path / "popular.json"
    empty.write_text("[]")
    app = make_app({"recommender": failing(UpstreamError("down"))}, personalize_campaign_arn=ARN,
                   recommendations_uri=None, popular_items_uri=str(empty))

    response = get(app, "user123", 3)

    assert_fallback_headers(response, "fallback", "upstream_error")
    assert ids(response) == sample_popular()[:3]


# --------------------------------------------------------------------------------------------------
# (d) nothing can answer


def catalog_order() -> list[str]:
    """The sample catalog's ids in file order (every sample item is in stock)."""
    return [r["ITEM_ID"] for r in sample_rows()]


def test_without_any_popularity_the_catalog_order_answers(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    """No stale answer, no batch file, no popular list or rank column, nothing recommended yet: never a 503."""
    app = make_app({"recommender": failing(UpstreamError("down", code="upstream_unavailable"))},
                   catalog_uri=plain_catalog(tmp_path / "catalog.csv"), personalize_campaign_arn=ARN,
                   recommendations_uri=None)

    response = get(app, "user123", 3)

    assert_fallback_headers(response, "fallback", "upstream_unavailable")
    assert ids(response) == catalog_order()[:3]


def test_the_items_recommended_most_lately_come_before_the_catalog_order(make_app: Callable[..., Flask],
                                                                         tmp_path: Path) -> None:
    fake = FakeRecommender({"a": ["1185", "1222"], "b": ["1222", "1259"], "c": ["1222"]})
    app = make_app({"recommender": fake}, catalog_uri=plain_catalog(tmp_path / "catalog.csv"),
                   personalize_campaign_arn=ARN, recommendations_uri=None)
    for user in ("a", "b", "c", "a"):  # the second "a" is a cache hit: only misses count
        assert get(app, user, 2).status_code == 200
    recent = service_of(app).recent
    assert recent is not None
    recent.flush()  # what the background thread does every few seconds
    fake.error = UpstreamError("down", code="upstream_timeout", status=504)

    response = get(app, "someone-else", 5)

    assert_fallback_headers(response, "fallback", "upstream_timeout")
    # 1222 three times, then 1185 and 1259 once each (ties by id), then the catalog's order.
    assert ids(response) == ["1222", "1185", "1259"] + [i for i in catalog_order() if i not in {"1222", "1185",
                                                                                                 "1259"}][:2]


def test_a_user_the_batch_lacks_without_popular_items_gets_the_catalog_order(make_app: Callable[..., Flask],
                                                                             tmp_path: Path) -> None:
    app = make_app({"recommender": failing(UpstreamError("down"))},
                   catalog_uri=plain_catalog(tmp_path / "catalog.csv"), personalize_campaign_arn=ARN,
                   recommendations_uri=str(SAMPLE_BATCH))

    assert get(app, "user123", 3).headers["X-Recommendations-Source"] == "batch"  # in the batch
    response = get(app, "nobody-in-the-batch", 3)
    assert_fallback_headers(response, "fallback", "upstream_error")
    assert ids(response) == catalog_order()[:3]


def test_only_a_catalog_without_items_is_a_503(make_app: Callable[..., Flask]) -> None:
    app = make_app({"recommender": failing(UpstreamError("down", code="upstream_unavailable"))},
                   personalize_campaign_arn=ARN, recommendations_uri=None)
    service = service_of(app)
    empty = Catalog()
    service.catalog = type("Held", (), {"get": lambda self: empty})()  # a catalog with no item in stock

    with app.app_context(), pytest.raises(UnavailableError) as info:
        service.recommend("user123", 3)
    assert info.value.code == "no_recommendations" and info.value.retry_after == 1


@pytest.mark.parametrize("error", [RuntimeError("bug"), KeyError("itemList"), ValueError("bad json")],
                         ids=["runtime", "key", "value"])
def test_a_crashing_source_also_falls_back(make_app: Callable[..., Flask], error: Exception) -> None:
    app = make_app({"recommender": failing(error)}, personalize_campaign_arn=ARN, recommendations_uri=None)

    response = get(app, "user123", 3)

    assert_fallback_headers(response, "fallback", "internal_error")
    assert ids(response) == sample_popular()[:3]


def test_a_crashing_source_with_no_popularity_still_answers(make_app: Callable[..., Flask],
                                                             tmp_path: Path) -> None:
    app = make_app({"recommender": failing(RuntimeError("bug"))},
                   catalog_uri=plain_catalog(tmp_path / "catalog.csv"), personalize_campaign_arn=ARN,
                   recommendations_uri=None)

    response = get(app, "user123", 3)

    assert_fallback_headers(response, "fallback", "internal_error")
    assert ids(response) == catalog_order()[:3]


def test_a_request_the_source_rejects_is_a_400_not_a_fallback(make_app: Callable[..., Flask]) -> None:
    fake = failing(InvalidParameterError("Personalize rejected the request: bad userId",
                                         code="rejected_by_personalize"))
    app = make_app({"recommender": fake})
    store_answer(app, "user123", 3, ["1111"], age=400)  # even with a stale answer and a batch file

    response = get(app, "user123", 3)

    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "rejected_by_personalize"
    assert "X-Recommendations-Source" not in response.headers
    with app.app_context(), pytest.raises(InvalidParameterError):
        service_of(app).recommend("user123", 3)


def test_fallback_answers_are_not_cached(make_app: Callable[..., Flask]) -> None:
    fake = failing(UpstreamError("down"))
    app = make_app({"recommender": fake}, personalize_campaign_arn=ARN, recommendations_uri=str(SAMPLE_BATCH))

    assert get(app, "user123", 3).headers["X-Recommendations-Source"] == "batch"
    assert get(app, "u1", 3).headers["X-Recommendations-Source"] == "fallback"
    assert len(fake.calls) == 2

    fake.error = None  # the source recovers
    for user in ("user123", "u1"):
        response = get(app, user, 3)
        assert response.status_code == 200
        assert response.headers["X-Cache"] == "MISS"
        assert response.headers["X-Recommendations-Source"] == "fake"
        assert "X-Fallback-Reason" not in response.headers
        assert response.headers["Cache-Control"] == "private, max-age=300"
        assert ids(response) == ["1000", "1037", "1074"]
    assert len(fake.calls) == 4

    assert get(app, "u1", 3).headers["X-Cache"] == "HIT"
    assert len(fake.calls) == 4


# --------------------------------------------------------------------------------------------------
# backfill


def test_a_short_answer_is_backfilled_from_the_popular_items(make_app: Callable[..., Flask]) -> None:
    fake = FakeRecommender({"u1": ["1074", "1000", "not-in-catalog"]})
    app = make_app({"recommender": fake})

    response = get(app, "u1", 5)

    assert response.status_code == 200
    answer = ["1074", "1000"]
    assert ids(response) == answer + [i for i in sample_popular() if i not in answer][:3]
    assert response.headers["X-Backfilled"] == "3"
    assert response.headers["X-Recommendations-Source"] == "fake"


def test_backfill_never_repeats_an_item_of_the_answer(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    fake = FakeRecommender({"u1": ["1000", "1037", "not-in-catalog"]})
    popular = tmp_path / "popular.csv"
    popular.write_text("ITEM_ID\n1037\n1111\n1000\n1111\n1148\n1074\n1222\n")
    app = make_app({"recommender": fake}, popular_items_uri=str(popular))

    response = get(app, "u1", 5)

    assert ids(response) == ["1000", "1037", "1111", "1148", "1074"]
    assert response.headers["X-Backfilled"] == "3"


def test_a_full_answer_is_not_backfilled(make_app: Callable[..., Flask]) -> None:
    app = make_app({"recommender": FakeRecommender({"u1": ["1074", "1000"]})})

    response = get(app, "u1", 2)

    assert ids(response) == ["1074", "1000"]
    assert "X-Backfilled" not in response.headers


def test_a_too_short_popular_list_gives_a_shorter_answer(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    popular = tmp_path / "popular.json"
    popular.write_text(json.dumps(["1111", "1000", "missing"]))
    app = make_app({"recommender": FakeRecommender({"u1": ["1000"]})}, popular_items_uri=str(popular))

    response = get(app, "u1", 10)

    assert ids(response) == ["1000", "1111"]
    assert response.headers["X-Backfilled"] == "1"


STOCK_STYLES = {
    "in_stock": ("IN_STOCK", "true", "false"),
    "availability": ("AVAILABILITY", "in stock", "out of stock"),
    "stock": ("STOCK", "7", "0"),
}
OUT = {"B", "D", "F"}


def stock_catalog(path: Path, style: str) -> str:
    column, yes, no = STOCK_STYLES[style]
    rows = [
        {"ITEM_ID": i, "NAME": f"Item {i}", "URL": f"https://shop.example.com/p/{i}", "PRICE": "9.99",
         "POPULARITY_RANK": str(rank), column: no if i in OUT else yes}
        for rank, i in enumerate("FEDCBA", start=1)  # the out-of-stock items are among the most popular
    ]
    return write_catalog(path / "catalog.csv", rows)


@pytest.mark.parametrize("style", sorted(STOCK_STYLES))
def test_out_of_stock_items_are_never_served(make_app: Callable[..., Flask], tmp_path: Path, style: str) -> None:
    fake = FakeRecommender({"u1": ["B", "A", "D"]})
    app = make_app({"recommender": fake}, catalog_uri=stock_catalog(tmp_path, style))

    answered = get(app, "u1", 5)
    assert ids(answered) == ["A", "E", "C"]  # the answer's in-stock item, then popular in-stock ones
    assert answered.headers["X-Backfilled"] == "2"

    fake.error = UpstreamError("down")
    fallback = get(app, "u2", 5)
    assert fallback.headers["X-Recommendations-Source"] == "fallback"
    assert ids(fallback) == ["E", "C", "A"]


def test_out_of_stock_items_of_the_popular_file_are_skipped(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    popular = tmp_path / "popular.csv"
    popular.write_text("ITEM_ID\nB\nD\nC\nF\nA\n")
    app = make_app({"recommender": FakeRecommender({"u1": ["E"]})},
                   catalog_uri=stock_catalog(tmp_path, "in_stock"), popular_items_uri=str(popular))

    response = get(app, "u1", 6)

    assert ids(response) == ["E", "C", "A"]


def test_a_stale_answer_is_backfilled_and_drops_items_gone_out_of_stock(make_app: Callable[..., Flask],
                                                                        tmp_path: Path) -> None:
    app = make_app({"recommender": failing(UpstreamError("down"))},
                   catalog_uri=stock_catalog(tmp_path, "in_stock"))
    store_answer(app, "u1", 4, ["D", "A"], age=400)

    response = get(app, "u1", 4)

    assert_fallback_headers(response, "stale", "upstream_error", cache="STALE")
    assert ids(response) == ["A", "E", "C"]
    assert response.headers["X-Backfilled"] == "2"


# --------------------------------------------------------------------------------------------------
# the time budget


class BlockingRecommender(FakeRecommender):
    """Answers only once `release` is set: a source that hangs."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__({"user123": ["1000"]})
        self.release = release

    def recommend(self, user_id: str | None, num_results: int, options: Options = NO_OPTIONS) -> Recommendation:
        self.release.wait(10)
        return super().recommend(user_id, num_results, options)


@pytest.mark.parametrize("recommendations_uri", [str(SAMPLE_BATCH), None], ids=["batch", "popular"])
def test_a_hanging_source_costs_at_most_the_budget(make_app: Callable[..., Flask], release: threading.Event,
                                                   recommendations_uri: str | None) -> None:
    app = make_app({"recommender": BlockingRecommender(release)}, request_budget_ms=200,
                   personalize_campaign_arn=ARN, recommendations_uri=recommendations_uri)
    warm_up(app)
    client = app.test_client()

    started = time.monotonic()
    response = client.get("/recommendations", query_string={"user_id": "user123", "num_results": 3})
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert response.headers["X-Fallback-Reason"] == "upstream_timeout"
    assert response.headers["X-Recommendations-Source"] == ("batch" if recommendations_uri else "fallback")
    assert len(ids(response)) == 3
    assert elapsed < 0.2 + 0.15


def test_an_answer_with_no_servable_item_says_so(make_app: Callable[..., Flask]) -> None:
    """A user the batch file lacks, or a source answering only ids the catalog does not serve, gets the
    popular items; the response and the fallback metrics say why instead of passing them off as the answer."""
    app = make_app({}, recommendations_uri=str(SAMPLE_BATCH))  # the batch file is the source
    client = app.test_client()

    unknown = client.get("/recommendations?user_id=not-in-the-batch-file&num_results=3")
    assert unknown.status_code == 200 and len(unknown.get_json()) == 3
    assert unknown.headers["X-Fallback-Reason"] == "no_known_items"
    assert unknown.headers["X-Backfilled"] == "3"
    known = client.get("/recommendations?user_id=user123&num_results=3")
    assert "X-Fallback-Reason" not in known.headers

    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'recs_fallbacks_total{reason="no_known_items",source="batch"} 1.0' in metrics

    catalog_mismatch = make_app({"recommender": FakeRecommender({"u1": ["not-in-catalog-1", "not-in-catalog-2"]})})
    response = catalog_mismatch.test_client().get("/recommendations?user_id=u1&num_results=2")
    assert response.headers["X-Fallback-Reason"] == "no_known_items"
