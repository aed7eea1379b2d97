"""HTTP routes: GET /recommendations and the health checks."""
from __future__ import annotations

import time

from flask import Blueprint, Response, g, request

from app.components import Components, components
from app.errors import ServiceError
from app.json import json_response
from app.recommendations.query import Query
from app.recommendations.service import Result
from app.sources.recommender import Options

bp = Blueprint("recommendations", __name__)
SOURCES_WITHOUT_OPTIONS = ("batch", "fallback")  # a batch file or the popular items: no filter, no context


@bp.get("/recommendations")
def recommendations() -> Response:
    """Return the user's recommended catalog items as a JSON array (or object), in rank order."""
    started = time.monotonic()
    parts = components()
    if (guard := parts.auth_guard) is not None:
        guard(request)
    query = parts.query_parser.parse_request(request)
    result, response = answer(parts, query, started)
    g.result, g.user_id = result, query.user_id  # for the request's metrics and log line (telemetry.py)
    return response


def answer(parts: Components, query: Query, started: float, probe: bool = False) -> tuple[Result, Response]:
    """Answer a validated query as GET /recommendations does: the Result and the response (body and headers).

    The route, the QA page (/preview) and check-send all call this, so they show exactly what Braze would get.
    probe (check-send): ask the source afresh and keep nothing (RecommendationService.recommend).
    """
    if query.recommender is not None:  # a stored configuration (/v1/recommenders): its ARN, role and count
        result, body = parts.configured.answer(query, started, probe)
    elif probe or (repeat := parts.rendered.get(query, parts.service.current_catalog())) is None:
        result = parts.service.recommend(query.user_id, query.num_results, started, query.options, probe=probe)
        body = parts.presenter.render(result, query)
        # A batch job's answer can change with the next version at any moment: it is read again (one store read).
        if not probe and not parts.service.recommender.precomputed:
            parts.rendered.put(query, result, body)
    else:  # the same query within seconds: the bytes rendered then
        result, body = repeat
    response = Response(body, mimetype="application/json")
    response.headers.extend(answer_headers(result, query))
    return result, response


def answer_headers(result: Result, query: Query) -> list[tuple[str, str]]:
    """Return the headers that say where an answer came from, how long it may be kept, and what it left out."""
    headers = [("X-Cache", result.cache), ("X-Recommendations-Source", result.source),
               # A fallback is for this send only: nobody should keep it as if it were the user's answer.
               ("Cache-Control", f"private, max-age={result.max_age}" if result.max_age else "no-store")]
    if result.recommendation_id and result.recommendation_id.isascii() and result.recommendation_id.isprintable():
        headers.append(("X-Recommendation-Id", result.recommendation_id))
    if result.fallback_reason:
        headers.append(("X-Fallback-Reason", result.fallback_reason))
    if result.backfilled:
        headers.append(("X-Backfilled", str(result.backfilled)))
    if result.source in SOURCES_WITHOUT_OPTIONS and (ignored := _personalize_only(query.options)):
        headers.append(("X-Ignored-Parameters", ignored))  # a Braze send must not break, but the author should know
    return headers


def _personalize_only(options: Options) -> str:
    """Name the request's parameters that only Personalize applies, comma-separated ("" when none)."""
    return ",".join(name for name, given in (("filter", options.filter_arn), ("context", options.context)) if given)


@bp.get("/healthz")
def healthz() -> Response:
    """Say the process is alive; touches nothing else."""
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Say whether the catalog and the recommendation source are loaded and configured."""
    svc = components().service
    try:
        catalog = svc.check_ready()
    except ServiceError as exc:
        return json_response({"status": "unavailable", "reason": exc.message}, 503)
    body = {"status": "ready", "source": svc.recommender.name, "catalog_items": len(catalog)}
    # Ready even while the source fails (no credentials, breaker open): the fallbacks answer, and taking every
    # worker out of the load balancer would turn those answers into connection errors in the emails.
    if (state := getattr(svc.recommender, "state", None)) is not None:
        body.update(state())
    return json_response(body)
