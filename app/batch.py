"""Recommendations from a Personalize batch inference output file, for serving without a campaign."""
from __future__ import annotations

import logging
from typing import Any

import orjson

from .errors import UnavailableError
from .recommendation import Recommendation
from .sources import Reloadable, SourceError

log = logging.getLogger(__name__)

BatchAnswers = dict[str, list[str]]


def parse_batch_output(data: bytes, fmt: str, uri: str) -> BatchAnswers:
    """Parse JSON lines of {"input": {"userId"}, "output": {"recommendedItems"}, "error"} into items by user."""
    if fmt != "jsonl":
        raise SourceError(f"{uri}: batch inference output is JSON lines; name it .jsonl or .json.out (optionally .gz).")
    answers: BatchAnswers = {}
    skipped: list[str] = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record: Any = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise SourceError(f"{uri}: line {number} is not valid JSON ({exc}).") from exc
        user_id = _get(record, "input", "userId")
        items = _get(record, "output", "recommendedItems")
        if not isinstance(user_id, str) or not user_id:
            skipped.append(f"line {number}: no input.userId")
        elif isinstance(record, dict) and record.get("error"):
            skipped.append(f"line {number}: Personalize reported an error for {user_id!r}")
        elif not isinstance(items, list):
            skipped.append(f"line {number}: no output.recommendedItems")
        else:
            answers[user_id] = [str(item) for item in items]
    if skipped:
        log.warning("batch output %s: %d lines skipped; first: %s", uri, len(skipped), "; ".join(skipped[:10]))
    if not answers:
        raise SourceError(f"{uri}: no usable lines ({len(skipped)} skipped).")
    return answers


def _get(record: Any, outer: str, inner: str) -> Any:
    part = record.get(outer) if isinstance(record, dict) else None
    return part.get(inner) if isinstance(part, dict) else None


class BatchRecommender:
    """Answer from the batch output held in memory; a user the file lacks gets no items."""

    name = "batch"

    def __init__(self, answers: Reloadable[BatchAnswers]) -> None:
        self.answers = answers
        self.key = answers.source.uri

    def recommend(self, user_id: str, num_results: int) -> Recommendation:
        """Return the user's batch items, cut to num_results."""
        return Recommendation(item_ids=self._current().get(user_id, [])[:num_results])

    def check_ready(self) -> None:
        """Raise UnavailableError unless the batch output is loaded."""
        self._current()

    def _current(self) -> BatchAnswers:
        try:
            return self.answers.get()
        except SourceError as exc:
            raise UnavailableError(
                f"The batch recommendations are not loaded: {exc}", code="recommendations_unavailable"
            ) from exc
