"""A repeat of the same query within CACHE_LOCAL_SECONDS is answered from the bytes rendered the first time."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.components import components
from app.errors import UpstreamError
from app.recommendations import presentation
from tests.conftest import FakeRecommender

HEADERS = ("X-Recommendations-Source", "X-Recommendation-Id", "Content-Type")


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record every body the presenter renders."""
    made: list[Any] = []
    render = presentation.Presenter.render

    def counted(self: presentation.Presenter, result: Any, query: Any) -> bytes:
        made.append(query)
        return render(self, result, query)

    monkeypatch.setattr(presentation.Presenter, "render", counted)
    return made


@pytest.fixture
def fake() -> FakeRecommender:
    return FakeRecommender({"u1": ["1000", "1037", "1074"], "u2": ["1111", "1000"]})


@pytest.fixture
def http(make_app: Callable[..., Flask], fake: FakeRecommender) -> FlaskClient:
    return make_app({"recommender": fake}, cache_local_seconds=5, cache_local_items=100).test_client()


def test_a_repeat_is_answered_from_the_first_rendering_as_a_hit(http: FlaskClient, fake: FakeRecommender,
                                                                 renders: list[Any]) -> None:
    first = http.get("/recommendations?user_id=u1&num_results=3")
    repeat = http.get("/recommendations?num_results=3&user_id=u1")  # the same query, its parameters reordered
    assert len(renders) == 1 and len(fake.calls) == 1
    assert repeat.data == first.data and [i["id"] for i in repeat.get_json()] == ["1000", "1037", "1074"]
    assert (first.headers["X-Cache"], repeat.headers["X-Cache"]) == ("MISS", "HIT")
    assert all(repeat.headers[name] == first.headers[name] for name in HEADERS)
    assert repeat.headers["X-Recommendations-Source"] == "fake"
    max_age = int(repeat.headers["Cache-Control"].removeprefix("private, max-age="))
    assert 0 < max_age <= int(first.headers["Cache-Control"].removeprefix("private, max-age="))


def test_other_queries_are_rendered_for_themselves(http: FlaskClient, renders: list[Any]) -> None:
    bodies = {http.get(f"/recommendations?{q}").data for q in ("user_id=u1", "user_id=u2", "user_id=u1&num_results=2",
                                                                 "user_id=u1&format=object")}
    assert len(renders) == 4 and len(bodies) == 4


def test_a_fallback_is_never_repeated(http: FlaskClient, fake: FakeRecommender, renders: list[Any]) -> None:
    fake.error = UpstreamError("down", code="upstream_error")
    for _ in range(2):
        response = http.get("/recommendations?user_id=u1")
        assert response.headers["X-Fallback-Reason"] == "upstream_error"
        assert response.headers["Cache-Control"] == "no-store"
    assert len(renders) == 2 and len(fake.calls) == 2


def test_the_bytes_expire_after_cache_local_seconds(http: FlaskClient, renders: list[Any],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    http.get("/recommendations?user_id=u1")
    now = presentation.time.time()
    monkeypatch.setattr(presentation.time, "time", lambda: now + 5.5)
    assert http.get("/recommendations?user_id=u1").headers["X-Cache"] == "HIT"  # the answer cache's, not ours
    assert len(renders) == 2


def test_a_new_catalog_is_not_served_old_bytes(http: FlaskClient, renders: list[Any],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    http.get("/recommendations?user_id=u1")
    service = components(http.application).service
    reloaded = service.catalog.get().__class__.__new__(service.catalog.get().__class__)
    reloaded.__dict__.update(service.catalog.get().__dict__)  # a reload: a new Catalog object
    monkeypatch.setattr(service, "current_catalog", lambda: reloaded)
    http.get("/recommendations?user_id=u1")
    assert len(renders) == 2


def test_check_send_probes_neither_read_nor_keep_bytes(http: FlaskClient, fake: FakeRecommender,
                                                       renders: list[Any]) -> None:
    from app.recommendations.views import answer

    parts = components(http.application)
    query = parts.query_parser.parse(parts.query_parser.request_args(_request("user_id=u1")))
    http.get("/recommendations?user_id=u1")
    with http.application.app_context():
        answer(parts, query, time.monotonic(), probe=True)
    assert len(renders) == 2 and len(fake.calls) == 2


def test_off_when_cache_local_seconds_is_zero(make_app: Callable[..., Flask], fake: FakeRecommender,
                                              renders: list[Any]) -> None:
    http = make_app({"recommender": fake}, cache_local_seconds=0).test_client()
    http.get("/recommendations?user_id=u1"), http.get("/recommendations?user_id=u1")
    assert len(renders) == 2


def _request(query_string: str) -> Any:
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request

    return Request(EnvironBuilder(path="/recommendations", query_string=query_string).get_environ())
