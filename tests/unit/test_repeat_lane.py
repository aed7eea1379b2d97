"""RepeatLane answers a repeat of a recent GET /recommendations before Flask, exactly as the route would: the same
status, headers (in order) and body, the same guard, request id, metrics and log line; everything else goes on
to the route."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import Client, TestResponse

from app.components import components
from app.errors import UpstreamError
from app.recommendations.repeats import RepeatLane
from tests.conftest import FakeRecommender
from tests.unit.test_logs import output, request_lines

API_KEY = "lane-api-key-0123456789abcdef"


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """One instant for RenderedAnswers' countdown, so the lane and the route count the same max-age."""
    now = time.time()
    monkeypatch.setattr("app.recommendations.presentation.time", type("Clock", (), {"time": staticmethod(lambda: now)}))


@pytest.fixture
def fake() -> FakeRecommender:
    return FakeRecommender({"u1": ["1000", "1037", "1074"], "u2": ["1111", "1000"]})


@pytest.fixture
def build(make_app: Callable[..., Flask], fake: FakeRecommender) -> Callable[..., Flask]:
    def make(**settings: Any) -> Flask:
        return make_app({"recommender": fake}, cache_local_seconds=5, **settings)
    return make


def lane(app: Flask) -> RepeatLane:
    found = app.wsgi_app
    while not isinstance(found, RepeatLane):
        found = found.app  # TrustedProxies wraps it when set
    return found


def both(app: Flask, url: str, **kwargs: Any) -> tuple[TestResponse, TestResponse]:
    """The same request answered through the app (the lane in front) and by the route alone."""
    through_lane = Client(app.wsgi_app).get(url, **kwargs)
    by_route = Client(lane(app).app).get(url, **kwargs)
    return through_lane, by_route


def same(one: TestResponse, other: TestResponse) -> None:
    assert one.status == other.status
    assert one.get_data() == other.get_data()
    strip = [(name, value) for name, value in one.headers if name != "X-Request-Id"]
    assert strip == [(name, value) for name, value in other.headers if name != "X-Request-Id"]


@pytest.mark.usefixtures("frozen_clock")
@pytest.mark.parametrize("url", ["/recommendations?user_id=u1", "/recommendations?user_id=u2&num_results=5",
                                 "/recommendations?user_id=u1&format=object&fields=id,name",
                                 "/recommendations?num_results=2&user_id=u1&utm_source=braze"])
def test_a_repeat_is_answered_as_the_route_answers_it(build: Callable[..., Flask], url: str) -> None:
    app = build()
    first = app.test_client().get(url)
    assert first.headers["X-Cache"] == "MISS"
    through_lane, by_route = both(app, url)
    assert through_lane.headers["X-Cache"] == "HIT"
    same(through_lane, by_route)


@pytest.mark.usefixtures("frozen_clock")
def test_the_lane_answers_without_flask_and_only_repeats(build: Callable[..., Flask], fake: FakeRecommender) -> None:
    app = build()
    routed: list[str] = []
    inner = lane(app).app
    lane(app).app = lambda environ, start_response: routed.append(environ["QUERY_STRING"]) or inner(environ,
                                                                                                     start_response)
    client = app.test_client()
    client.get("/recommendations?user_id=u1")
    for _ in range(3):
        assert client.get("/recommendations?user_id=u1").headers["X-Cache"] == "HIT"
    client.get("/recommendations?user_id=u1&num_results=2")  # another query string: the route
    client.head("/recommendations?user_id=u1")  # another method: the route
    assert routed == ["user_id=u1", "user_id=u1&num_results=2", "user_id=u1"]
    assert fake.calls == [("u1", 10), ("u1", 2)]


def test_a_request_id_is_echoed_or_made(build: Callable[..., Flask]) -> None:
    client = build().test_client()
    client.get("/recommendations?user_id=u1")
    given = client.get("/recommendations?user_id=u1", headers={"X-Request-Id": "braze-123"})
    made = client.get("/recommendations?user_id=u1", headers={"X-Request-Id": "bad\x01id"})
    assert given.headers["X-Request-Id"] == "braze-123"
    assert len(made.headers["X-Request-Id"]) == 32 and made.headers["X-Request-Id"] != "bad\x01id"


@pytest.mark.usefixtures("frozen_clock")
def test_the_guard_applies_and_a_refusal_is_the_route_s_answer(build: Callable[..., Flask]) -> None:
    app = build(api_keys=API_KEY)
    client = app.test_client()
    assert client.get("/recommendations?user_id=u1", headers={"X-API-Key": API_KEY}).status_code == 200
    ok, ok_route = both(app, "/recommendations?user_id=u1", headers={"X-API-Key": API_KEY})
    assert ok.headers["X-Cache"] == "HIT"
    same(ok, ok_route)
    for headers in ({}, {"X-API-Key": "wrong"}):
        refused, refused_route = both(app, "/recommendations?user_id=u1", headers=headers)
        assert refused.status_code == 401 and refused.get_json()["error"]["code"] == "unauthorized"
        same(refused, refused_route)


def test_behind_trusted_proxies_the_forwarded_address_is_checked(build: Callable[..., Flask]) -> None:
    app = build(allowed_cidrs="203.0.113.7/32", trusted_proxies="10.0.0.0/8")
    client = app.test_client()
    allowed = {"headers": {"X-Forwarded-For": "203.0.113.7"}, "environ_base": {"REMOTE_ADDR": "10.1.2.3"}}
    other = {"headers": {"X-Forwarded-For": "198.51.100.1"}, "environ_base": {"REMOTE_ADDR": "10.1.2.3"}}
    assert client.get("/recommendations?user_id=u1", **allowed).headers["X-Cache"] == "MISS"
    assert client.get("/recommendations?user_id=u1", **allowed).headers["X-Cache"] == "HIT"
    assert client.get("/recommendations?user_id=u1", **other).status_code == 403


def test_a_fallback_is_never_repeated_from_the_lane(build: Callable[..., Flask], fake: FakeRecommender) -> None:
    fake.error = UpstreamError("down", code="upstream_unavailable")
    client = build().test_client()
    for _ in range(2):
        answer = client.get("/recommendations?user_id=u1")
        assert answer.headers["X-Cache"] == "MISS" and answer.headers["Cache-Control"] == "no-store"
    assert len(fake.calls) == 2  # asked each time: a fallback is not kept


def test_the_lane_s_answer_is_counted_and_logged(build: Callable[..., Flask], capfd: pytest.CaptureFixture[str]) -> None:
    app = build()
    client = app.test_client()
    client.get("/recommendations?user_id=u1")
    registry = components(app).metrics.registry
    requests = registry.get_sample_value("recs_http_request_duration_seconds_count",
                                         {"route": "/recommendations", "status": "200"})
    client.get("/recommendations?user_id=u1", headers={"X-Request-Id": "lane-1"})
    assert registry.get_sample_value("recs_cache_results_total", {"result": "HIT"}) == 1
    assert registry.get_sample_value("recs_http_request_duration_seconds_count",
                                     {"route": "/recommendations", "status": "200"}) == requests + 1
    lines = request_lines(output(app, capfd).err)
    assert [(line["request_id"], line["route"], line["status"], line["cache"], line["source"])
            for line in lines][-1] == ("lane-1", "/recommendations", 200, "HIT", "fake")


def test_a_fault_in_the_lane_leaves_the_answer_to_the_route(build: Callable[..., Flask],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    app = build()
    client = app.test_client()
    client.get("/recommendations?user_id=u1")
    parts = components(app)

    def broken(*args: Any) -> None:
        raise KeyError("bug")

    lane(app).parts = type("Broken", (), {"query_parser": type("P", (), {"recent_query": broken})()})()
    answer = client.get("/recommendations?user_id=u1")
    assert answer.status_code == 200 and answer.headers["X-Cache"] == "HIT"  # the route's repeat
    assert "the repeat lane failed" in caplog.text
    assert parts.rendered is not None
