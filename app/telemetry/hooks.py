"""Each request's request id, metrics and log line, recorded in one place after the response is built."""
from __future__ import annotations

import time
from typing import Any

from flask import Flask, Response, g, request

from app.telemetry.logs import RequestLog, request_id
from app.telemetry.metrics import Metrics


def init_app(app: Flask, metrics: Metrics, request_log: RequestLog) -> None:
    """Give every request an id (echoed in X-Request-Id) and record its metrics and its log line."""

    @app.before_request
    def start() -> None:
        ctx = g._get_current_object()  # type: ignore[attr-defined]
        ctx.started = time.perf_counter()
        ctx.request_id = request_id(request.environ.get("HTTP_X_REQUEST_ID"))  # app logs meanwhile carry it too

    @app.after_request
    def record(response: Response) -> Response:
        # The proxies resolved once: each access through flask.request or flask.g costs a context lookup.
        # _get_current_object() is Flask's documented way to reach the object behind a proxy (Flask's docs,
        # "Notes On Proxies"), despite its underscore.
        req, ctx = request._get_current_object(), g._get_current_object()  # type: ignore[attr-defined]
        seconds = time.perf_counter() - getattr(ctx, "started", time.perf_counter())
        rid = getattr(ctx, "request_id", None) or request_id(req.environ.get("HTTP_X_REQUEST_ID"))
        response.headers.add("X-Request-Id", rid)
        rule = req.url_rule
        route = rule.rule if rule is not None else "unmatched"  # never the raw path: it is unbounded
        record_request(metrics, request_log, rid, req.method, route, response.status_code, seconds,
                       getattr(ctx, "result", None),  # the view's Result, when the service answered
                       getattr(ctx, "user_id", None))  # the parsed query's: request.args would parse it again
        return response


def record_request(metrics: Metrics, request_log: RequestLog, rid: str, method: str, route: str, status: int,
                   seconds: float, result: Any, user_id: str | None) -> None:
    """Record a request's metrics and write its log line (result: the service's Result, when it answered)."""
    cache = source = reason = None
    if result is not None:
        cache, source, reason = result.cache, result.source, result.fallback_reason
    metrics.observe_request(route, status, seconds, cache, reason, source)
    if request_log.enabled:
        fields = {"request_id": rid, "method": method, "route": route, "status": status,
                  "ms": round(seconds * 1000, 2), "cache": cache, "source": source, "fallback_reason": reason}
        if (user := request_log.user_hash(user_id)) is not None:
            fields["user"] = user
        request_log.write(fields)
