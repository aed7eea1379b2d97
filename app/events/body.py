"""The body of POST /events, checked against PutEvents' own limits so what is queued is never refused later.

A request carries one user's events (up to MAX_EVENTS_PER_REQUEST; the sender splits them into PutEvents
calls of 10). Missing ids are derived from what the event says, so a retried request yields the same ids and
is not counted twice:

- session_id: one session per user and UTC day (`s-` and a hash of the two);
- event_id: a hash of the user, session, type, item, value, recommendation id, impression, properties and,
  when given, sent_at (app.events.putevents.derived_event_id). Two identical events of one session without
  sent_at or event_id are therefore one event: give either to tell them apart.
"""
from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import orjson
from marshmallow import RAISE, Schema, ValidationError, validate
from marshmallow import fields as ma

from app.errors import InvalidParameterError
from app.events.putevents import Event, derived_event_id
from app.recommendations.query import ID_ERROR, ID_PATTERN, MAX_ID_LENGTH

MAX_EVENTS_PER_REQUEST = 100  # ten PutEvents calls
MAX_PROPERTIES_CHARACTERS = 1024  # PutEvents: properties is a JSON string of at most 1,024 characters
MAX_IMPRESSION = 25
MAX_RECOMMENDATION_ID = 40
EPOCH_TEXT = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")
MAX_FUTURE_SECONDS = 86_400  # a sent_at further ahead is a clock or unit mistake (milliseconds for seconds)


def _id(description: str, maximum: int = MAX_ID_LENGTH, **kwargs: Any) -> ma.String:
    return ma.String(validate=[validate.Length(min=1, max=maximum), validate.Regexp(ID_PATTERN, error=ID_ERROR)],
                     metadata={"description": description}, **kwargs)


class SentAt(ma.Field):
    """When the event happened: ISO 8601 (a time without zone is UTC) or epoch seconds; returns epoch seconds."""

    default_error_messages = {"invalid": "Give an ISO 8601 time (2026-12-01T10:00:00Z) or epoch seconds.",
                              "range": "The time must be after 1970 and at most a day ahead of now."}

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str) and EPOCH_TEXT.fullmatch(value.strip()):
            seconds = float(value)  # a Braze webhook's {{ 'now' | date: '%s' }} arrives quoted
        elif isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value.strip())
            except ValueError:
                raise self.make_error("invalid") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            seconds = moment.timestamp()
        else:
            raise self.make_error("invalid")
        if not math.isfinite(seconds) or not 0 < seconds <= time.time() + MAX_FUTURE_SECONDS:
            raise self.make_error("range")
        return seconds


class Number(ma.Float):
    """A JSON number, not a string holding one (a template's "12" is a mistake to show, not to guess at)."""

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class EventSchema(Schema):
    """One interaction, as PutEvents' eventList entry takes it."""

    class Meta:
        unknown = RAISE  # a misspelt field (itemId for item_id) would otherwise be dropped without a word

    event_type = _id("What happened, as your interactions dataset names it (click, purchase, ...).", required=True)
    item_id = _id("The item the event is about.")
    event_value = Number(allow_nan=False, metadata={"description": "A number, e.g. the price of a purchase."})
    sent_at = SentAt(metadata={"description": "When it happened: ISO 8601 or epoch seconds; default now.",
                               "oneOf": [{"type": "string", "format": "date-time"}, {"type": "number"}]})
    event_id = _id("Your id of the event; derived from the event when missing, so a retry is not counted twice.")
    recommendation_id = _id("The recommendation the item came from (a tracked link's recs_rid).",
                            MAX_RECOMMENDATION_ID)
    impression = ma.List(_id("An item id shown."), validate=validate.Length(min=1, max=MAX_IMPRESSION),
                         metadata={"description": f"The items shown with it, at most {MAX_IMPRESSION}."})
    properties = ma.Dict(keys=ma.String(), metadata={
        "description": f"Event fields of your interactions schema; at most {MAX_PROPERTIES_CHARACTERS} characters "
                       "as JSON."})


class EventsBodySchema(Schema):
    """POST /events: {"user_id", "session_id"?, "events": [...]}."""

    class Meta:
        unknown = RAISE

    user_id = _id("The user id Personalize knows (the one GET /recommendations is asked for).", required=True)
    session_id = _id("The user's session; one per user and UTC day when missing.")
    events = ma.List(ma.Nested(EventSchema), required=True,
                     validate=validate.Length(min=1, max=MAX_EVENTS_PER_REQUEST),
                     metadata={"description": f"1 to {MAX_EVENTS_PER_REQUEST} events, sent as PutEvents calls "
                                              "of 10."})


SCHEMA = EventsBodySchema()


def parse_events(raw: bytes, now: float | None = None) -> list[Event]:
    """Return the body's events, ids derived where missing; raise InvalidParameterError naming each bad field."""
    try:
        data = orjson.loads(raw)  # orjson refuses nesting deeper than 1024; the stdlib parser overflows the stack
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise _invalid({"body": ["Send a JSON object: {\"user_id\": ..., \"events\": [...]}."]})
    try:
        body = SCHEMA.load(data)
    except ValidationError as exc:
        raise _invalid(dict(flatten(exc.normalized_messages()))) from None
    now = time.time() if now is None else now
    user_id = body["user_id"]
    session_id = body.get("session_id") or derived_session_id(user_id, now)
    events, errors = [], {}
    for index, given in enumerate(body["events"]):
        properties = None
        if "properties" in given:
            properties = orjson.dumps(given["properties"]).decode()
            if len(properties) > MAX_PROPERTIES_CHARACTERS:
                errors[f"events[{index}].properties"] = [f"At most {MAX_PROPERTIES_CHARACTERS} characters as JSON "
                                                         f"(this is {len(properties)})."]
        impression = tuple(given.get("impression", ()))
        parts = (user_id, session_id, given["event_type"], given.get("item_id"), given.get("event_value"),
                 given.get("recommendation_id"), "\x1e".join(impression), properties, given.get("sent_at"))
        events.append(Event(user_id=user_id, session_id=session_id, event_type=given["event_type"],
                            sent_at=given.get("sent_at", now),
                            event_id=given.get("event_id") or derived_event_id(*parts),
                            item_id=given.get("item_id"), event_value=given.get("event_value"),
                            recommendation_id=given.get("recommendation_id"), impression=impression,
                            properties=properties))
    if errors:
        raise _invalid(errors)
    return events


def derived_session_id(user_id: str, now: float) -> str:
    """Return the session of a request without one: the user's UTC day."""
    day = datetime.fromtimestamp(now, timezone.utc).date().isoformat()
    return "s-" + hashlib.sha256(f"{user_id}\x1f{day}".encode("utf-8", "surrogatepass")).hexdigest()[:40]


def flatten(messages: Mapping[Any, Any], prefix: str = "") -> list[tuple[str, list[str]]]:
    """Turn marshmallow's nested messages into (field path, problems): events[2].impression, user_id, ..."""
    flat: list[tuple[str, list[str]]] = []
    for key, value in messages.items():
        name = f"{prefix}[{key}]" if isinstance(key, int) else (f"{prefix}.{key}" if prefix else str(key))
        if isinstance(value, Mapping):
            flat.extend(flatten(value, name))
        else:
            flat.append((name, [str(v) for v in value] if isinstance(value, list) else [str(value)]))
    return flat


def _invalid(errors: dict[str, list[str]]) -> InvalidParameterError:
    described = "; ".join(f"{name}: {' '.join(problems)}" for name, problems in sorted(errors.items()))
    return InvalidParameterError(f"Invalid events. {described}", errors=errors)
