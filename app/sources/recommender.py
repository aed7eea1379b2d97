"""What every recommendation source answers, and the interface they share."""
from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

# When the current call to a source must have answered (time.monotonic()), or None for no deadline. The guard
# sets it around each call; a source that can cut its own work short reads it (Personalize: botocore's retries).
CALL_DEADLINE: ContextVar[float | None] = ContextVar("call_deadline", default=None)


@dataclass(frozen=True)
class Recommendation:
    """A source's answer for one user: item ids in rank order and Personalize's recommendation id."""

    item_ids: list[str]
    recommendation_id: str | None = None


@dataclass(frozen=True)
class Options:
    """What a request asks for beyond the user and the count: related items, a filter and its values, context."""

    item_id: str | None = None
    filter_arn: str | None = None
    filter_values: tuple[tuple[str, str], ...] = ()
    context: tuple[tuple[str, str], ...] = ()

    def cache_params(self) -> dict[str, Any]:
        """Return the options that change the answer, for the cache key (empty when there are none)."""
        params: dict[str, Any] = {}
        if self.item_id is not None:
            params["item_id"] = self.item_id
        if self.filter_arn is not None:
            params["filter"] = [self.filter_arn, list(self.filter_values)]
        if self.context:
            params["context"] = list(self.context)
        return params


NO_OPTIONS = Options()


class Recommender(Protocol):
    """A source of recommendations (Personalize, a batch output file, or a test fake)."""

    name: str  # reported in X-Recommendations-Source
    key: str  # identifies the source in cache keys, e.g. the campaign ARN

    def recommend(self, user_id: str | None, num_results: int, options: Options = NO_OPTIONS) -> Recommendation:
        """Return up to num_results item ids for the user (or related to options.item_id), best first."""

    def check_ready(self) -> None:
        """Raise UnavailableError when the source cannot answer yet (e.g. its file is not loaded)."""
