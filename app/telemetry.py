"""Each request's request id, metrics and log line, recorded in one place after the response is built."""
from __future__ import annotations

import time

from flask import Flask, Response, g, request

from .logs import RequestLog, request_id
from .metrics import Metrics


def init_app(app: Flask, metrics: Metrics, request_log: RequestLog) -> None:
    """Give every request an id (echoed in X-Request-Id) and record its metrics and its log line."""

    @app.before_request
    def start() -> None:
        g.started = time.perf_counter()
        g.request_id = request_id(request.headers.get("X-Request-Id"))

    @app.after_request
    def record(response: Response) -> Response:
        seconds = time.perf_counter() - g.get("started", time.perf_counter())
        rid = g.get("request_id") or request_id(None)
        response.headers["X-Request-Id"] = rid
        rule = request.url_rule
        route = rule.rule if rule is not None else "unmatched"  # never the raw path: it is unbounded
        status = response.status_code
        result = g.get("result")  # the view's Result, when the service answered
        cache = source = reason = None
        if result is not None:
            cache, source, reason = result.cache, result.source, result.fallback_reason
        metrics.observe_request(route, status, seconds, cache, reason, source)
        if request_log.enabled:
            fields = {"request_id": rid, "method": request.method, "route": route, "status": status,
                      "ms": round(seconds * 1000, 2), "cache": cache, "source": source, "fallback_reason": reason}
            if (user := request_log.user_hash(request.args.get("user_id"))) is not None:
                fields["user"] = user
            request_log.write(fields)
        return response
