"""The items recommended most in recent answers: the last resort's popular list when none is configured.

Every miss adds its answer's item ids to a count in the process (a dict update); a background thread adds
those counts every few seconds to hourly buckets every worker sees: Redis sorted sets when Redis is the
cache, else a SQLite file in DATA_DIR shared by the host's workers. Buckets older than the window are
dropped, so "recent" means the last RECENTLY_RECOMMENDED_HOURS hours. The top list is read at most every
TOP_SECONDS per worker, and only when a fallback needs it.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import redis
from redis.exceptions import RedisError

from app.caching.redis import SharedRedis, hash_tagged
from app.settings import ConfigError
from app.storage import SQLiteFile

log = logging.getLogger(__name__)

FLUSH_SECONDS = 5.0  # how late a count may reach the shared store: the list is for an outage, not for analytics
TOP_SECONDS = 30.0  # how long a worker keeps the top list it read
TOP_SIZE = 1000  # as many as the catalog's own popular list (catalog.POPULAR_LIST_SIZE)
FAILURES = (RedisError, sqlite3.Error, OSError, ConfigError)


class CountStore(Protocol):
    """Where the hourly counts are kept, shared by the workers."""

    def add(self, hour: int, counts: Mapping[str, int], keep_hours: int) -> None:
        """Add counts to the hour's bucket and drop buckets older than keep_hours."""

    def top(self, hours: range, limit: int) -> list[str]:
        """Return up to limit item ids, most counted first, over the buckets of those hours."""


class RedisCounts:
    """Hourly sorted sets in Redis (`{recs:recent}:HOUR`), each expiring after the window.

    The keys share a hash tag, so on a Redis Cluster they live on one node and ZUNIONSTORE may combine them.
    """

    def __init__(self, client: redis.Redis | SharedRedis, prefix: str = hash_tagged("recs:recent") + ":") -> None:
        self.client = client
        self.prefix = prefix

    def add(self, hour: int, counts: Mapping[str, int], keep_hours: int) -> None:
        key = f"{self.prefix}{hour}"
        pipe = self.client.pipeline(transaction=False)
        for item_id, n in counts.items():
            pipe.zincrby(key, n, item_id)
        pipe.expire(key, (keep_hours + 1) * 3600)
        pipe.execute()

    def top(self, hours: range, limit: int) -> list[str]:
        keys = [f"{self.prefix}{h}" for h in hours]
        union = f"{self.prefix}top:{os.getpid()}"  # one scratch key per worker, gone within a minute
        pipe = self.client.pipeline(transaction=False)
        pipe.zunionstore(union, keys)
        pipe.zrevrange(union, 0, limit - 1)
        pipe.expire(union, 60)
        _, ids, _ = pipe.execute()
        return [i.decode() if isinstance(i, bytes) else i for i in ids]


class SQLiteCounts:
    """Hourly counts in a SQLite file in DATA_DIR, shared by the host's workers."""

    def __init__(self, path: str) -> None:
        self._file = SQLiteFile(path, "DATA_DIR", "CREATE TABLE IF NOT EXISTS recent (hour INTEGER NOT NULL, "
                                "item TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (hour, item)) WITHOUT ROWID")

    def add(self, hour: int, counts: Mapping[str, int], keep_hours: int) -> None:
        db = self._file.connection()
        with db:  # one transaction: one fsync for the whole batch
            db.execute("BEGIN")
            db.executemany("INSERT INTO recent (hour, item, n) VALUES (?, ?, ?) "
                           "ON CONFLICT (hour, item) DO UPDATE SET n = n + excluded.n",
                           [(hour, item_id, n) for item_id, n in counts.items()])
            db.execute("DELETE FROM recent WHERE hour < ?", (hour - keep_hours,))

    def top(self, hours: range, limit: int) -> list[str]:
        rows = self._file.connection().execute(
            "SELECT item FROM recent WHERE hour >= ? AND hour < ? GROUP BY item ORDER BY SUM(n) DESC, item LIMIT ?",
            (hours.start, hours.stop, limit)).fetchall()
        return [item for (item,) in rows]


class RecentlyRecommended:
    """Count the items of recent answers and tell the most recommended; a store failure never reaches a request."""

    def __init__(self, store: CountStore, keep_hours: int = 24, flush_seconds: float = FLUSH_SECONDS,
                 top_seconds: float = TOP_SECONDS, clock: Callable[[], float] = time.time,
                 start_flusher: bool = True) -> None:
        self.store = store
        self.keep_hours = keep_hours
        self.flush_seconds = flush_seconds
        self.top_seconds = top_seconds
        self._clock = clock
        self._start_flusher = start_flusher
        self._pending: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._flusher_pid = 0  # the process whose flusher runs (gunicorn forks after create_app)
        self._top: list[str] = []
        self._top_read_at = float("-inf")
        self._top_lock = threading.Lock()
        self._failing = False

    def count(self, item_ids: Iterable[str]) -> None:
        """Count one answer's items (the request path: a dict update; the store is written in the background)."""
        with self._lock:
            self._pending.update(item_ids)
            if self._start_flusher and self._flusher_pid != os.getpid():
                self._flusher_pid = os.getpid()
                threading.Thread(target=_flush_forever, args=(weakref.ref(self),), name="recent-counts",
                                 daemon=True).start()

    def flush(self) -> None:
        """Add the counts gathered since the last flush to the shared store."""
        with self._lock:
            pending, self._pending = self._pending, Counter()
        if pending:
            self._guarded("write", lambda: self.store.add(self._hour(), pending, self.keep_hours))

    def top(self) -> list[str]:
        """Return the most recommended item ids of the window, read at most every top_seconds."""
        if self._clock() - self._top_read_at < self.top_seconds or not self._top_lock.acquire(blocking=False):
            return self._top  # fresh enough, or another thread is reading it: the last list will do
        try:
            self._top_read_at = self._clock()
            hour = self._hour()
            hours = range(hour - self.keep_hours + 1, hour + 1)
            top = self._guarded("read", lambda: self.store.top(hours, TOP_SIZE))
            if top is not None:
                self._top = top
        finally:
            self._top_lock.release()
        return self._top

    def _hour(self) -> int:
        return int(self._clock() // 3600)

    def _guarded(self, operation: str, call: Callable[[], list[str] | None]) -> list[str] | None:
        """Run a store call; log when the store starts and stops failing, not once per call."""
        try:
            result = call()
        except FAILURES as exc:
            if not self._failing:
                log.warning("recently recommended counts unavailable (%s: %s); the fallback uses the catalog's "
                            "order meanwhile", operation, type(exc).__name__)
            self._failing = True
            return None
        if self._failing:
            log.info("recently recommended counts available again")
        self._failing = False
        return result


def _flush_forever(ref: weakref.ReferenceType[RecentlyRecommended]) -> None:
    """Flush every few seconds while the counter lives (an app a test dropped ends its thread)."""
    while (counter := ref()) is not None:
        seconds = counter.flush_seconds
        del counter
        time.sleep(seconds)
        if (counter := ref()) is not None:
            counter.flush()
            del counter
