"""What every recommendation source answers, and the interface they share."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Recommendation:
    """A source's answer for one user: item ids in rank order and Personalize's recommendation id."""

    item_ids: list[str]
    recommendation_id: str | None = None


class Recommender(Protocol):
    """A source of recommendations (Personalize, a batch output file, or a test fake)."""

    name: str  # reported in X-Recommendations-Source
    key: str  # identifies the source in cache keys, e.g. the campaign ARN

    def recommend(self, user_id: str, num_results: int) -> Recommendation:
        """Return up to num_results item ids for the user, best first."""

    def check_ready(self) -> None:
        """Raise UnavailableError when the source cannot answer yet (e.g. its file is not loaded)."""
