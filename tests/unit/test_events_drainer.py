"""The drainer under botocore's Stubber: what Personalize refuses for good is dropped, anything else stays queued."""
from __future__ import annotations

from pathlib import Path

import pytest

from app.events.forwarder import EventForwarder
from app.events.putevents import Event, PutEventsSender
from app.events.queue import SQLiteEventQueue
from tests.conftest import stubbed


def events(count: int) -> list[Event]:
    return [Event(user_id="u1", session_id="s1", event_type="click", sent_at=1_700_000_000 + n, event_id=f"e{n}")
            for n in range(count)]


def forwarder(tmp_path: Path, client: object, outcomes: list[tuple[str, int]]) -> EventForwarder:
    observe = lambda outcome, count: outcomes.append((outcome, count))  # noqa: E731
    sender = PutEventsSender(lambda: client, "tid", observe=observe)
    return EventForwarder(SQLiteEventQueue(str(tmp_path / "events.sqlite3")), sender, max_requests=1,
                          observe=observe)


@pytest.mark.parametrize(("code", "kept"), [("InvalidInputException", False), ("ThrottlingException", True),
                                            ("InternalServerError", True), ("ResourceNotFoundException", True),
                                            ("AccessDeniedException", True)])
def test_a_failed_call_keeps_its_events_unless_they_are_invalid(dummy_aws: None, tmp_path: Path, code: str,
                                                                kept: bool) -> None:
    outcomes: list[tuple[str, int]] = []
    with stubbed("personalize-events") as (client, stub):
        stub.add_client_error("put_events", service_error_code=code, http_status_code=400)
        if not kept:
            stub.add_response("put_events", {})  # the round goes on with the next call
        drainer = forwarder(tmp_path, client, outcomes)
        drainer.queue.put(events(12))  # two calls: 10 and 2
        assert drainer.drain_once() is (not kept)
    if kept:
        assert drainer.queue.depth() == 12
        assert drainer.queue.claim(100, 30) == []  # due again after RETRY_SECONDS, not at once
        assert outcomes[-1] in (("failed", 10), ("rejected", 10))
    else:
        assert drainer.queue.depth() == 0
        assert outcomes[-2:] == [("rejected", 10), ("sent", 2)]


def test_sent_events_leave_the_queue_in_calls_of_ten(dummy_aws: None, tmp_path: Path) -> None:
    outcomes: list[tuple[str, int]] = []
    sent = events(25)
    with stubbed("personalize-events") as (client, stub):
        for start in (0, 10, 20):
            stub.add_response("put_events", {}, {"trackingId": "tid", "userId": "u1", "sessionId": "s1",
                                                 "eventList": [e.to_api() for e in sent[start:start + 10]]})
        drainer = forwarder(tmp_path, client, outcomes)
        drainer.queue.put(sent)
        assert drainer.drain_once() is True
    assert outcomes[-3:] == [("sent", 10), ("sent", 10), ("sent", 5)]
    assert drainer.queue.depth() == 0
