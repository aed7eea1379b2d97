"""POST /events: each PutEvents limit answered with a 400 naming the field, derived ids, and the way to the stand-in."""
from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from flask import Flask
from flask.testing import FlaskClient

from app.components import components
from app.events.body import derived_session_id, parse_events
from app.events.queue import RedisEventQueue
from tests.conftest import EVENTS_TRACKER
from tests.standin.personalize_events import EventsStandinHandle

TRACKING_ID = EVENTS_TRACKER


@pytest.fixture
def standin(events_standin: EventsStandinHandle) -> EventsStandinHandle:
    return events_standin


@pytest.fixture
def events_app(make_app: Callable[..., Flask], standin: EventsStandinHandle) -> Iterator[Flask]:
    app = make_app(personalize_tracking_id=TRACKING_ID, aws_region="us-east-1")
    yield app
    components(app).events.stop()


@pytest.fixture
def events_client(events_app: Flask) -> FlaskClient:
    return events_app.test_client()


def post(client: FlaskClient, body: Any, **headers: str) -> Any:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post("/events", data=data, content_type="application/json", headers=headers)


def arrived(standin: EventsStandinHandle, count: int, timeout: float = 10.0) -> dict[str, Any]:
    """Poll the stand-in until it accepted `count` events (the drainer sends in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        calls = standin.calls()
        if len(calls["events"]) >= count or time.monotonic() > deadline:
            return calls
        time.sleep(0.02)


def click(**extra: Any) -> dict[str, Any]:
    return {"event_type": "click", "item_id": "1000", **extra}


LONG = "x" * 257


@pytest.mark.parametrize(("body", "field"), [
    ({"events": [click()]}, "user_id"),
    ({"user_id": LONG, "events": [click()]}, "user_id"),
    ({"user_id": "u1", "session_id": LONG, "events": [click()]}, "session_id"),
    ({"user_id": "u1"}, "events"),
    ({"user_id": "u1", "events": []}, "events"),
    ({"user_id": "u1", "events": [click()] * 101}, "events"),
    ({"user_id": "u1", "events": [{"item_id": "1"}]}, "events[0].event_type"),
    ({"user_id": "u1", "events": [click(), click(item_id=LONG)]}, "events[1].item_id"),
    ({"user_id": "u1", "events": [click(event_id=LONG)]}, "events[0].event_id"),
    ({"user_id": "u1", "events": [click(recommendation_id="r" * 41)]}, "events[0].recommendation_id"),
    ({"user_id": "u1", "events": [click(impression=[str(n) for n in range(26)])]}, "events[0].impression"),
    ({"user_id": "u1", "events": [click(impression=["1", LONG])]}, "events[0].impression[1]"),
    ({"user_id": "u1", "events": [click(properties={"note": "n" * 1020})]}, "events[0].properties"),
    ({"user_id": "u1", "events": [click(properties=["not", "an", "object"])]}, "events[0].properties"),
    ({"user_id": "u1", "events": [click(sent_at="yesterday")]}, "events[0].sent_at"),
    ({"user_id": "u1", "events": [click(sent_at=time.time() * 1000)]}, "events[0].sent_at"),
    ({"user_id": "u1", "events": [click(event_value="12")]}, "events[0].event_value"),
    ({"user_id": "u1", "events": [click(itemId="1000")]}, "events[0].itemId"),
])
def test_each_limit_is_a_400_naming_the_field(events_client: FlaskClient, standin: EventsStandinHandle,
                                              body: dict[str, Any], field: str) -> None:
    response = post(events_client, body)
    assert response.status_code == 400, response.json
    error = response.json["error"]
    assert error["code"] == "invalid_parameter"
    assert field in error["errors"], error
    assert field in error["message"]
    assert standin.calls()["total"] == 0


def test_a_body_that_is_not_json_or_too_large(events_client: FlaskClient) -> None:
    response = post(events_client, b"user_id=u1")
    assert response.status_code == 400
    assert "body" in response.json["error"]["errors"]
    response = post(events_client, {"user_id": "u1", "events": [click(note="x" * 70_000)]})
    assert response.status_code == 413
    assert response.json["error"]["code"] == "payload_too_large"


def test_events_reach_personalize_with_every_field(events_client: FlaskClient, standin: EventsStandinHandle) -> None:
    body = {"user_id": "u1", "session_id": "s9", "events": [
        click(event_id="e1", recommendation_id="rid-1", impression=["1000", "1037"], sent_at="2026-12-01T10:00:00Z",
              properties={"discount": "yes"}),
        {"event_type": "purchase", "item_id": "1037", "event_value": 19.99, "event_id": "e2", "sent_at": 1764583200},
    ]}
    response = post(events_client, body)
    assert response.status_code == 202
    assert response.json == {"received": 2, "queued": 2, "deduplicated": 0}
    calls = arrived(standin, 2)
    assert calls["call_sizes"] == [2]
    first, second = calls["events"]
    assert first == {"eventId": "e1", "eventType": "click", "itemId": "1000", "recommendationId": "rid-1",
                     "impression": ["1000", "1037"], "sentAt": 1796119200, "properties": '{"discount":"yes"}',
                     "userId": "u1", "sessionId": "s9", "trackingId": TRACKING_ID}
    assert second["eventValue"] == 19.99 and second["eventType"] == "purchase"


def test_a_retried_request_is_sent_once(events_app: Flask, standin: EventsStandinHandle) -> None:
    client = events_app.test_client()
    body = {"user_id": "u1", "events": [click(), click(item_id="1037", sent_at=1764583200)]}
    assert post(client, body).json == {"received": 2, "queued": 2, "deduplicated": 0}
    arrived(standin, 2)
    assert post(client, body).json == {"received": 2, "queued": 0, "deduplicated": 2}
    queue = components(events_app).events.queue
    deadline = time.monotonic() + 5
    while queue.depth() and time.monotonic() < deadline:
        time.sleep(0.02)
    calls = standin.calls()
    assert sorted(calls["event_ids"].values()) == [1, 1]
    assert all(event_id.startswith("d-") for event_id in calls["event_ids"])


def test_derived_ids() -> None:
    now = 1764583200.0
    raw = orjson.dumps({"user_id": "u1", "events": [click()]})
    first, again = parse_events(raw, now)[0], parse_events(raw, now + 60)[0]
    assert first.session_id == again.session_id == derived_session_id("u1", now)
    assert first.event_id == again.event_id  # no sent_at given: a retry a minute later is the same event
    assert first.sent_at == now and again.sent_at == now + 60
    next_day = parse_events(raw, now + 86_400)[0]
    assert next_day.session_id != first.session_id and next_day.event_id != first.event_id
    timed = parse_events(orjson.dumps({"user_id": "u1", "events": [click(sent_at=1), click(sent_at=2)]}), now)
    assert timed[0].event_id != timed[1].event_id
    quoted = parse_events(orjson.dumps({"user_id": "u1", "events": [click(sent_at="1764583200")]}), now)[0]
    assert quoted.sent_at == 1764583200.0  # epoch seconds in a string, as Braze's Liquid writes them
    other_item = parse_events(orjson.dumps({"user_id": "u1", "events": [click(item_id="1037")]}), now)[0]
    assert other_item.event_id != first.event_id
    assert len(first.event_id) <= 256 and len(first.session_id) <= 256


def test_without_a_tracking_id_the_route_says_how_to_turn_it_on(client: FlaskClient) -> None:
    response = post(client, {"user_id": "u1", "events": [click()]})
    assert response.status_code == 503
    assert response.json["error"]["code"] == "events_off"
    assert "PERSONALIZE_TRACKING_ID" in response.json["error"]["message"]


def test_api_keys_guard_the_route(make_app: Callable[..., Flask], standin: EventsStandinHandle) -> None:
    key = "k" * 24
    app = make_app(personalize_tracking_id=TRACKING_ID, aws_region="us-east-1", api_keys=key)
    try:
        client = app.test_client()
        assert post(client, {"user_id": "u1", "events": [click()]}).status_code == 401
        assert post(client, {"user_id": "u1", "events": [click()]}, **{"X-API-Key": key}).status_code == 202
    finally:
        components(app).events.stop()


def test_the_queue_being_down_is_a_503(make_app: Callable[..., Flask], standin: EventsStandinHandle) -> None:
    with socket.socket() as sock:  # a port nothing listens on: the Redis holding the queue is down
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    queue = RedisEventQueue(redis.Redis(port=port, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)))
    app = make_app({"event_queue": queue}, personalize_tracking_id=TRACKING_ID, aws_region="us-east-1")
    try:
        response = post(app.test_client(), {"user_id": "u1", "events": [click()]})
        assert response.status_code == 503
        assert response.json["error"]["code"] == "events_queue_unavailable"
        assert response.headers["Retry-After"] == "1"
    finally:
        components(app).events.stop()
    assert standin.calls()["total"] == 0


def test_metrics_count_events_by_outcome(events_client: FlaskClient, standin: EventsStandinHandle) -> None:
    body = {"user_id": "u1", "events": [click(), click(item_id="1037")]}
    post(events_client, body)
    post(events_client, body)
    arrived(standin, 2)
    deadline = time.monotonic() + 5
    while True:
        text = events_client.get("/metrics").text
        if 'recs_events_total{outcome="sent",source="api"} 2.0' in text or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert 'recs_events_total{outcome="received",source="api"} 4.0' in text
    assert 'recs_events_total{outcome="queued",source="api"} 2.0' in text
    assert 'recs_events_total{outcome="deduplicated",source="api"} 2.0' in text
    assert 'recs_events_total{outcome="sent",source="api"} 2.0' in text
    assert "recs_events_queue_depth 0.0" in text


def test_event_requests_have_a_few_threads_at_most(make_app: Callable[..., Flask],
                                                   standin: EventsStandinHandle) -> None:
    """A quarter of WEB_THREADS take events at once; the rest stay for GET /recommendations."""
    app = make_app(personalize_tracking_id=TRACKING_ID, aws_region="us-east-1", web_threads=4)
    forwarder = components(app).events
    try:
        with forwarder.admitted():  # the one slot of four threads is taken
            response = post(app.test_client(), {"user_id": "u1", "events": [click()]})
            assert app.test_client().get("/recommendations?user_id=user123").status_code == 200
        assert response.status_code == 429
        assert response.json["error"]["code"] == "too_many_requests"
        assert response.headers["Retry-After"] == "1"
        assert post(app.test_client(), {"user_id": "u1", "events": [click()]}).status_code == 202
    finally:
        forwarder.stop()
