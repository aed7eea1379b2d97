"""HTTP routes: GET /recommendations and the health checks."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from .errors import ServiceError
from .json import json_response
from .schemas import RecommendationQuery, load_query
from .service import RecommendationService

bp = Blueprint("recommendations", __name__)
query_schema = RecommendationQuery()


def service() -> RecommendationService:
    """Return the app's RecommendationService (built once in create_app)."""
    return current_app.extensions["recommendations"]


@bp.get("/recommendations")
def recommendations() -> Response:
    """Return the user's recommended catalog items as a JSON array, in rank order."""
    query = load_query(query_schema, request.args)
    num_results = query.get("num_results", current_app.config["DEFAULT_NUM_RESULTS"])
    result = service().recommend(query["user_id"], num_results)
    response = json_response(result.items)
    response.headers["X-Cache"] = "HIT" if result.cache_hit else "MISS"
    response.headers["X-Recommendations-Source"] = result.source
    response.headers["Cache-Control"] = f"private, max-age={result.max_age}"
    if result.recommendation_id:
        response.headers["X-Recommendation-Id"] = result.recommendation_id
    return response


@bp.get("/healthz")
def healthz() -> Response:
    """Say the process is alive; touches nothing else."""
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Say whether the catalog and the recommendation source are loaded and configured."""
    svc = service()
    try:
        catalog = svc.check_ready()
    except ServiceError as exc:
        return json_response({"status": "unavailable", "reason": exc.message}, 503)
    return json_response({"status": "ready", "source": svc.recommender.name, "catalog_items": len(catalog)})
