"""GET /recommendations?recommender=ID: serve a stored recommender configuration.

Configurations are kept in memory for RECOMMENDER_REFRESH_SECONDS, so a request does not read the store;
each (provider ARN, role) gets one guarded Personalize recommender, built on first use and reused, and is
served by the default RecommendationService with that recommender as its source (same caches, fallbacks).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

import orjson
from cachetools import TTLCache

from app.aws import AwsClients, region_of
from app.errors import InvalidParameterError, ServiceError, Unavailable
from app.pinpoint.configs import RecommenderConfig, RecommenderStore, StoreError
from app.pinpoint.handler import recommendation_attributes
from app.pinpoint.transformer import LambdaTransformer, TransformerError
from app.recommendations.presentation import Presenter
from app.recommendations.query import Query
from app.recommendations.service import RecommendationService, Result
from app.settings import Settings
from app.sources.guard import GuardedRecommender
from app.sources.personalize import PersonalizeRecommender
from app.sources.recommender import Recommender
from app.telemetry.logs import Occasional, held_back

log = logging.getLogger(__name__)

MAX_UNKNOWN_IDS = 10_000


class UnknownRecommenderError(ServiceError):
    """No recommender configuration has the requested Id."""

    status = 404
    code = "unknown_recommender"


def recommenders_served(settings: Settings) -> bool:
    """Say whether ?recommender=ID reads stored configurations: with the admin API on, or SERVE_RECOMMENDERS."""
    return settings.admin_api_on or settings.serve_recommenders


class ConfiguredRecommenders:
    """Answer requests that name a recommender configuration, with its ARN, role, count and attributes."""

    def __init__(
        self,
        store: RecommenderStore,
        base: RecommendationService,
        presenter: Presenter,
        build_recommender: Callable[[RecommenderConfig], GuardedRecommender],
        transformer: LambdaTransformer,
        refresh_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        in_background: Callable[[Callable[[], None]], None] | None = None,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled  # off: ?recommender= never reads the store nor assumes a stored role
        self._unavailable = Unavailable()
        self.store = store
        self.base = base
        self.presenter = presenter
        self.transformer = transformer
        self.refresh_seconds = refresh_seconds
        self._build_recommender = build_recommender
        self._clock = clock
        self._configs: dict[str, tuple[RecommenderConfig, float]] = {}  # id -> (config, when it was read)
        # Ids the store does not have, remembered as long and bounded: random ids must not grow memory.
        self._unknown: TTLCache[str, bool] = TTLCache(maxsize=MAX_UNKNOWN_IDS, ttl=refresh_seconds, timer=clock)
        self._sources: dict[tuple[str, str | None], GuardedRecommender] = {}
        self._lock = threading.Lock()
        self._unknown_lock = threading.Lock()  # TTLCache is not thread-safe
        self._refreshing: set[str] = set()
        self._in_background = in_background or _thread
        self._transformer_failing: dict[str, str] = {}  # function -> error code, to log once per change
        self._crashes = Occasional()  # a crashing transformer logs its traceback once a minute, not per request

    def answer(self, query: Query, started: float, probe: bool = False) -> tuple[Result, bytes]:
        """Return the result and the response body for a request with ?recommender=ID (probe: see recommend)."""
        assert query.recommender is not None
        if not self.enabled:
            raise UnknownRecommenderError("Recommender configurations are off on this service (the configuration "
                                          "API is off and SERVE_RECOMMENDERS is not set).")
        config = self.config(query.recommender)
        if query.num_results_default:
            query = dataclasses.replace(query, num_results=config.per_message)
        if query.format == "attributes" and not config.attributes:
            raise InvalidParameterError(
                f"Invalid request parameters. format: recommender {config.id} has no Attributes.",
                errors={"format": ["attributes needs a recommender configuration with Attributes."]},
            )
        source = self.source_for(config)
        result = self.base.recommend(query.user_id, query.num_results, started, query.options, source=source,
                                     probe=probe)
        if query.format != "attributes":
            return result, self.presenter.render(result, query)
        return self._attributes(config, query, result, source)

    def _attributes(self, config: RecommenderConfig, query: Query, result: Result,
                    source: GuardedRecommender) -> tuple[Result, bytes]:
        """Return the attribute form: the transformer Lambda's (cached with the answer it was made from), or the
        catalog's when there is none or it fails."""
        if config.transformer:
            endpoint_id = query.user_id or query.options.item_id or ""
            cache = self.base.cache
            # Only an answer callers may keep: a fallback's items are not the answer the key stands for.
            key = self._transformer_key(config, query, source, endpoint_id) if result.max_age > 0 else None
            cached = cache.get_attributes(key, result.item_ids) if key else None
            if cached is not None:
                return result, orjson.dumps(cached)
            try:
                attributes = self.transformer.transform(config.transformer, endpoint_id, result.item_ids,
                                                        config.attributes)
                if self._transformer_failing.pop(config.transformer, None) is not None:
                    log.warning("transformer %s answers again", config.transformer)
                if key:
                    cache.put_attributes(key, result.item_ids, attributes)
                return result, orjson.dumps(attributes)
            except TransformerError as exc:
                # Same shape from the catalog, marked as a fallback so nobody keeps it as the real answer.
                # Logged when the failure starts or changes, not per request: a send would repeat it millions of times.
                if self._transformer_failing.get(config.transformer) != exc.code:
                    self._transformer_failing[config.transformer] = exc.code
                    log.warning("%s: %s Answering the attributes from the catalog until it answers again.",
                                exc.code, exc.message)
                result = dataclasses.replace(result, max_age=0, fallback_reason=exc.code)
            except Exception as exc:  # a bug must not blank an email either; logged with its traceback, once a minute
                if (count := self._crashes.due(f"{config.transformer}:{type(exc).__name__}")) is not None:
                    log.exception("transformer call crashed; answering the attributes from the catalog%s",
                                  held_back(count))
                result = dataclasses.replace(result, max_age=0, fallback_reason=TransformerError.code)
        return result, orjson.dumps(recommendation_attributes(result.item_ids, result.catalog, config.attributes))

    def _transformer_key(self, config: RecommenderConfig, query: Query, source: GuardedRecommender,
                         endpoint_id: str) -> str:
        """Return the key of a transformer's attributes: the answer's key, the function, the attributes asked."""
        assert config.transformer is not None
        answer_key = self.base.answer_key(source, query.user_id, query.num_results, query.options)
        return self.base.cache.key(f"transformer:{config.transformer}", endpoint_id,
                                   {"answer": answer_key, "attributes": list(config.attributes)})

    def config(self, config_id: str) -> RecommenderConfig:
        """Return the configuration, read from the store at most once per refresh interval.

        Only the first read of an Id waits for the store; after that a due re-read runs in the background
        while requests keep the configuration in memory (also when the store fails).
        """
        cached = self._configs.get(config_id)
        if cached is not None:
            if self._clock() - cached[1] >= self.refresh_seconds:
                self._refresh_later(config_id)
            return cached[0]
        with self._unknown_lock:
            unknown = config_id in self._unknown
        if not unknown:
            try:
                config = self._read(config_id)
            except StoreError as exc:  # the detail (a path, a table) goes to the log, never to the caller
                raise self._unavailable("recommender_store_unavailable",
                                  "Recommender configurations cannot be read right now; the error is logged.",
                                  exc) from exc
            if config is not None:
                return config
        raise UnknownRecommenderError(f"There is no recommender configuration {config_id!r}.")

    def _read(self, config_id: str) -> RecommenderConfig | None:
        """Read a configuration from the store into memory; remember an Id the store does not have."""
        now = self._clock()
        record = self.store.get(config_id)
        if record is not None:
            try:
                config = RecommenderConfig.from_record(record)
            except (KeyError, TypeError, AttributeError) as exc:  # written by hand into the table, say
                raise StoreError(f"configuration {config_id!r} is malformed: {exc!r}") from exc
            self._configs[config_id] = (config, now)
            return config
        self._configs.pop(config_id, None)
        with self._unknown_lock:
            self._unknown[config_id] = True
        return None

    def _refresh_later(self, config_id: str) -> None:
        """Re-read a configuration in the background, once at a time per Id; on failure keep the one held."""
        with self._lock:
            if config_id in self._refreshing:
                return
            self._refreshing.add(config_id)

        def refresh() -> None:
            try:
                self._read(config_id)
            except Exception as exc:  # the store is down or the record is broken: keep serving the last good one
                log.warning("recommender %s: keeping the configuration read before (%s)", config_id, exc)
            finally:
                with self._lock:
                    self._refreshing.discard(config_id)

        self._in_background(refresh)

    def forget(self, config_id: str) -> None:
        """Drop a cached configuration after this process changed it, so the change applies at once here."""
        self._configs.pop(config_id, None)
        with self._unknown_lock:
            self._unknown.pop(config_id, None)

    def source_for(self, config: RecommenderConfig) -> GuardedRecommender:
        """Return the guarded recommender for the configuration's ARN and role (built on first use, then reused)."""
        key = (config.provider_arn, config.role_arn)
        source = self._sources.get(key)
        if source is None:
            with self._lock:
                source = self._sources.get(key)
                if source is None:
                    source = self._sources[key] = self._build_recommender(config)
        return source


def _thread(task: Callable[[], None]) -> None:
    threading.Thread(target=task, name="recommender-refresh", daemon=True).start()


def build_configured(store: RecommenderStore, base: RecommendationService, presenter: Presenter, aws: AwsClients,
                     guard: Callable[[Recommender], GuardedRecommender], refresh_seconds: float,
                     observe: Callable[[float, str | None], None] | None = None,
                     enabled: bool = True) -> ConfiguredRecommenders:
    """Plug together the store, a guarded Personalize recommender per (ARN, role) and the transformer.

    Nothing connects until first use. observe is told each Personalize call's seconds and error code, as for
    the default campaign (the metrics). enabled false: ?recommender= is answered 404 without reading the store.
    """

    def build_recommender(config: RecommenderConfig) -> GuardedRecommender:
        region = region_of(config.provider_arn)
        recommender = PersonalizeRecommender(
            config.provider_arn, lambda: aws.personalize_runtime(config.role_arn, region), observe=observe,
            credentials=lambda: aws.credentials(config.role_arn, region), on_no_credentials=aws.no_credentials)
        return guard(recommender)

    return ConfiguredRecommenders(store, base, presenter, build_recommender,
                                  LambdaTransformer(aws.lambda_, on_no_credentials=aws.no_credentials),
                                  refresh_seconds, enabled=enabled)
