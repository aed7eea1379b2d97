"""The answer cache: each source's answer per (source, user, parameters), kept in flask-caching's backend."""
from __future__ import annotations

import hashlib
import logging
import pickle
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from cachelib.base import BaseCache
from cachetools import TTLCache
from redis.exceptions import RedisError

from .recommendation import Recommendation

log = logging.getLogger(__name__)

# What a cache backend raises when it is down or holds garbage: the cache is then skipped, never fatal.
CACHE_FAILURES = (RedisError, OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError)


@dataclass(frozen=True)
class CachedAnswer:
    recommendation: Recommendation
    stored_at: float


def cache_config(redis_url: str | None, cache_dir: str, threshold: int, ttl: int) -> dict[str, Any]:
    """Return flask-caching settings: Redis when a URL is given, else files shared by the host's workers."""
    if redis_url:
        return {
            "CACHE_TYPE": "RedisCache",
            "CACHE_REDIS_URL": redis_url,
            "CACHE_DEFAULT_TIMEOUT": ttl,
            # A Redis that hangs must cost a request milliseconds, not the whole budget.
            "CACHE_OPTIONS": {"socket_timeout": 0.25, "socket_connect_timeout": 0.25, "health_check_interval": 30},
        }
    return {
        "CACHE_TYPE": "FileSystemCache",
        "CACHE_DIR": cache_dir,
        "CACHE_THRESHOLD": threshold,
        "CACHE_DEFAULT_TIMEOUT": ttl,
    }


class AnswerCache:
    """Read and write answers; a backend failure is logged once and treated as a miss.

    With local_seconds, answers are also kept that long in this process, so the 2-3 calls Braze makes
    for one recipient within seconds cost one backend round trip per worker, not one each. The copy
    carries its stored_at, so freshness is judged exactly as for the shared entry.
    """

    def __init__(
        self, backend: BaseCache, ttl: int, stale_seconds: int = 0, local_seconds: float = 0, local_items: int = 0
    ) -> None:
        self.backend = backend
        self.ttl = ttl
        # Answers are kept past their TTL for stale-if-error, but only served fresh within it.
        self.keep_seconds = max(ttl, stale_seconds)
        self.failures = 0
        self._failing = {"read": False, "write": False}
        self._local: TTLCache[str, CachedAnswer] | None = None
        if local_seconds > 0 and local_items > 0:
            self._local = TTLCache(maxsize=local_items, ttl=min(local_seconds, ttl))
        self._local_lock = threading.Lock()  # cachetools caches are not thread-safe

    @staticmethod
    def key(source_key: str, user_id: str, params: Mapping[str, Any]) -> str:
        """Return a key that differs for every source, user and parameter set (and holds no user id)."""
        material = orjson.dumps([source_key, user_id, params], option=orjson.OPT_SORT_KEYS)
        return "recs:v1:" + hashlib.sha256(material).hexdigest()

    def get(self, key: str) -> CachedAnswer | None:
        """Return the stored answer, or None on a miss or a backend failure."""
        if self._local is not None:
            with self._local_lock:
                answer = self._local.get(key)
            if answer is not None and self.is_fresh(answer):
                return answer
        try:
            value = self.backend.get(key)
        except Exception as exc:  # noqa: BLE001 - down, or an entry a different release pickled: both a miss
            self._report("read", exc)
            return None
        self._report("read", None)
        if not isinstance(value, CachedAnswer):
            return None
        self._remember(key, value)
        return value

    def put(self, key: str, recommendation: Recommendation) -> None:
        """Store an answer (kept past its TTL for stale-if-error); a failure only costs a later miss."""
        answer = CachedAnswer(recommendation, time.time())
        self._remember(key, answer)
        try:
            self.backend.set(key, answer, timeout=self.keep_seconds)
        except CACHE_FAILURES as exc:
            self._report("write", exc)
            return
        self._report("write", None)

    def _remember(self, key: str, answer: CachedAnswer) -> None:
        if self._local is not None and self.is_fresh(answer):
            with self._local_lock:
                self._local[key] = answer

    def is_fresh(self, answer: CachedAnswer) -> bool:
        """Say whether the answer is younger than the TTL (older ones only serve when the source fails)."""
        return time.time() - answer.stored_at < self.ttl

    def max_age(self, answer: CachedAnswer) -> int:
        """Return how many more seconds the answer stays fresh (never more than the TTL, whatever the clocks)."""
        return max(0, min(self.ttl, int(answer.stored_at + self.ttl - time.time())))

    def _report(self, operation: str, exc: Exception | None) -> None:
        # Log when the cache as a whole starts and stops failing, not once per request during an outage.
        if exc is not None:
            self.failures += 1
        was_failing = any(self._failing.values())
        self._failing[operation] = exc is not None
        if exc is not None and not was_failing:
            log.error("answer cache failing (%s), serving without it: %s", operation, exc)
        elif was_failing and not any(self._failing.values()):
            log.warning("answer cache works again")
