"""What create_app builds once and the routes read: one typed object, not string-keyed app.extensions entries."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask, Request, current_app

if TYPE_CHECKING:
    from app.aws import AwsClients
    from app.events.forwarder import EventForwarder
    from app.pinpoint.configs import RecommenderStore
    from app.pinpoint.serving import ConfiguredRecommenders
    from app.recommendations.presentation import Presenter, RenderedAnswers
    from app.recommendations.query import QueryParser
    from app.recommendations.service import RecommendationService
    from app.settings import Settings
    from app.sources.batch import BatchRecommender
    from app.sources.batch_store import BatchStore
    from app.telemetry.logs import RequestLog
    from app.telemetry.metrics import Metrics

EXTENSION = "recommendation_service"
Guard = Callable[[Request], None]


@dataclass
class Components:
    """The parts of one app, plugged together by create_app."""

    settings: Settings
    metrics: Metrics
    aws: AwsClients  # every boto3 client; warm_up looks its credentials up before serving
    service: RecommendationService  # GET /recommendations: cache, source, catalog join, fallbacks
    query_parser: QueryParser
    presenter: Presenter
    rendered: RenderedAnswers  # bodies of the last seconds' answers, by query (CACHE_LOCAL_SECONDS/ITEMS)
    auth_guard: Guard | None  # API_KEYS and ALLOWED_CIDRS for /recommendations; None when both are off
    metrics_guard: Guard | None  # API_KEYS for /metrics (Prometheus scrapes from inside, not from Braze)
    configured: ConfiguredRecommenders  # ?recommender=ID and the /v1/recommenders API
    store: RecommenderStore
    request_log: RequestLog
    batch_store: BatchStore  # where batch jobs' answers are loaded (load-batch) and read
    batch: BatchRecommender | None = None  # RECOMMENDATIONS_URI's job, primary source or fallback
    openapi: dict[str, Any] | None = None  # /openapi.json, built on first request
    events: EventForwarder | None = None  # POST /events; None without PERSONALIZE_TRACKING_ID


def components(app: Flask | None = None) -> Components:
    """Return the components of app (the current app by default)."""
    return (app or current_app).extensions[EXTENSION]
