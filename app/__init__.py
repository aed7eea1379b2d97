"""The recommendation service for Braze Connected Content: create_app() plugs every part together."""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

import redis
from flask import Flask

from . import telemetry
from .admin import bp as admin_bp
from .auth import build_guard
from .batch import BatchRecommender, parse_batch_output
from .cache import AnswerCache, cache_config
from .catalog import parse_catalog, parse_item_list
from .configured import build_configured, guarded
from .errors import register_error_handlers
from .extensions import cache
from .logs import RequestLog, configure_logging
from .metrics import Metrics
from .metrics import bp as metrics_bp
from .openapi import bp as docs_bp
from .personalize import PersonalizeRecommender, client_config, runtime_client
from .presentation import Presenter
from .proxies import TrustedProxies
from .recommendation import Recommender
from .schemas import QueryParser
from .service import RecommendationService
from .settings import ConfigError, Settings
from .singleflight import SingleFlight
from .sources import Reloadable, SourceError, open_source
from .views import bp

log = logging.getLogger(__name__)
BRAZE_TIMEOUT_MS = 2000  # Connected Content gives up after 2 s (README, "Never the reason an email goes out broken")

__all__ = ["ConfigError", "create_app", "warm_up"]


def create_app(config: Settings | Mapping[str, Any] | None = None, **services: Any) -> Flask:
    """Build the app from settings (the environment by default); tests may pass services to replace real ones.

    services: `recommender` (a Recommender), `s3_client_factory` and `personalize_client_factory`
    (callables returning boto3 clients), and those of configured.build_configured (recommender
    configurations). Nothing here does network I/O; see warm_up().
    """
    settings = _settings(config)
    configure_logging(settings.log_level)
    _warn_about_timeouts(settings)
    _warn_about_filters(settings)
    app = Flask(__name__)
    app.config.update(SETTINGS=settings)
    metrics = app.extensions["metrics"] = Metrics()
    if settings.trusted_proxies:
        # Behind a load balancer the caller's address is in X-Forwarded-For, believed only from the balancers.
        app.wsgi_app = TrustedProxies(app.wsgi_app, settings.trusted_proxies)  # type: ignore[method-assign]

    cache.init_app(
        app,
        config=cache_config(settings.cache_redis_url, settings.cache_dir, settings.cache_threshold,
                            settings.cache_ttl_seconds),
    )
    s3_client_factory: Callable[[], Any] = services.get("s3_client_factory") or _boto3_client_factory("s3", settings)
    parse = functools.partial(
        parse_catalog, extra_fields=settings.catalog_extra_fields, image_base_url=settings.image_base_url
    )
    catalog = _reloadable("CATALOG_URI", settings.catalog_uri, parse, settings, s3_client_factory, "catalog",
                          metrics)
    assert catalog is not None  # Settings requires CATALOG_URI
    answers = AnswerCache(
        app.extensions["cache"][cache],
        settings.cache_ttl_seconds,
        settings.cache_stale_seconds,
        local_seconds=settings.cache_local_seconds,
        local_items=settings.cache_local_items,
    )
    batch = _batch(settings, s3_client_factory, metrics)
    primary: Recommender = services.get("recommender") or _personalize(settings, services, metrics) or batch
    app.extensions["recommendations"] = RecommendationService(
        guarded(primary, settings, on_state_change=metrics.breaker_changed),
        catalog,
        answers,
        SingleFlight(answers, _lock_client(settings.cache_redis_url)),
        budget_seconds=settings.request_budget_ms / 1000,
        batch=batch if primary is not batch else None,
        popular=_reloadable("POPULAR_ITEMS_URI", settings.popular_items_uri, parse_item_list, settings,
                            s3_client_factory, "popular items", metrics),
    )

    app.extensions["auth_guard"] = build_guard(settings.api_keys, settings.allowed_cidrs)
    app.extensions["query_parser"] = QueryParser(settings, recent_size=settings.cache_local_items)
    app.extensions["presenter"] = Presenter(settings.link_query)
    # /metrics takes the API keys but not ALLOWED_CIDRS: Prometheus scrapes from inside, not from Braze's IPs.
    app.extensions["metrics_guard"] = build_guard(settings.api_keys, ())
    configured = build_configured(settings, app.extensions["recommendations"], app.extensions["presenter"], services,
                                  observe=metrics.observe_personalize)
    app.extensions["configured_recommenders"] = configured
    app.extensions["recommender_store"] = configured.store
    app.register_blueprint(bp)
    app.register_blueprint(admin_bp)
    app.register_blueprint(metrics_bp)
    app.register_blueprint(docs_bp)
    register_error_handlers(app)
    request_log = app.extensions["request_log"] = RequestLog(
        settings.log_user_id_key, enabled=settings.log_level in ("DEBUG", "INFO"),
        flush_seconds=settings.log_flush_ms / 1000)
    telemetry.init_app(app, metrics, request_log)
    return app


def warm_up(app: Flask) -> None:
    """Load the catalog (and batch output) now, raising when they cannot be read: call before serving."""
    service: RecommendationService = app.extensions["recommendations"]
    service.catalog.load()
    service.check_ready()
    if service.batch is not None:
        service.batch.check_ready()
    if service.popular is not None:
        service.popular.load()


def _settings(config: Settings | Mapping[str, Any] | None) -> Settings:
    if isinstance(config, Settings):
        return config
    if config is None:
        return Settings.from_env()
    return Settings.from_mapping(config)


def _source(variable: str, uri: str, s3_client_factory: Callable[[], Any]) -> Any:
    try:
        return open_source(uri, s3_client_factory)
    except SourceError as exc:
        raise ConfigError(f"{variable}: {exc}") from exc


def _personalize(settings: Settings, services: Mapping[str, Any], metrics: Metrics) -> Recommender | None:
    if not settings.personalize_campaign_arn:
        return None
    factory = services.get("personalize_client_factory")
    credentials = None
    if factory is None:
        session = _boto3_session()

        @functools.cache  # one client per process, built on first use (after gunicorn forks, never at import)
        def factory() -> Any:
            return runtime_client(session(), settings.aws_region, settings.personalize_connect_timeout,
                                  settings.personalize_read_timeout, settings.personalize_max_attempts,
                                  settings.personalize_max_concurrency)

        def credentials() -> Any:
            return session().get_credentials()  # the object the client signs with: botocore keeps one per session
    promotion = None
    if settings.promotion_filter_arn:
        promotion = {
            "name": settings.promotion_name,
            "filterArn": settings.promotion_filter_arn,
            "percentPromotedItems": settings.promotion_percent,
        }
    return PersonalizeRecommender(settings.personalize_campaign_arn, factory, promotion,
                                  observe=metrics.observe_personalize, credentials=credentials)


def _warn_about_timeouts(settings: Settings) -> None:
    """Log timeouts that are valid alone but work against each other (they are not worth refusing to start)."""
    attempt = settings.personalize_connect_timeout + settings.personalize_read_timeout
    calls_personalize = settings.personalize_campaign_arn or settings.admin_api_keys
    if calls_personalize and attempt >= settings.request_budget_ms / 1000:
        # upstream.py: botocore's timeouts cannot end the call within the budget, so the guard must watch it.
        log.warning(
            "PERSONALIZE_CONNECT_TIMEOUT + PERSONALIZE_READ_TIMEOUT (%.2f s) is not less than REQUEST_BUDGET_MS "
            "(%d ms), so every Personalize call runs on a watchdog thread that stops waiting at the budget's end: "
            "about 15%% more CPU per cache miss. Keep the two timeouts under the budget.",
            attempt, settings.request_budget_ms)
    with_transformer = settings.request_budget_ms + settings.transformer_timeout_ms
    if settings.admin_api_keys and with_transformer > BRAZE_TIMEOUT_MS:
        log.warning("REQUEST_BUDGET_MS + TRANSFORMER_TIMEOUT_MS (%d ms) is more than Braze waits (%d ms): a "
                    "recommender configuration with a transformer Lambda may answer too late for Braze.",
                    with_transformer, BRAZE_TIMEOUT_MS)


def _warn_about_filters(settings: Settings) -> None:
    """Log that filters cannot apply when the only source is a batch file (requests naming one still answer)."""
    if (settings.filters or settings.promotion_filter_arn) and not settings.personalize_campaign_arn:
        log.warning("FILTERS or PROMOTION_FILTER_ARN is set but PERSONALIZE_CAMPAIGN_ARN is not: a batch inference "
                    "file cannot apply a filter, so a request's filter (and context) is ignored and its answer says "
                    "so in X-Ignored-Parameters. Set PERSONALIZE_CAMPAIGN_ARN for filters to apply.")


def _batch(settings: Settings, s3_client_factory: Callable[[], Any], metrics: Metrics) -> BatchRecommender | None:
    answers = _reloadable("RECOMMENDATIONS_URI", settings.recommendations_uri, parse_batch_output, settings,
                          s3_client_factory, "batch recommendations", metrics)
    return BatchRecommender(answers) if answers is not None else None


def _reloadable(variable: str, uri: str | None, parse: Callable[[bytes, str, str], Any], settings: Settings,
                s3_client_factory: Callable[[], Any], what: str, metrics: Metrics) -> Reloadable[Any] | None:
    """Return the file a setting names, re-read when it changes; None when the setting is empty."""
    if not uri:
        return None
    return Reloadable(_source(variable, uri, s3_client_factory), parse, settings.catalog_refresh_seconds, what,
                      on_load=metrics.loader(what))


def _lock_client(redis_url: str | None) -> redis.Redis | None:
    """Return the Redis client single-flight locks use across workers, when Redis is the cache."""
    if not redis_url:
        return None
    return redis.Redis.from_url(redis_url, socket_timeout=0.25, socket_connect_timeout=0.25)


def _boto3_client_factory(service_name: str, settings: Settings) -> Callable[[], Any]:
    """Return a function that builds a boto3 client; boto3 picks up credentials and AWS_ENDPOINT_URL_* itself."""

    session = _boto3_session()

    def build() -> Any:
        config = client_config(connect_timeout=5, read_timeout=30, max_attempts=3, pool_size=2)
        return session().client(service_name, config=config)

    # One client per process, built on first use (after gunicorn forks, never at import).
    return functools.cache(build)


def _boto3_session() -> Callable[[], Any]:
    """Return a function giving one boto3 session (credentials, AWS_ENDPOINT_URL_*) per process, made on first use."""

    @functools.cache
    def session() -> Any:
        import boto3

        return boto3.session.Session()

    return session
