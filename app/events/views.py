"""POST /events: a user's interactions, checked, queued durably, and forwarded to Personalize with PutEvents."""
from __future__ import annotations

from flask import Blueprint, Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from app.components import components
from app.errors import ServiceError
from app.events.body import parse_events
from app.json import json_response

bp = Blueprint("events", __name__)
# As the admin API's: gunicorn's worker reads a body this short before a thread takes the request.
MAX_BODY_BYTES = 64 * 1024


@bp.post("/events")
def post_events() -> Response:
    """Queue the user's events for PutEvents; 202 once they are sent or durably queued."""
    parts = components()
    if (guard := parts.auth_guard) is not None:
        guard(request)
    forwarder = parts.events
    if forwarder is None:
        raise ServiceError("POST /events is off: set PERSONALIZE_TRACKING_ID to your Personalize event tracker's "
                           "tracking id.", code="events_off", status=503)
    events = parse_events(_raw_body())
    with forwarder.admitted():
        queued, deduplicated = forwarder.accept(events)
    return json_response({"received": len(events), "queued": queued, "deduplicated": deduplicated}, 202)


def _raw_body() -> bytes:
    """Return the request's body; raise 413 when it is over MAX_BODY_BYTES."""
    request.max_content_length = MAX_BODY_BYTES + 1  # one over tells a body too large from one just at it
    try:
        raw = request.get_data()
    except RequestEntityTooLarge:
        raw = None
    if raw is None or len(raw) > MAX_BODY_BYTES:
        raise ServiceError(f"The request body is larger than {MAX_BODY_BYTES} bytes: send fewer events a request.",
                           code="payload_too_large", status=413)
    return raw
