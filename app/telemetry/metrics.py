"""Prometheus metrics at GET /metrics: what the on-call engineer watches during a send, summed over workers.

Under gunicorn, gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before anything imports prometheus_client,
so every worker writes its values to files there and /metrics adds them up, whichever worker answers.
Without it (flask run, unit tests) the app's own registry is served as it is.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sized
from typing import Any

from flask import Blueprint, Response, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from app.components import components

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
# Braze waits 2 s and REQUEST_BUDGET_MS is 800 ms by default: buckets resolve what matters below both.
SECONDS_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.8, 1.0, 2.0, 5.0)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
CACHE_RESULTS = ("HIT", "MISS", "STALE")


class Metrics:
    """Every metric the service records, in a registry of the app's own (so tests can build many apps)."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROC_DIR))
        self.registry = CollectorRegistry()
        r = self.registry
        # Its _count is the request count: one histogram observation per request instead of two operations.
        self.requests = Histogram("recs_http_request_duration_seconds", "HTTP requests by route template and status",
                                  ["route", "status"], buckets=SECONDS_BUCKETS, registry=r)
        self.cache = Counter("recs_cache_results", "Answers by cache result: HIT, MISS or STALE", ["result"],
                             registry=r)
        self.fallbacks = Counter("recs_fallbacks", "Answers not from the primary source, by reason and source",
                                 ["reason", "source"], registry=r)
        self.personalize = Histogram("recs_personalize_call_duration_seconds",
                                     "Personalize GetRecommendations calls (retries included) by outcome",
                                     ["outcome"], buckets=SECONDS_BUCKETS, registry=r)
        self.personalize_errors = Counter("recs_personalize_errors", "Failed Personalize calls by error code",
                                          ["code"], registry=r)
        # Each worker holds its own copy of a file: the live workers' most recent value is the one to show.
        self.source_items = Gauge("recs_source_items", "Entries in the last loaded file (catalog items, ...)",
                                  ["source"], multiprocess_mode="livemostrecent", registry=r)
        self.source_loaded = Gauge("recs_source_loaded_timestamp_seconds", "Unix time of the last successful load",
                                   ["source"], multiprocess_mode="livemax", registry=r)
        self.source_refused = Counter("recs_source_reload_refused",
                                      "Reloads refused, the last good version kept, by file and reason",
                                      ["source", "reason"], registry=r)
        # The worst worker counts: one worker whose breaker is open is serving fallbacks.
        self.breaker = Gauge("recs_circuit_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open",
                             multiprocess_mode="livemax", registry=r)
        self.answer_cache_errors = Counter("recs_answer_cache_errors",
                                           "Failed answer cache operations: read, write, malformed (an entry that "
                                           "is not an answer this service wrote)", ["operation"], registry=r)
        # Any worker whose cache fails counts: its requests all go to the source.
        self.answer_cache_failing = Gauge("recs_answer_cache_failing",
                                          "1 while the answer cache (Redis or CACHE_DIR) fails, else 0",
                                          multiprocess_mode="livemax", registry=r)
        # Events back to Personalize (POST /events, ingest-currents), by source and outcome.
        self.events = Counter("recs_events", "Events by source (api, currents) and outcome: received, queued, "
                              "deduplicated, sent, failed (kept to retry), rejected (refused by Personalize), "
                              "skipped", ["source", "outcome"], registry=r)
        self.events_skipped = Counter("recs_events_skipped", "Events not sent on purpose, by source and reason",
                                      ["source", "reason"], registry=r)
        # Every worker reads the same shared queue: the most recent reading is the depth.
        self.events_queued = Gauge("recs_events_queue_depth", "Events waiting in the queue for PutEvents",
                                   multiprocess_mode="livemostrecent", registry=r)
        # Label children looked up once, so a request costs a dict lookup per metric, not a labels() call.
        self._request_children: dict[tuple[str, int], Any] = {}
        self._cache_children = {result: self.cache.labels(result) for result in CACHE_RESULTS}
        self._personalize_ok = self.personalize.labels("ok")
        self._personalize_error = self.personalize.labels("error")

    def observe_request(self, route: str, status: int, seconds: float, cache: str | None,
                        fallback_reason: str | None, source: str | None) -> None:
        """Record one request: its latency by route and status and, for an answer, where it came from."""
        key = (route, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(route, str(status))
        child.observe(seconds)
        if cache is not None:
            self._cache_children[cache].inc()
        if fallback_reason is not None:
            self.fallbacks.labels(fallback_reason, source or "").inc()

    def observe_personalize(self, seconds: float, error_code: str | None) -> None:
        """Record one Personalize call: its latency and, when it failed, the service's code for the error."""
        if error_code is None:
            self._personalize_ok.observe(seconds)
            return
        self._personalize_error.observe(seconds)
        self.personalize_errors.labels(error_code).inc()

    def event_counter(self, source: str) -> Callable[[str, int], None]:
        """Return a callback that counts events of a source by outcome (the sender's and the queue's)."""

        def observe(outcome: str, count: int) -> None:
            if count:
                self.events.labels(source, outcome).inc(count)

        return observe

    def events_skipped_by(self, source: str, reason: str, count: int = 1) -> None:
        """Count events of a source not sent on purpose (a bot click, an unmapped event type, ...)."""
        self.events_skipped.labels(source, reason).inc(count)
        self.events.labels(source, "skipped").inc(count)

    def breaker_changed(self, state: str) -> None:
        """Record the circuit breaker's state (closed, half_open or open)."""
        self.breaker.set(BREAKER_STATES.get(state, BREAKER_STATES["open"]))

    def answer_cache_error(self, operation: str) -> None:
        """Count one failed answer cache operation (read, write) or malformed entry."""
        self.answer_cache_errors.labels(operation).inc()

    def answer_cache_changed(self, failing: bool) -> None:
        """Record whether the answer cache fails (1) or works (0)."""
        self.answer_cache_failing.set(int(failing))

    def loader(self, what: str) -> Callable[[Sized], None]:
        """Return a callback that records a successful load of the named file (catalog, batch, popular items)."""
        source = what.replace(" ", "_")

        def loaded(value: Sized) -> None:
            self.source_items.labels(source).set(len(value))
            self.source_loaded.labels(source).set(time.time())

        return loaded

    def refuser(self, what: str) -> Callable[[str], None]:
        """Return a callback that counts a refused reload of the named file, by reason (cut_off, shrink)."""
        source = what.replace(" ", "_")

        def refused(reason: str) -> None:
            self.source_refused.labels(source, reason).inc()

        return refused

    def render(self) -> bytes:
        """Return the text exposition: every worker's values added up under gunicorn, else this process's."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)


bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    """Return the metrics in Prometheus's text format; API_KEYS, when set, protect it too."""
    parts = components()
    if (guard := parts.metrics_guard) is not None:
        guard(request)
    return Response(parts.metrics.render(), content_type=CONTENT_TYPE_LATEST)
