"""Recommendations from a Personalize batch inference job, read one user at a time from the shared store.

A job's answers are loaded into the batch store (app/sources/batch_store.py: Redis, or SQLite files under
DATA_DIR) by `flask --app wsgi load-batch` or by the service itself (app/sources/batch_load.py); a worker holds
only the pointer to the version it serves, so its memory does not grow with the number of users in the job.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from app.catalog.files import FileError
from app.errors import Unavailable
from app.sources.recommender import CALL_DEADLINE, NO_OPTIONS, Options, Recommendation

if TYPE_CHECKING:
    from app.sources.batch_load import BatchLoader
    from app.sources.batch_store import BatchStore, Version

log = logging.getLogger(__name__)

POINTER_SECONDS = 1.0  # how long a worker trusts the version it read; the old version outlives this (GRACE)
FIRST_WAIT_SECONDS = 1.0  # a request outside the guard (the fallback) waits this long for a first version
SEPARATOR = "\n"  # between item ids in a stored answer: the most compact form that needs no parsing


def store_key(user_id: str | None, item_id: str | None) -> bytes:
    """Return the store's key of a user's answer, or of an item's related items when item_id is given."""
    return b"i:" + item_id.encode() if item_id else b"u:" + (user_id or "").encode()


def parse_line(line: bytes) -> tuple[bytes, bytes] | str | None:
    """Parse one JSON line of {"input": {"userId" or "itemId"}, "output": {"recommendedItems"}, "error"}.

    Return (store key, stored answer), None for a blank line, or a sentence saying why the line is unusable.
    """
    if not line.strip():
        return None
    try:
        record: Any = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return f"not valid JSON ({exc})"
    if not isinstance(record, dict):
        return "no input.userId or input.itemId"
    given, output = record.get("input"), record.get("output")
    user_id = given.get("userId") if isinstance(given, dict) else None
    item_id = given.get("itemId") if isinstance(given, dict) else None
    items = output.get("recommendedItems") if isinstance(output, dict) else None
    if isinstance(user_id, str) and user_id:
        key = b"u:" + user_id.encode()
    elif isinstance(item_id, str) and item_id:
        key = b"i:" + item_id.encode()
    else:
        return "no input.userId or input.itemId"
    if record.get("error"):
        return f"Personalize reported an error for {(user_id or item_id)!r}"
    if not isinstance(items, list):
        return "no output.recommendedItems"
    joined = SEPARATOR.join(map(str, items))
    if joined.count(SEPARATOR) != max(len(items) - 1, 0):
        return "an item id holds a line break"
    return key, joined.encode()


def decode(answer: bytes | None) -> list[str]:
    """Return the item ids of a stored answer (none for a user the job lacks)."""
    return answer.decode().split(SEPARATOR) if answer else []


class BatchRecommender:
    """Answer from the batch job's version the store points at; a user the job lacks gets no items.

    Filters and context cannot apply to precomputed answers and are ignored here. The answer is already in a
    store every worker shares, so the service neither caches it again nor counts it (`precomputed`).
    """

    name = "batch"
    precomputed = True

    def __init__(self, store: BatchStore, loader: BatchLoader, uri: str,
                 pointer_seconds: float = POINTER_SECONDS) -> None:
        self.store = store
        self.loader = loader
        self.key = uri
        self.pointer_seconds = pointer_seconds
        self._version: tuple[Version | None, float] = (None, 0.0)
        self._unavailable = Unavailable()

    def recommend(self, user_id: str | None, num_results: int, options: Options = NO_OPTIONS) -> Recommendation:
        """Return the batch items for the related item if one is asked for, else for the user."""
        version = self.version()
        if version is None:
            version = self._wait_for_first()
        try:
            answer = self.store.get(version, store_key(user_id, options.item_id))
        except self.store.errors as exc:
            raise self._unavailable("batch_store_unavailable",
                                    "The batch store cannot be read; the error is logged.", exc) from exc
        return Recommendation(item_ids=decode(answer)[:num_results])

    def check_ready(self) -> None:
        """Raise UnavailableError until a version of the job is in the store (starting this worker's loader).

        The call that starts the loader gives it FIRST_WAIT_SECONDS, so a small job is ready at the first look.
        """
        if self.loader.start():
            self.loader.attempted.wait(FIRST_WAIT_SECONDS)
        if self.version() is None:
            reason = self.loader.last_error or "the first version is being loaded"
            raise self._unavailable("recommendations_unavailable",
                                    "The batch recommendations are not loaded yet; the error is logged.",
                                    FileError(reason))

    def ends_within(self, seconds: float) -> bool:
        """A store read ends by its own timeouts: the guard calls in the request's thread."""
        return True

    def version(self) -> Version | None:
        """Return the version served, re-read from the store once pointer_seconds have passed."""
        version, expires = self._version
        now = time.monotonic()
        if now < expires:
            return version
        try:
            version = self.store.current()
        except self.store.errors as exc:
            if version is None:
                raise self._unavailable("batch_store_unavailable",
                                        "The batch store cannot be read; the error is logged.", exc) from exc
            log.warning("batch store pointer unreadable, keeping version %s: %s", version.id, exc)
        self._version = (version, now + self.pointer_seconds if version is not None else now)
        if version is not None:
            self.loader.noticed(version)
        return version

    def _wait_for_first(self) -> Version:
        """Start the loader and wait, within the request's deadline, for the first version to be complete."""
        self.loader.start()
        deadline = CALL_DEADLINE.get() or time.monotonic() + FIRST_WAIT_SECONDS
        while (version := self.version()) is None:
            if time.monotonic() >= deadline:
                raise self._unavailable("recommendations_unavailable",
                                        "The batch recommendations are not loaded yet; the error is logged.",
                                        FileError(self.loader.last_error or "the first version is being loaded"))
            time.sleep(0.02)
        return version
