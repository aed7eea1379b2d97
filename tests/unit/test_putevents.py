"""PutEventsSender: calls of at most 10 events per (user, session), the wire format, and which failures may retry."""
from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from app.aws import AwsClients
from app.events.putevents import Event, PutEventsSender, SendError, calls_of, derived_event_id
from tests.standin.personalize_events import start_events_standin


def event(n: int, user: str = "u1", session: str = "s1", **extra: object) -> Event:
    return Event(user_id=user, session_id=session, event_type="click", sent_at=1_700_000_000 + n,
                 event_id=f"e{n}", **extra)  # type: ignore[arg-type]


def test_calls_group_by_user_and_session_in_tens() -> None:
    events = [event(n) for n in range(23)] + [event(100, user="u2")]
    calls = calls_of(events)
    assert [len(c) for c in calls] == [10, 10, 3, 1]
    assert [e.event_id for e in calls[0]] == [f"e{n}" for n in range(10)]
    assert {e.user_id for e in calls[3]} == {"u2"}


def test_derived_event_id_is_stable_and_distinguishes_fields() -> None:
    assert derived_event_id("u1", "click", "i1", 5) == derived_event_id("u1", "click", "i1", 5)
    assert derived_event_id("u1", "click", "i1", 5) != derived_event_id("u1", "click", "i2", 5)
    assert len(derived_event_id("x")) <= 256


def test_events_reach_a_rest_json_standin_through_boto3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    with start_events_standin(["tid"]) as standin:
        monkeypatch.setenv("AWS_ENDPOINT_URL_PERSONALIZE_EVENTS", standin.url)
        outcomes: list[tuple[str, int]] = []
        sender = PutEventsSender(AwsClients("us-east-1").personalize_events, "tid",
                                 observe=lambda outcome, count: outcomes.append((outcome, count)))
        sender.send([event(1, item_id="i1", event_value=2.5, recommendation_id="rid-1", impression=("i1", "i2"),
                           properties='{"discount": "yes"}'), event(2)])
        calls = standin.calls()
    assert calls["call_sizes"] == [2]
    first = calls["events"][0]
    assert first == {"eventId": "e1", "eventType": "click", "sentAt": 1_700_000_001, "itemId": "i1",
                     "eventValue": 2.5, "recommendationId": "rid-1", "impression": ["i1", "i2"],
                     "properties": '{"discount": "yes"}', "userId": "u1", "sessionId": "s1", "trackingId": "tid"}
    assert outcomes == [("sent", 2)]


@pytest.mark.parametrize(("code", "retryable"), [("InvalidInputException", False),
                                                 ("ThrottlingException", True),
                                                 ("InternalServerError", True)])
def test_failures_say_whether_to_retry(code: str, retryable: bool) -> None:
    client = boto3.client("personalize-events", region_name="us-east-1", aws_access_key_id="a",
                          aws_secret_access_key="b")
    outcomes: list[tuple[str, int]] = []
    sender = PutEventsSender(lambda: client, "tid", observe=lambda outcome, count: outcomes.append((outcome, count)))
    with Stubber(client) as stub:
        stub.add_client_error("put_events", service_error_code=code, http_status_code=400)
        with pytest.raises(SendError) as caught:
            sender.send([event(1)])
    assert caught.value.retryable is retryable
    assert caught.value.code == code
    assert outcomes == [("failed" if retryable else "rejected", 1)]
