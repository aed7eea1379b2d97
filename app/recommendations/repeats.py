"""A repeat of a recent GET /recommendations, answered from the bytes rendered for it before Flask is asked.

Braze renders one recipient's message several times within seconds (HTML, plain text, AMP, retries), each
with the same URL. The route keeps the body of a fresh answer for a few seconds (RenderedAnswers) and the
Query of a valid query string (QueryParser); with both, what is left of a repeat is Flask's own work: a
request context, routing, a Response object, the hooks. RepeatLane answers such a repeat as WSGI middleware
instead, with what the route would send: the same guard (API keys, ALLOWED_CIDRS), the same headers
(views.answer_headers), an X-Request-Id, and the same metrics and log line (telemetry/hooks.record_request).
tests/unit/test_repeat_lane.py compares its answers with the route's, header by header.

Anything else goes on to Flask: another path or method, a query string not seen lately (or not valid), an
answer no longer kept, a caller the guard refuses (the route words the error), a stored configuration's query.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Request

from app.errors import ServiceError
from app.recommendations.views import answer_headers
from app.telemetry.hooks import record_request
from app.telemetry.logs import Occasional, held_back, request_id

if TYPE_CHECKING:
    from app.components import Components

log = logging.getLogger(__name__)

PATH = "/recommendations"
ROUTE = "/recommendations"  # the route's rule, as its metrics and log lines name it


class RepeatLane:
    """WSGI middleware in front of the app: a repeat answered from its rendered bytes, all else passed on."""

    def __init__(self, app: Any, parts: Components) -> None:
        self.app = app
        self.parts = parts
        self._failures = Occasional()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == PATH and environ.get("REQUEST_METHOD") == "GET":
            started = time.perf_counter()
            try:
                repeat = self._repeat(environ)
            except Exception:  # a bug: the route answers instead; logged once a minute, with its traceback
                if (count := self._failures.due("repeat")) is not None:
                    log.exception("the repeat lane failed; the route answered instead%s", held_back(count))
                repeat = None
            if repeat is not None:
                return self._answer(environ, start_response, started, *repeat)
        return self.app(environ, start_response)

    def _repeat(self, environ: dict[str, Any]) -> tuple[Any, Any, bytes] | None:
        """Return the query, its result and body when the request repeats a recent answer the caller may have."""
        parts = self.parts
        query = parts.query_parser.recent_query(environ.get("QUERY_STRING", "").encode("latin-1"))
        if query is None or query.recommender is not None:
            return None
        if parts.auth_guard is not None:
            try:
                parts.auth_guard(Request(environ))
            except ServiceError:
                return None
        repeat = parts.rendered.get(query, parts.service.current_catalog())
        if repeat is None:
            return None
        result, body = repeat
        return query, result, body

    def _answer(self, environ: dict[str, Any], start_response: Any, started: float, query: Any, result: Any,
                body: bytes) -> Iterable[bytes]:
        rid = request_id(environ.get("HTTP_X_REQUEST_ID"))
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                  *answer_headers(result, query), ("X-Request-Id", rid)])
        parts = self.parts
        record_request(parts.metrics, parts.request_log, rid, "GET", ROUTE, 200, time.perf_counter() - started,
                       result, query.user_id)
        return [body]
