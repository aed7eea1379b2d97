"""What ingest-currents has already done: the Currents files finished and the event ids sent.

A rerun skips the files marked done; an event id sent before (the same event delivered again in another file,
as Braze's at-least-once delivery allows) is skipped too, for CURRENTS_DEDUP_DAYS after it was sent. Kept in
Redis when CACHE_REDIS_URL is set (single-key commands only, so a Redis Cluster works), else in
$DATA_DIR/currents.sqlite3 (private, 0600).
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any, Protocol

from app.storage import SQLiteFile

DAY = 86_400
FILE_MARK_DAYS = 400  # a file once done stays done for longer than anyone keeps Currents files around
SQLITE_CHUNK = 500  # ids per SELECT ... IN (...), under SQLite's limit on bound parameters
SCHEMA = """
CREATE TABLE IF NOT EXISTS currents_files (file TEXT PRIMARY KEY, done_at INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS currents_events (event_id TEXT PRIMARY KEY, sent_at INTEGER NOT NULL) WITHOUT ROWID;
"""


class Ledger(Protocol):
    """The store of finished files and sent event ids."""

    def done(self, files: Iterable[str]) -> set[str]:
        """Return the files (keys) among these that a run finished."""

    def sent(self, event_ids: Sequence[str]) -> set[str]:
        """Return the ids among these sent within the retention."""

    def record(self, event_ids: Sequence[str], file: str | None = None) -> None:
        """Remember ids as sent and, when given, the file as finished (after its last events)."""

    def close(self) -> None:
        """Let go of the store's connection."""


class SQLiteLedger:
    """The ledger in a private SQLite file; sent ids older than the retention are dropped when it opens."""

    def __init__(self, path: str, retention_days: int, clock: Callable[[], float] = time.time) -> None:
        self._file = SQLiteFile(path, "DATA_DIR", SCHEMA)
        self._clock = clock
        self._keep = retention_days * DAY
        db = self._file.connection()
        db.execute("DELETE FROM currents_events WHERE sent_at < ?", (int(clock()) - self._keep,))

    def done(self, files: Iterable[str]) -> set[str]:
        db = self._file.connection()
        return {file for file in files
                if db.execute("SELECT 1 FROM currents_files WHERE file = ?", (file,)).fetchone()}

    def sent(self, event_ids: Sequence[str]) -> set[str]:
        db = self._file.connection()
        since = int(self._clock()) - self._keep
        found: set[str] = set()
        for start in range(0, len(event_ids), SQLITE_CHUNK):
            chunk = event_ids[start:start + SQLITE_CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(row[0] for row in db.execute(
                f"SELECT event_id FROM currents_events WHERE sent_at >= ? AND event_id IN ({marks})",  # noqa: S608
                (since, *chunk)))
        return found

    def record(self, event_ids: Sequence[str], file: str | None = None) -> None:
        db = self._file.connection()
        now = int(self._clock())
        with db:
            db.execute("BEGIN")
            db.executemany("INSERT OR REPLACE INTO currents_events (event_id, sent_at) VALUES (?, ?)",
                           [(event_id, now) for event_id in event_ids])
            if file is not None:
                db.execute("INSERT OR REPLACE INTO currents_files (file, done_at) VALUES (?, ?)", (file, now))

    def close(self) -> None:
        self._file.connection().close()


class RedisLedger:
    """The ledger in Redis: one key per finished file, one hash of sent ids per day, each expiring on its own.

    Every command names one key, so the same code runs against one Redis or a Redis Cluster.
    """

    def __init__(self, client: Any, retention_days: int, prefix: str = "recs:currents:",
                 clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._days = retention_days
        self._prefix = prefix
        self._clock = clock

    def _file_key(self, file: str) -> str:
        return f"{self._prefix}file:{hashlib.sha256(file.encode()).hexdigest()[:40]}"

    def _day_key(self, at: float) -> str:
        return f"{self._prefix}sent:{datetime.fromtimestamp(at, timezone.utc):%Y-%m-%d}"

    def done(self, files: Iterable[str]) -> set[str]:
        files = list(files)
        pipe = self._client.pipeline(transaction=False)
        for file in files:
            pipe.exists(self._file_key(file))
        return {file for file, found in zip(files, pipe.execute()) if found}

    def sent(self, event_ids: Sequence[str]) -> set[str]:
        if not event_ids:
            return set()
        now = self._clock()
        # A day's hash lives retention + 1 days, so today's and the retention's whole days are all looked at.
        days = [self._day_key(now - n * DAY) for n in range(self._days + 1)]
        pipe = self._client.pipeline(transaction=False)
        for day in days:
            pipe.hmget(day, list(event_ids))
        found: set[str] = set()
        for values in pipe.execute():
            found.update(event_id for event_id, value in zip(event_ids, values) if value is not None)
        return found

    def record(self, event_ids: Sequence[str], file: str | None = None) -> None:
        now = self._clock()
        pipe = self._client.pipeline(transaction=False)
        if event_ids:
            day = self._day_key(now)
            pipe.hset(day, mapping=dict.fromkeys(event_ids, 1))
            pipe.expire(day, (self._days + 1) * DAY)
        if file is not None:
            pipe.set(self._file_key(file), file, ex=FILE_MARK_DAYS * DAY)
        pipe.execute()

    def close(self) -> None:
        self._client.close()
