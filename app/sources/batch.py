"""Recommendations from a Personalize batch inference output file, for serving without a campaign."""
from __future__ import annotations

import logging
from typing import Any

import orjson

from app.catalog.files import FileError, Reloadable
from app.errors import Unavailable
from app.sources.recommender import NO_OPTIONS, Options, Recommendation

log = logging.getLogger(__name__)

# ("user", userId) or ("item", itemId) -> item ids: batch jobs answer users, related-items jobs answer items.
BatchAnswers = dict[tuple[str, str], list[str]]


def parse_batch_output(data: bytes, fmt: str, uri: str) -> BatchAnswers:
    """Parse JSON lines of {"input": {"userId" or "itemId"}, "output": {"recommendedItems"}, "error"}."""
    if fmt != "jsonl":
        raise FileError(f"{uri}: batch inference output is JSON lines; name it .jsonl or .json.out (optionally .gz).")
    answers: BatchAnswers = {}
    skipped: list[str] = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record: Any = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise FileError(f"{uri}: line {number} is not valid JSON ({exc}).") from exc
        user_id, item_id = _get(record, "input", "userId"), _get(record, "input", "itemId")
        key = ("user", user_id) if isinstance(user_id, str) and user_id else (
            ("item", item_id) if isinstance(item_id, str) and item_id else None)
        items = _get(record, "output", "recommendedItems")
        if key is None:
            skipped.append(f"line {number}: no input.userId or input.itemId")
        elif isinstance(record, dict) and record.get("error"):
            skipped.append(f"line {number}: Personalize reported an error for {key[1]!r}")
        elif not isinstance(items, list):
            skipped.append(f"line {number}: no output.recommendedItems")
        else:
            answers[key] = [str(item) for item in items]
    if skipped:
        log.warning("batch output %s: %d lines skipped; first: %s", uri, len(skipped), "; ".join(skipped[:10]))
    if not answers:
        raise FileError(f"{uri}: no usable lines ({len(skipped)} skipped).")
    return answers


def _get(record: Any, outer: str, inner: str) -> Any:
    part = record.get(outer) if isinstance(record, dict) else None
    return part.get(inner) if isinstance(part, dict) else None


class BatchRecommender:
    """Answer from the batch output held in memory; a user the file lacks gets no items.

    Filters and context cannot apply to precomputed answers and are ignored here.
    """

    name = "batch"

    def __init__(self, answers: Reloadable[BatchAnswers]) -> None:
        self.answers = answers
        self.key = answers.source.uri
        self._unavailable = Unavailable()

    def recommend(self, user_id: str | None, num_results: int, options: Options = NO_OPTIONS) -> Recommendation:
        """Return the batch items for the related item if one is asked for, else for the user."""
        key = ("item", options.item_id) if options.item_id else ("user", user_id or "")
        return Recommendation(item_ids=self._current().get(key, [])[:num_results])

    def check_ready(self) -> None:
        """Raise UnavailableError unless the batch output is loaded."""
        self._current()

    def _current(self) -> BatchAnswers:
        try:
            return self.answers.get()
        except FileError as exc:
            raise self._unavailable("recommendations_unavailable",
                                    "The batch recommendations are not loaded yet; the error is logged.", exc) from exc
