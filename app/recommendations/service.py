"""The request path's logic: cache, then the recommendation source (once per key), then the catalog join;
on failure the fallback chain (stale answer, batch output, popular items: configured, recently recommended,
then the catalog's order)."""
from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from app.caching.answers import AnswerCache
from app.caching.singleflight import SingleFlight
from app.catalog.files import FileError, Reloadable
from app.catalog.items import Catalog, Item
from app.errors import (
    InvalidParameterError,
    ServiceError,
    Unavailable,
    UnavailableError,
    UpstreamError,
)
from app.settings import MAX_NUM_RESULTS
from app.sources.guard import GuardedRecommender
from app.sources.popularity import RecentlyRecommended
from app.sources.recommender import NO_OPTIONS, Options, Recommendation, Recommender

log = logging.getLogger(__name__)

PopularIds = list[str]


@dataclass(frozen=True)
class Result:
    """The items to return (ids the catalog has, in order) and what the response headers say about them."""

    item_ids: list[str]
    catalog: Catalog
    recommendation_id: str | None
    cache: str  # HIT, MISS or STALE
    max_age: int  # seconds a caller may keep it; 0 for a fallback
    source: str  # the primary source's name, or stale / batch / fallback
    backfilled: int = 0
    fallback_reason: str | None = None
    answered: Sequence[str] = ()  # the answer's ids before the catalog join (check-send counts the unknown ones)

    @property
    def items(self) -> list[Item]:
        """Return the items as dicts."""
        return self.catalog.join(self.item_ids)


class RecommendationService:
    """Answer GET /recommendations within a time budget, never with an error while a fallback can answer."""

    def __init__(
        self,
        recommender: GuardedRecommender,
        catalog: Reloadable[Catalog],
        cache: AnswerCache,
        flights: SingleFlight,
        budget_seconds: float,
        batch: Recommender | None = None,
        popular: Reloadable[PopularIds] | None = None,
        recent: RecentlyRecommended | None = None,
    ) -> None:
        self.recommender = recommender
        self.catalog = catalog
        self.cache = cache
        self.flights = flights
        self.budget_seconds = budget_seconds
        self.batch = batch
        self.popular = popular
        self.recent = recent
        self._unavailable = Unavailable()

    def recommend(
        self, user_id: str | None, num_results: int, started: float | None = None, options: Options = NO_OPTIONS,
        source: GuardedRecommender | None = None, probe: bool = False,
    ) -> Result:
        """Return up to num_results catalog items for the user, in the source's order, backfilled if short.

        source: a stored configuration's recommender instead of the default one (same caches and fallbacks).
        probe: a check of what a recipient would get (check-send): the source is asked even when a fresh answer
        is cached, and nothing is kept (no cache write, no recently recommended counts), so a check neither
        warms the cache for the send with answers that expire nor is fooled by it; a cached answer still
        stands in, as stale, when the source fails, as it would during the send.
        """
        recommender = source or self.recommender
        deadline = (started or time.monotonic()) + self.budget_seconds
        catalog = self.current_catalog()
        key = self.answer_key(recommender, user_id, num_results, options)
        # A batch job's answers are already in the shared store: a second copy in the answer cache would cost a
        # write per user and would go on serving the old job after load-batch switched to a new one.
        precomputed = getattr(recommender, "precomputed", False)
        # A check reads without a claim on fetching; a request's miss also takes the single-flight lock.
        if precomputed:
            cached, claim = None, None
        else:
            cached, claim = (self.cache.get(key), None) if probe else self.flights.lookup(key, deadline)
        if cached is not None and self.cache.is_fresh(cached) and not probe:
            return self._result(catalog, cached.recommendation, num_results, "HIT", self.cache.max_age(cached),
                                recommender.name)

        def fetch(remaining: float) -> Recommendation:
            return recommender.recommend(user_id, num_results, timeout=remaining, options=options)

        try:
            if probe or precomputed:  # neither the single-flight lock nor its cache write
                recommendation = fetch(deadline - time.monotonic())
            else:
                recommendation = self.flights.run(key, fetch, deadline, claim)
        except InvalidParameterError:
            raise  # Personalize rejected the request itself: the caller must see it, not a fallback
        except ServiceError as exc:
            return self._fallback(catalog, cached.recommendation if cached else None, user_id, num_results, exc,
                                  options)
        except Exception:  # a bug must not blank an email either; it is logged with its traceback
            log.exception("recommendation source crashed; serving the fallback")
            return self._fallback(catalog, cached.recommendation if cached else None, user_id, num_results,
                                  UpstreamError("The recommendation source failed.", code="internal_error"), options)
        if self.recent is not None and not probe and not precomputed:
            self.recent.count(recommendation.item_ids)  # misses only: a hit stays a read, a join, a serialisation
        return self._result(catalog, recommendation, num_results, "MISS", self.cache.ttl, recommender.name)

    def answer_key(self, recommender: GuardedRecommender, user_id: str | None, num_results: int,
                   options: Options = NO_OPTIONS) -> str:
        """Return the answer cache's key of this request to this recommender."""
        return self.cache.key(recommender.key, user_id or "", {"num_results": num_results, **options.cache_params()})

    def _fallback(
        self,
        catalog: Catalog,
        stale: Recommendation | None,
        user_id: str | None,
        num_results: int,
        exc: ServiceError,
        options: Options,
    ) -> Result:
        """Answer from the last good answer, the batch output, or the popular items, in that order."""
        reason = exc.code
        if stale is not None:
            return self._result(catalog, stale, num_results, "STALE", 0, "stale", reason)
        if self.batch is not None:
            try:
                answer = self.batch.recommend(user_id, num_results, options)
            except ServiceError as batch_exc:
                log.warning("batch fallback unavailable: %s", batch_exc.message)
            else:
                if answer.item_ids:
                    return self._result(catalog, answer, num_results, "MISS", 0, "batch", reason)
        result = self._result(catalog, Recommendation([]), num_results, "MISS", 0, "fallback", reason,
                              last_resort=True)
        if result.item_ids:
            return result
        # The popular list ends with the catalog's own order: only a catalog without an item in stock gets here.
        raise UnavailableError("No recommendations can be served: the source failed and the catalog has no item "
                               "in stock to fall back on.", code="no_recommendations", retry_after=1)

    def _result(
        self,
        catalog: Catalog,
        recommendation: Recommendation,
        num_results: int,
        cache: str,
        max_age: int,
        source: str,
        fallback_reason: str | None = None,
        last_resort: bool = False,
    ) -> Result:
        item_ids = catalog.known(recommendation.item_ids)
        known = len(item_ids)
        if known < num_results:
            item_ids = self._backfill(catalog, item_ids, num_results, last_resort)
            if not known and fallback_reason is None:
                # Nothing of the source's answer could be served (a user the batch file does not have, a
                # user id the template broke, a campaign trained on another catalog): every item is a
                # popular one. Say so, in the header and the fallback metrics, rather than pass it off.
                fallback_reason = "no_known_items"
        return Result(item_ids, catalog, recommendation.recommendation_id, cache, max_age, source,
                      len(item_ids) - known, fallback_reason, recommendation.item_ids)

    def _backfill(self, catalog: Catalog, item_ids: list[str], num_results: int, last_resort: bool) -> list[str]:
        """Fill a short list up to num_results from the popular items, skipping ones already in it."""
        seen = set(item_ids)
        filled = list(item_ids)
        for item_id in self.popular_ids(catalog, last_resort):
            if len(filled) >= num_results:
                break
            if item_id in catalog.encoded and item_id not in seen:
                filled.append(item_id)
                seen.add(item_id)
        return filled

    def popular_ids(self, catalog: Catalog, last_resort: bool = False) -> Iterator[str]:
        """Yield item ids, most popular first: the configured popular list; for the last resort (the source
        failed, no stale or batch answer) then the items recommended most lately and the catalog's own order,
        so an email never goes out blank while the catalog has an item in stock.

        Lazily: a later list is only asked for when the earlier ones ran out of items in stock. Short answers
        of a working source are backfilled from the configured popular list only.
        """
        yield from self.configured_popular(catalog)
        if not last_resort:
            return
        if self.recent is not None:
            yield from self.recent.top()
        # Enough for any answer even when every id before was a duplicate (the caller skips those).
        yield from itertools.islice(catalog.encoded, 2 * MAX_NUM_RESULTS)

    def configured_popular(self, catalog: Catalog) -> PopularIds:
        """Return POPULAR_ITEMS_URI's ids, else the catalog's rank/popularity column (empty when it has none)."""
        if self.popular is not None:
            try:
                return self.popular.get()
            except FileError as exc:
                log.warning("popular items unavailable, using the catalog's ranking: %s", exc)
        return catalog.popular

    def check_ready(self) -> Catalog:
        """Return the loaded catalog once the source can answer too; raise UnavailableError otherwise."""
        catalog = self.current_catalog()
        self.recommender.check_ready()
        return catalog

    def current_catalog(self) -> Catalog:
        """Return the catalog in memory, or raise UnavailableError when none could be loaded yet."""
        try:
            return self.catalog.get()
        except FileError as exc:
            raise self._unavailable("catalog_unavailable",
                                    "The item catalog is not loaded yet; the error is logged.", exc) from exc
