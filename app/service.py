"""The request path's logic: cache, then the recommendation source, then the catalog join."""
from __future__ import annotations

from dataclasses import dataclass

from .cache import AnswerCache
from .catalog import Catalog, Item
from .errors import UnavailableError
from .recommendation import Recommender
from .sources import Reloadable, SourceError


@dataclass(frozen=True)
class Result:
    """The items to return and what the response headers say about them."""

    items: list[Item]
    recommendation_id: str | None
    cache_hit: bool
    max_age: int
    source: str


class RecommendationService:
    """Answer GET /recommendations: a cached answer if there is one, else the source's; joined to the catalog."""

    def __init__(self, recommender: Recommender, catalog: Reloadable[Catalog], cache: AnswerCache) -> None:
        self.recommender = recommender
        self.catalog = catalog
        self.cache = cache

    def recommend(self, user_id: str, num_results: int) -> Result:
        """Return up to num_results catalog items for the user, in the source's order."""
        catalog = self.current_catalog()
        key = self.cache.key(self.recommender.key, user_id, {"num_results": num_results})
        cached = self.cache.get(key)
        if cached is not None:
            recommendation = cached.recommendation
        else:
            recommendation = self.recommender.recommend(user_id, num_results)
            self.cache.put(key, recommendation)
        return Result(
            items=catalog.join(recommendation.item_ids),
            recommendation_id=recommendation.recommendation_id,
            cache_hit=cached is not None,
            max_age=self.cache.max_age(cached),
            source=self.recommender.name,
        )

    def check_ready(self) -> Catalog:
        """Return the loaded catalog once the source can answer too; raise UnavailableError otherwise."""
        catalog = self.current_catalog()
        self.recommender.check_ready()
        return catalog

    def current_catalog(self) -> Catalog:
        """Return the catalog in memory, or raise UnavailableError when none could be loaded yet."""
        try:
            return self.catalog.get()
        except SourceError as exc:
            raise UnavailableError(f"The item catalog is not loaded: {exc}", code="catalog_unavailable") from exc
