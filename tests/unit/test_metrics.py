"""GET /metrics in one process (no PROMETHEUS_MULTIPROC_DIR): every metric moves when its event happens."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from app import warm_up
from app.errors import UpstreamError
from tests.wire_stub import WireStub
from tests.conftest import FakeAws, FakeRecommender
from tests.unit.test_fallback import store_answer

ARN = "arn:aws:personalize:us-east-1:123456789012:campaign/metrics"
KEY = "metrics-test-key-0123456789"


def scrape(client: FlaskClient, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics and parse it with prometheus_client's own parser: {(sample name, labels): value}."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def requests_served(samples: dict[Any, float], status: str = "200") -> float:
    return value(samples, "recs_http_request_duration_seconds_count", route="/recommendations", status=status)


def test_requests_are_counted_by_route_template_and_status(client: FlaskClient) -> None:
    for user in ("u1", "u2", "u1"):
        assert client.get("/recommendations", query_string={"user_id": user}).status_code == 200
    assert client.get("/recommendations", query_string={"num_results": "0", "user_id": "u1"}).status_code == 400
    assert client.get("/no/such/path").status_code == 404

    samples = scrape(client)
    assert requests_served(samples) == 3
    assert requests_served(samples, "400") == 1
    assert value(samples, "recs_http_request_duration_seconds_count", route="unmatched", status="404") == 1
    assert value(samples, "recs_http_request_duration_seconds_bucket", route="/recommendations", status="200",
                 le="+Inf") == 3
    assert all("u1" not in str(labels) for _, labels in samples)  # user ids are never label values


def test_cache_hits_and_misses(client: FlaskClient) -> None:
    for _ in range(3):
        client.get("/recommendations", query_string={"user_id": "u1"})
    samples = scrape(client)
    assert value(samples, "recs_cache_results_total", result="MISS") == 1
    assert value(samples, "recs_cache_results_total", result="HIT") == 2
    assert value(samples, "recs_cache_results_total", result="STALE") == 0


def test_stale_answer_and_fallback_are_counted_with_their_reason(make_app: Callable[..., Flask]) -> None:
    fake = FakeRecommender()
    fake.error = UpstreamError("Personalize is throttling requests.", code="upstream_throttled", status=503)
    app = make_app({"recommender": fake})
    store_answer(app, "user123", 3, ["1111", "1148", "1222"], age=400)  # past the 300 s TTL
    client = app.test_client()

    assert client.get("/recommendations", query_string={"user_id": "user123", "num_results": 3}).headers[
        "X-Cache"] == "STALE"
    assert client.get("/recommendations", query_string={"user_id": "user456"}).headers[
        "X-Recommendations-Source"] == "batch"

    samples = scrape(client)
    assert value(samples, "recs_cache_results_total", result="STALE") == 1
    assert value(samples, "recs_fallbacks_total", reason="upstream_throttled", source="stale") == 1
    assert value(samples, "recs_fallbacks_total", reason="upstream_throttled", source="batch") == 1


def test_personalize_calls_latency_and_errors_by_code(make_app: Callable[..., Flask],
                                                      runtime: tuple[Any, WireStub]) -> None:
    client, stubber = runtime
    stubber.add_response("get_recommendations", {"itemList": [{"itemId": "1000"}], "recommendationId": "r1"})
    stubber.add_client_error("get_recommendations", "ThrottlingException", http_status_code=400)
    app = make_app({"aws": FakeAws(personalize=lambda role, region: client)}, personalize_campaign_arn=ARN,
                   recommendations_uri=None)
    http = app.test_client()

    assert http.get("/recommendations", query_string={"user_id": "a"}).headers["X-Recommendations-Source"] == \
        "personalize"
    assert http.get("/recommendations", query_string={"user_id": "b"}).headers["X-Fallback-Reason"] == \
        "upstream_throttled"

    samples = scrape(http)
    assert value(samples, "recs_personalize_call_duration_seconds_count", outcome="ok") == 1
    assert value(samples, "recs_personalize_call_duration_seconds_count", outcome="error") == 1
    assert value(samples, "recs_personalize_errors_total", code="upstream_throttled") == 1
    assert value(samples, "recs_fallbacks_total", reason="upstream_throttled", source="fallback") == 1


def test_circuit_breaker_state(make_app: Callable[..., Flask]) -> None:
    fake = FakeRecommender()
    fake.error = UpstreamError("Personalize could not be reached.", code="upstream_unavailable")
    app = make_app({"recommender": fake}, breaker_failure_threshold=2, breaker_recovery_seconds=3600)
    client = app.test_client()
    assert value(scrape(client), "recs_circuit_breaker_state") == 0

    for user in ("a", "b"):
        client.get("/recommendations", query_string={"user_id": user})
    assert value(scrape(client), "recs_circuit_breaker_state") == 2


def test_catalog_size_and_load_time(app: Flask, client: FlaskClient) -> None:
    before = value(scrape(client), "recs_source_loaded_timestamp_seconds", source="catalog")
    warm_up(app)
    samples = scrape(client)
    assert before == 0
    assert value(samples, "recs_source_items", source="catalog") == 40  # the sample catalog's rows
    assert value(samples, "recs_source_items", source="batch_recommendations") == 20
    assert value(samples, "recs_source_loaded_timestamp_seconds", source="catalog") > 1.7e9


def test_metrics_need_an_api_key_when_keys_are_set_but_not_an_allowed_address(
    make_app: Callable[..., Flask], fake_recommender: FakeRecommender
) -> None:
    app = make_app({"recommender": fake_recommender}, api_keys=KEY, allowed_cidrs="203.0.113.0/24")
    client = app.test_client()  # the test client calls from 127.0.0.1, outside ALLOWED_CIDRS

    denied = client.get("/metrics")
    assert denied.status_code == 401
    assert denied.get_json()["error"]["code"] == "unauthorized"
    assert requests_served(scrape(client, **{"X-API-Key": KEY})) == 0
    assert client.get("/recommendations", query_string={"user_id": "u1"},
                      headers={"X-API-Key": KEY}).status_code == 403


@pytest.mark.parametrize("path", ["/metrics", "/healthz"])
def test_without_api_keys_metrics_are_open_like_the_health_checks(client: FlaskClient, path: str) -> None:
    assert client.get(path).status_code == 200


def test_events_are_counted_by_source_and_outcome(client: FlaskClient) -> None:
    """The counters POST /events and ingest-currents share: outcomes, skipped events by reason."""
    metrics = client.application.extensions["recommendation_service"].metrics
    metrics.event_counter("api")("sent", 10)
    metrics.event_counter("api")("failed", 0)  # nothing to count: no sample appears
    metrics.events_skipped_by("currents", "bot_click", 3)
    metrics.events_queued.set(7)
    samples = scrape(client)
    assert samples[("recs_events_total", (("outcome", "sent"), ("source", "api")))] == 10
    assert ("recs_events_total", (("outcome", "failed"), ("source", "api"))) not in samples
    assert samples[("recs_events_skipped_total", (("reason", "bot_click"), ("source", "currents")))] == 3
    assert samples[("recs_events_total", (("outcome", "skipped"), ("source", "currents")))] == 3
    assert samples[("recs_events_queue_depth", ())] == 7
