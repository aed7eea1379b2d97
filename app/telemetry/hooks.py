"""Each request's request id, metrics and log line, recorded in one place after the response is built."""
from __future__ import annotations

import time

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
        status = response.status_code
        result = getattr(ctx, "result", None)  # the view's Result, when the service answered
        cache = source = reason = None
        if result is not None:
            cache, source, reason = result.cache, result.source, result.fallback_reason
        metrics.observe_request(route, status, seconds, cache, reason, source)
        if request_log.enabled:
            fields = {"request_id": rid, "method": req.method, "route": route, "status": status,
                      "ms": round(seconds * 1000, 2), "cache": cache, "source": source, "fallback_reason": reason}
            # The parsed query's user id: reading request.args again would parse the query string again.
            if (user := request_log.user_hash(getattr(ctx, "user_id", None))) is not None:
                fields["user"] = user
            request_log.write(fields)
        return response
