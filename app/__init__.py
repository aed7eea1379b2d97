"""The recommendation service for Braze Connected Content: create_app() plugs every part together."""
from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import redis
from cachelib.base import BaseCache
from flask import Flask

from app.aws import AwsClients, Timeouts
from app.caching.answers import AnswerCache, cache_config
from app.caching.redis import SharedRedis, shared_redis
from app.caching.singleflight import SingleFlight
from app.commands import register_commands
from app.catalog.files import FileError, Reloadable, open_file, open_files
from app.catalog.items import Catalog, parse_catalog, parse_item_list, reload_check
from app.components import EXTENSION, Components, components
from app.docs.openapi import bp as docs_bp
from app.errors import ServiceError, register_error_handlers
from app.events.forwarder import EventForwarder
from app.events.putevents import PutEventsSender
from app.events.queue import EventQueue, RedisEventQueue, SQLiteEventQueue
from app.events.views import bp as events_bp
from app.extensions import cache
from app.pinpoint.admin import bp as admin_bp
from app.pinpoint.configs import RecommenderStore, build_store
from app.pinpoint.serving import build_configured, recommenders_served
from app.preview.views import bp as preview_bp
from app.recommendations.auth import build_guard
from app.recommendations.presentation import Presenter, RenderedAnswers
from app.recommendations.query import QueryParser
from app.recommendations.service import RecommendationService
from app.recommendations.views import bp
from app.recommendations.repeats import RepeatLane
from app.server.proxies import TrustedProxies
from app.settings import ConfigError, Settings
from app.sources.batch import BatchRecommender
from app.sources.batch_load import BatchLoader
from app.sources.batch_store import BatchStore, RedisBatchStore, SQLiteBatchStore
from app.sources.guard import GuardedRecommender
from app.sources.personalize import PersonalizeRecommender
from app.sources.popularity import RecentlyRecommended, RedisCounts, SQLiteCounts
from app.sources.recommender import Recommender
from app.storage import private_file, private_folder
from app.telemetry.hooks import init_app as init_telemetry
from app.telemetry.logs import RequestLog, configure_logging
from app.telemetry.metrics import Metrics
from app.telemetry.metrics import bp as metrics_bp

log = logging.getLogger(__name__)
BRAZE_TIMEOUT_MS = 2000  # Connected Content gives up after 2 s (README, "Never the reason an email goes out broken")
BATCH_WAIT_SECONDS = 2.0  # warm_up waits this long for a batch job to load: a small one is served at once

__all__ = ["ConfigError", "create_app", "start_background", "warm_up"]


def create_app(
    config: Settings | Mapping[str, Any] | None = None,
    *,
    recommender: Recommender | None = None,
    aws: AwsClients | None = None,
    recommender_store: RecommenderStore | None = None,
    answer_backend: BaseCache | None = None,
    lock_client: redis.Redis | SharedRedis | None = None,
    http_session: Any = None,
    event_queue: EventQueue | None = None,
) -> Flask:
    """Build the app from settings (the environment by default); each outside service may be replaced.

    recommender: the source of answers (default: Personalize when PERSONALIZE_CAMPAIGN_ARN is set, else the
    batch output); aws: every boto3 client (Personalize, S3, DynamoDB, STS, Lambda); recommender_store: where
    configurations are kept; answer_backend: the answer cache's backend (default: Redis or files, as set);
    lock_client: the Redis client of the cross-worker lock and the recently recommended counts (default: the
    one app/caching/redis.py builds from CACHE_REDIS_URL, which the answer cache shares); http_session: the
    requests.Session of https:// files; event_queue: where POST /events keeps events until PutEvents takes them
    (default: Redis or SQLite, as the cache). Nothing here does network I/O; see warm_up().
    """
    settings = _settings(config)
    configure_logging(settings.log_level)
    _warn_about_timeouts(settings)
    _warn_about_filters(settings)
    app = Flask(__name__)
    app.config.update(SETTINGS=settings)
    _prepare_data_folders(settings)
    aws = aws or AwsClients(settings.aws_region, _personalize_timeouts(settings), settings.transformer_timeout_ms / 1000)
    metrics = Metrics()
    # The one Redis client of the process (None without CACHE_REDIS_URL): answers, locks, counts, batch, events.
    shared = shared_redis(settings.cache_redis_url, settings.cache_redis_cluster, settings.cache_redis_tls_ca_file,
                          settings.cache_redis_tls_verify)
    redis_client = lock_client or shared
    batch_store = _batch_store(settings, redis_client)
    batch = _batch(settings, aws, http_session, batch_store, metrics)
    service = _recommendation_service(settings, app, metrics, aws, recommender, answer_backend, shared,
                                      redis_client, batch, http_session)
    presenter = Presenter(settings.link_query, settings.link_tracking)
    store = recommender_store or build_store(settings.recommender_store, settings.recommender_db_path,
                                             settings.recommender_table, aws.dynamodb)
    app.extensions[EXTENSION] = Components(
        settings=settings,
        metrics=metrics,
        service=service,
        query_parser=QueryParser(settings.default_num_results, settings.filters, settings.catalog_extra_fields,
                                 settings.link_query, recent_size=settings.cache_local_items),
        presenter=presenter,
        rendered=RenderedAnswers(settings.cache_local_seconds, settings.cache_local_items),
        auth_guard=build_guard(settings.api_keys, settings.allowed_cidrs),
        metrics_guard=build_guard(settings.api_keys, ()),
        aws=aws,
        configured=build_configured(store, service, presenter, aws, _guard(settings),
                                    settings.recommender_refresh_seconds, observe=metrics.observe_personalize,
                                    enabled=recommenders_served(settings)),
        store=store,
        events=_event_forwarder(settings, aws, metrics, event_queue, redis_client),
        request_log=RequestLog(settings.log_user_id_key, enabled=settings.log_level in ("DEBUG", "INFO"),
                               flush_seconds=settings.log_flush_ms / 1000),
        batch_store=batch_store,
        batch=batch,
    )
    # A repeat of a recent GET /recommendations is answered before Flask; the caller's address is worked out first.
    app.wsgi_app = RepeatLane(app.wsgi_app, components(app))  # type: ignore[method-assign]
    _trust_proxies(app, settings)
    _register_blueprints(app)
    register_commands(app)
    register_error_handlers(app)
    init_telemetry(app, metrics, components(app).request_log)
    return app


def warm_up(app: Flask) -> None:
    """Load the catalog (and batch output) now, raising when they cannot be read: call before serving.

    When Personalize or recommender configurations may call AWS, the credentials and region are looked up
    now too, and their absence said at ERROR (the service still starts: its fallbacks answer).
    """
    parts = components(app)
    service = parts.service
    service.catalog.load()
    if parts.settings.personalize_campaign_arn or parts.settings.admin_api_on:
        if not parts.aws.check_credentials() and service.recommender.name == "personalize":
            service.recommender.note_error("upstream_credentials")  # /readyz says why before the first call
    if parts.batch is None:
        service.check_ready()
    else:
        _start_batch_loader(parts.batch)
    if service.popular is not None:
        service.popular.load()
    elif not service.current_catalog().popular:
        log.warning("No popularity source: POPULAR_ITEMS_URI is not set and the catalog has no POPULARITY_RANK, "
                    "RANK or POPULARITY column. When the source fails with no stale or batch answer, the fallback "
                    "serves the items recommended most in the last %d hours (RECENTLY_RECOMMENDED_HOURS), then the "
                    "catalog's own order.", service.recent.keep_hours if service.recent else 0)


def start_background(app: Flask) -> None:
    """Start what a serving worker runs besides requests: POST /events' drainer, so events queued before a
    restart go out without waiting for a new request. gunicorn calls it in each worker; commands do not."""
    if (events := components(app).events) is not None:
        events.start()


def _start_batch_loader(batch: BatchRecommender) -> None:
    """Start this worker's batch loader and give it a moment, so a small job is served from the first request.

    A job that cannot be read stops the start (as a catalog does); a big one goes on loading in the background
    while /readyz answers 503, and a job already in the store is served at once.
    """
    batch.loader.start()
    batch.loader.attempted.wait(BATCH_WAIT_SECONDS)
    try:
        if batch.version() is not None:
            return
    except ServiceError:  # the store is out of reach (Redis down): serve the fallbacks, as for the answer cache
        log.warning("The batch store (%s) cannot be read: requests are answered from the fallbacks until it can.",
                    batch.store.kind)
        return
    if batch.loader.source_error is not None:
        raise FileError(batch.loader.source_error)
    log.warning("The batch job is still loading into the %s store: /readyz answers 503 until it is complete, and "
                "requests are answered from the fallbacks meanwhile.", batch.store.kind)


def _prepare_data_folders(settings: Settings) -> None:
    """Create the folders and files the service will keep (0700/0600), refusing ones others could write."""
    used: list[tuple[str, str, Callable[[str, str], str]]] = []
    if not settings.cache_redis_url:
        used.append((settings.cache_dir, "CACHE_DIR", private_folder))
        used.append((recent_counts_path(settings), "DATA_DIR", private_file))
    if settings.personalize_tracking_id and not settings.cache_redis_url:
        used.append((events_path(settings), "DATA_DIR", private_file))
    if settings.recommendations_uri and not settings.cache_redis_url:
        used.append((batch_folder(settings), "DATA_DIR", private_folder))
    if settings.recommender_store == "sqlite" and recommenders_served(settings):
        used.append((settings.recommender_db_path, "RECOMMENDER_DB_PATH", private_file))
    for path, variable, prepare in used:
        if os.path.commonpath([path, settings.data_dir]) == settings.data_dir:
            private_folder(settings.data_dir, "DATA_DIR")  # a folder others could write holds ours too
        prepare(path, variable)


def recent_counts_path(settings: Settings) -> str:
    """Return the SQLite file of the recently recommended counts, when Redis is not the cache."""
    return os.path.join(settings.data_dir, "recently-recommended.sqlite3")


def events_path(settings: Settings) -> str:
    """Return the SQLite file of POST /events' queue, when Redis is not the cache."""
    return os.path.join(settings.data_dir, "events.sqlite3")


def _event_forwarder(settings: Settings, aws: AwsClients, metrics: Metrics, queue: EventQueue | None,
                     redis_client: redis.Redis | SharedRedis | None) -> EventForwarder | None:
    """Return POST /events' queue and drainer, or None when no tracking id is set (the route says so).

    PUT_EVENTS_MAX_TPS is the host's: each of its WEB_CONCURRENCY workers sends at most its share.
    """
    if not settings.personalize_tracking_id:
        return None
    if queue is None:
        queue = (RedisEventQueue(redis_client) if redis_client is not None
                 else SQLiteEventQueue(events_path(settings)))
    observe = metrics.event_counter("api")
    sender = PutEventsSender(aws.personalize_events, settings.personalize_tracking_id,
                             settings.put_events_max_tps / settings.web_concurrency, observe=observe)
    # A few of the worker's threads at most, so GET /recommendations always has the others.
    return EventForwarder(queue, sender, max_requests=max(1, settings.web_threads // 4), observe=observe,
                          on_depth=metrics.events_queued.set)


def batch_folder(settings: Settings) -> str:
    """Return the folder of the batch jobs' SQLite files, when Redis is not the cache."""
    return os.path.join(settings.data_dir, "batch")


def _batch_store(settings: Settings, redis_client: redis.Redis | SharedRedis | None) -> BatchStore:
    """Return where batch jobs are loaded: the cache's Redis when there is one, else SQLite files in DATA_DIR."""
    if redis_client is not None:
        return RedisBatchStore(redis_client)
    return SQLiteBatchStore(batch_folder(settings), "DATA_DIR")


def _batch(settings: Settings, aws: AwsClients, http_session: Any, store: BatchStore, metrics: Metrics
           ) -> BatchRecommender | None:
    """Return the source answering from RECOMMENDATIONS_URI's job in the store, and the loader keeping it there."""
    if not settings.recommendations_uri:
        return None
    try:
        files = open_files(settings.recommendations_uri, aws.s3, http_session)
    except FileError as exc:
        raise ConfigError(f"RECOMMENDATIONS_URI: {exc}") from exc
    loader = BatchLoader(files, store, settings.catalog_refresh_seconds,
                         on_load=metrics.loader("batch recommendations"))
    return BatchRecommender(store, loader, settings.recommendations_uri)


def _settings(config: Settings | Mapping[str, Any] | None) -> Settings:
    if isinstance(config, Settings):
        return config
    if config is None:
        return Settings.from_env()
    return Settings.from_mapping(config)


def _trust_proxies(app: Flask, settings: Settings) -> None:
    """Behind a load balancer the caller's address is in X-Forwarded-For, believed only from the balancers."""
    if settings.trusted_proxies:
        app.wsgi_app = TrustedProxies(app.wsgi_app, settings.trusted_proxies)  # type: ignore[method-assign]


def _personalize_timeouts(settings: Settings) -> Timeouts:
    return Timeouts(connect=settings.personalize_connect_timeout, read=settings.personalize_read_timeout,
                    attempts=settings.personalize_max_attempts, pool=settings.personalize_max_concurrency)


def _guard(settings: Settings) -> Callable[..., GuardedRecommender]:
    """Return what wraps a recommender in the deadline, concurrency cap and circuit breaker the settings describe."""
    return functools.partial(GuardedRecommender, max_concurrency=settings.personalize_max_concurrency,
                             failure_threshold=settings.breaker_failure_threshold,
                             recovery_seconds=settings.breaker_recovery_seconds)


def _recommendation_service(settings: Settings, app: Flask, metrics: Metrics, aws: AwsClients,
                            recommender: Recommender | None, answer_backend: BaseCache | None,
                            shared: SharedRedis | None, redis_client: redis.Redis | SharedRedis | None,
                            batch: BatchRecommender | None,
                            http_session: Any) -> RecommendationService:
    """Build GET /recommendations' service: the files it reads, the answer cache, the source and its guard."""

    def reloadable(variable: str, uri: str | None, parse: Callable[[bytes, str, str], Any], what: str,
                   check: Callable[[Any, Any], tuple[str, str] | None] | None = None) -> Reloadable[Any] | None:
        """Return the file a setting names, re-read when it changes; None when the setting is empty.

        check, when given, may refuse a reload that looks broken beside the version served (see Reloadable).
        """
        if not uri:
            return None
        try:
            source = open_file(uri, aws.s3, http_session)
        except FileError as exc:
            raise ConfigError(f"{variable}: {exc}") from exc
        return Reloadable(source, parse, settings.catalog_refresh_seconds, what, on_load=metrics.loader(what),
                          check=check, on_refuse=metrics.refuser(what))

    parse = functools.partial(parse_catalog, extra_fields=settings.catalog_extra_fields,
                              image_base_url=settings.image_base_url)
    catalog: Reloadable[Catalog] | None = reloadable("CATALOG_URI", settings.catalog_uri, parse, "catalog",
                                                     check=reload_check(settings.catalog_max_shrink))
    assert catalog is not None  # Settings requires CATALOG_URI
    primary = recommender or _personalize(settings, aws, metrics) or batch
    assert primary is not None  # Settings requires PERSONALIZE_CAMPAIGN_ARN or RECOMMENDATIONS_URI
    answers = AnswerCache(
        answer_backend or _cache_backend(app, settings, shared),
        settings.cache_ttl_seconds,
        settings.cache_stale_seconds,
        local_seconds=settings.cache_local_seconds,
        local_items=settings.cache_local_items,
        on_error=metrics.answer_cache_error,
        on_failing=metrics.answer_cache_changed,
    )
    return RecommendationService(
        _guard(settings)(primary, on_state_change=metrics.breaker_changed),
        catalog,
        answers,
        SingleFlight(answers, redis_client),
        budget_seconds=settings.request_budget_ms / 1000,
        batch=batch if primary is not batch else None,
        popular=reloadable("POPULAR_ITEMS_URI", settings.popular_items_uri, parse_item_list, "popular items"),
        recent=RecentlyRecommended(RedisCounts(redis_client) if redis_client is not None
                                   else SQLiteCounts(recent_counts_path(settings)),
                                   keep_hours=settings.recently_recommended_hours),
    )


def _cache_backend(app: Flask, settings: Settings, shared: SharedRedis | None) -> BaseCache:
    """Return flask-caching's backend for answers: Redis when CACHE_REDIS_URL is set, else files in CACHE_DIR."""
    cache.init_app(app, config=cache_config(shared, settings.cache_dir, settings.cache_threshold,
                                            settings.cache_ttl_seconds))
    return app.extensions["cache"][cache]


def _personalize(settings: Settings, aws: AwsClients, metrics: Metrics) -> Recommender | None:
    if not settings.personalize_campaign_arn:
        return None
    promotion = None
    if settings.promotion_filter_arn:
        promotion = {
            "name": settings.promotion_name,
            "filterArn": settings.promotion_filter_arn,
            "percentPromotedItems": settings.promotion_percent,
        }
    # The client and the credentials it signs with (botocore keeps one per session): built on first use,
    # after gunicorn forks, never at import.
    return PersonalizeRecommender(settings.personalize_campaign_arn, aws.personalize_runtime, promotion,
                                  observe=metrics.observe_personalize, credentials=aws.credentials,
                                  on_no_credentials=aws.no_credentials)


def _register_blueprints(app: Flask) -> None:
    for blueprint in (bp, admin_bp, metrics_bp, docs_bp, preview_bp, events_bp):
        app.register_blueprint(blueprint)


def _warn_about_timeouts(settings: Settings) -> None:
    """Log timeouts that are valid alone but work against each other (they are not worth refusing to start)."""
    attempt = settings.personalize_connect_timeout + settings.personalize_read_timeout
    calls_personalize = settings.personalize_campaign_arn or settings.admin_api_on
    if calls_personalize and attempt >= settings.request_budget_ms / 1000:
        # upstream.py: botocore's timeouts cannot end the call within the budget, so the guard must watch it.
        log.warning(
            "PERSONALIZE_CONNECT_TIMEOUT + PERSONALIZE_READ_TIMEOUT (%.2f s) is not less than REQUEST_BUDGET_MS "
            "(%d ms), so every Personalize call runs on a watchdog thread that stops waiting at the budget's end: "
            "more CPU per cache miss (see the README's Benchmark). Keep the two timeouts under the budget.",
            attempt, settings.request_budget_ms)
    with_transformer = settings.request_budget_ms + settings.transformer_timeout_ms
    if settings.admin_api_on and with_transformer > BRAZE_TIMEOUT_MS:
        log.warning("REQUEST_BUDGET_MS + TRANSFORMER_TIMEOUT_MS (%d ms) is more than Braze waits (%d ms): a "
                    "recommender configuration with a transformer Lambda may answer too late for Braze.",
                    with_transformer, BRAZE_TIMEOUT_MS)


def _warn_about_filters(settings: Settings) -> None:
    """Log that filters cannot apply when the only source is a batch file (requests naming one still answer)."""
    if (settings.filters or settings.promotion_filter_arn) and not settings.personalize_campaign_arn:
        log.warning("FILTERS or PROMOTION_FILTER_ARN is set but PERSONALIZE_CAMPAIGN_ARN is not: a batch inference "
                    "file cannot apply a filter, so a request's filter (and context) is ignored and its answer says "
                    "so in X-Ignored-Parameters. Set PERSONALIZE_CAMPAIGN_ARN for filters to apply.")
