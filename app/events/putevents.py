"""Personalize Events' PutEvents: what one event is, and the sender that delivers them (10 a call, capped a second).

Both `POST /events` and `ingest-currents` build `Event`s and hand them to `PutEventsSender.send`, which groups
them by (user, session) into calls of at most 10, waits for the `PUT_EVENTS_MAX_TPS` cap, and raises
`SendError` saying whether the same events may be sent again later (`retryable`) or never will be accepted.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from app.commands.pacing import Pace

log = logging.getLogger(__name__)

MAX_EVENTS_PER_CALL = 10  # PutEvents' eventList holds 1 to 10 events
# Errors that say the events themselves are wrong: sending them again would fail again.
REJECTED = frozenset({"InvalidInputException", "SerializationException", "ValidationException",
                      "ResourceNotFoundException", "AccessDeniedException"})


class SendError(Exception):
    """PutEvents failed; `retryable` says whether the same events may succeed later (outage, throttling)."""

    def __init__(self, message: str, *, retryable: bool, code: str) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = code


@dataclass(frozen=True)
class Event:
    """One interaction, as PutEvents takes it (`sent_at` in epoch seconds; `properties` already JSON text)."""

    user_id: str
    session_id: str
    event_type: str
    sent_at: float
    event_id: str
    item_id: str | None = None
    event_value: float | None = None
    recommendation_id: str | None = None
    impression: tuple[str, ...] = field(default_factory=tuple)
    properties: str | None = None

    def to_api(self) -> dict[str, Any]:
        """Return the event as an entry of PutEvents' eventList."""
        entry: dict[str, Any] = {"eventId": self.event_id, "eventType": self.event_type, "sentAt": self.sent_at}
        if self.item_id is not None:
            entry["itemId"] = self.item_id
        if self.event_value is not None:
            entry["eventValue"] = self.event_value
        if self.recommendation_id is not None:
            entry["recommendationId"] = self.recommendation_id
        if self.impression:
            entry["impression"] = list(self.impression)
        if self.properties is not None:
            entry["properties"] = self.properties
        return entry


def derived_event_id(*parts: object) -> str:
    """Return an event id made from what the event says, so the same event sent twice has the same id."""
    digest = hashlib.sha256("\x1f".join("" if p is None else str(p) for p in parts).encode()).hexdigest()
    return f"d-{digest[:40]}"


def calls_of(events: Iterable[Event]) -> list[list[Event]]:
    """Group events into PutEvents calls: one (user, session) a call, at most 10 events, in arrival order."""
    groups: dict[tuple[str, str], list[Event]] = {}
    for event in events:
        groups.setdefault((event.user_id, event.session_id), []).append(event)
    return [group[start:start + MAX_EVENTS_PER_CALL]
            for group in groups.values() for start in range(0, len(group), MAX_EVENTS_PER_CALL)]


class PutEventsSender:
    """Send events with PutEvents under a tracking id, at most `max_tps` calls a second from this process.

    client: returns the boto3 personalize-events client (AwsClients.personalize_events; botocore's standard
    retries apply within each call). observe(outcome, events) is told of every call: "sent", "failed" or
    "rejected".
    """

    def __init__(self, client: Callable[[], Any], tracking_id: str, max_tps: float | None = None,
                 observe: Callable[[str, int], None] | None = None) -> None:
        self._client = client
        self.tracking_id = tracking_id
        self._pace = Pace(max_tps)
        self._observe = observe or (lambda outcome, count: None)

    def send(self, events: Sequence[Event]) -> None:
        """Send the events in as few calls as PutEvents allows; raise SendError at the first call that fails.

        Calls before the failing one have been sent; callers that keep events (the queue) send again only
        what is left, and a repeat is harmless anyway: Personalize ignores an eventId it has seen.
        """
        for call in calls_of(events):
            self.send_call(call)

    def send_call(self, call: Sequence[Event]) -> None:
        """Send one call's events (one user and session, at most 10)."""
        first = call[0]
        self._pace.wait()
        try:
            self._client().put_events(trackingId=self.tracking_id, userId=first.user_id,
                                      sessionId=first.session_id, eventList=[e.to_api() for e in call])
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "ClientError"))
            rejected = code in REJECTED
            self._observe("rejected" if rejected else "failed", len(call))
            raise SendError(f"PutEvents failed: {code}", retryable=not rejected, code=code) from exc
        except BotoCoreError as exc:  # connection refused, timeouts, no credentials: the upstream may come back
            self._observe("failed", len(call))
            raise SendError(f"PutEvents failed: {type(exc).__name__}", retryable=True,
                            code=type(exc).__name__) from exc
        self._observe("sent", len(call))

    def close(self) -> None:
        self._pace.__exit__(None, None, None)
