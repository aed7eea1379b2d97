"""The durable queue of events waiting for PutEvents, in the store the service already has.

Redis when CACHE_REDIS_URL is set (every worker of every host shares it), else a SQLite file under DATA_DIR
(the host's workers share it). Both keep three things: the events waiting, each with the time it may next be
claimed (`due`); their bodies; and the ids seen in the last DEDUP_SECONDS, so an event a client sends again
(a retried request) is neither queued nor sent twice.

A drainer claims events by moving their `due` a lease ahead, atomically, so two workers never claim the same
event; one that dies mid-send leaves its events to be claimed again once the lease ends. Sent (or refused)
events are removed; events whose send failed are pushed back by a delay.
"""
from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import orjson
import redis
from redis.exceptions import RedisError

from app.events.putevents import Event
from app.storage import SQLiteFile

DEDUP_SECONDS = 3600  # a retry within the hour is recognised; Personalize itself ignores a repeated eventId
# What a store raises when it is down or its file cannot be written: the request then answers 503.
STORE_FAILURES = (RedisError, sqlite3.Error, OSError)


class EventQueue(Protocol):
    def put(self, events: Sequence[Event]) -> int:
        """Queue the events not seen within DEDUP_SECONDS; return how many were queued."""

    def claim(self, limit: int, lease_seconds: float) -> list[Event]:
        """Return up to limit due events, oldest first, not claimable by others for lease_seconds."""

    def done(self, event_ids: Sequence[str]) -> None:
        """Remove events that were sent (or refused for good)."""

    def retry_later(self, event_ids: Sequence[str], delay: float) -> None:
        """Make claimed events due again after delay seconds."""

    def depth(self) -> int:
        """Return how many events wait."""


def encode_event(event: Event) -> bytes:
    """Return the event as JSON: data only, read back with decode_event."""
    return orjson.dumps({"u": event.user_id, "s": event.session_id, **event.to_api()})


def decode_event(data: bytes | str) -> Event | None:
    """Return the event encode_event wrote, or None for anything else."""
    try:
        value = orjson.loads(data)
        return Event(user_id=value["u"], session_id=value["s"], event_type=value["eventType"],
                     sent_at=float(value["sentAt"]), event_id=value["eventId"], item_id=value.get("itemId"),
                     event_value=value.get("eventValue"), recommendation_id=value.get("recommendationId"),
                     impression=tuple(value.get("impression", ())), properties=value.get("properties"))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


# Every key carries one hash tag, so in a Redis Cluster they live in one slot and a script may use them all.
REDIS_KEYS = ("{recs-events}:due", "{recs-events}:body", "{recs-events}:seen")
PUT_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])
local queued = 0
for i = 3, #ARGV, 2 do
  if redis.call('ZADD', KEYS[3], 'NX', ARGV[1], ARGV[i]) == 1 then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
    queued = queued + 1
  end
end
return queued
"""
CLAIM_SCRIPT = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids == 0 then return {} end
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], 'XX', ARGV[3], id) end
return redis.call('HMGET', KEYS[2], unpack(ids))
"""
DONE_SCRIPT = """
redis.call('ZREM', KEYS[1], unpack(ARGV))
redis.call('HDEL', KEYS[2], unpack(ARGV))
return 0
"""


class RedisEventQueue:
    """The queue in Redis: a sorted set of ids by due time, a hash of bodies, a sorted set of ids seen."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._put = client.register_script(PUT_SCRIPT)
        self._claim = client.register_script(CLAIM_SCRIPT)
        self._done = client.register_script(DONE_SCRIPT)

    def put(self, events: Sequence[Event]) -> int:
        now = time.time()
        args: list[Any] = [now, now - DEDUP_SECONDS]
        for event in events:
            args += [event.event_id, encode_event(event)]
        return int(self._put(keys=REDIS_KEYS, args=args))

    def claim(self, limit: int, lease_seconds: float) -> list[Event]:
        now = time.time()
        bodies = self._claim(keys=REDIS_KEYS[:2], args=[now, limit, now + lease_seconds])
        return [event for body in bodies if body is not None and (event := decode_event(body)) is not None]

    def done(self, event_ids: Sequence[str]) -> None:
        if event_ids:
            self._done(keys=REDIS_KEYS[:2], args=list(event_ids))

    def retry_later(self, event_ids: Sequence[str], delay: float) -> None:
        if event_ids:
            due = time.time() + delay
            self.client.zadd(REDIS_KEYS[0], {event_id: due for event_id in event_ids}, xx=True)

    def depth(self) -> int:
        return int(self.client.zcard(REDIS_KEYS[0]))


SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS queued (event_id TEXT PRIMARY KEY, body BLOB NOT NULL, due REAL NOT NULL);
CREATE INDEX IF NOT EXISTS queued_due ON queued (due);
CREATE TABLE IF NOT EXISTS seen (event_id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS seen_at ON seen (at);
"""


class SQLiteEventQueue:
    """The queue in a SQLite file (WAL, synchronous writes) shared by the host's workers."""

    def __init__(self, path: str) -> None:
        self.file = SQLiteFile(path, "DATA_DIR", SQLITE_SCHEMA)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the block as one write transaction (one writer at a time across the host's workers)."""
        connection = self.file.connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def put(self, events: Sequence[Event]) -> int:
        now = time.time()
        queued = 0
        with self._transaction() as connection:
            connection.execute("DELETE FROM seen WHERE at < ?", (now - DEDUP_SECONDS,))
            for event in events:
                if connection.execute("INSERT OR IGNORE INTO seen VALUES (?, ?)", (event.event_id, now)).rowcount:
                    connection.execute("INSERT OR REPLACE INTO queued VALUES (?, ?, ?)",
                                       (event.event_id, encode_event(event), now))
                    queued += 1
        return queued

    def claim(self, limit: int, lease_seconds: float) -> list[Event]:
        now = time.time()
        with self._transaction() as connection:
            rows = connection.execute("SELECT event_id, body FROM queued WHERE due <= ? ORDER BY due LIMIT ?",
                                      (now, limit)).fetchall()
            connection.executemany("UPDATE queued SET due = ? WHERE event_id = ?",
                                   [(now + lease_seconds, event_id) for event_id, _ in rows])
        return [event for _, body in rows if (event := decode_event(body)) is not None]

    def done(self, event_ids: Sequence[str]) -> None:
        with self._transaction() as connection:
            connection.executemany("DELETE FROM queued WHERE event_id = ?", [(i,) for i in event_ids])

    def retry_later(self, event_ids: Sequence[str], delay: float) -> None:
        due = time.time() + delay
        with self._transaction() as connection:
            connection.executemany("UPDATE queued SET due = ? WHERE event_id = ?", [(due, i) for i in event_ids])

    def depth(self) -> int:
        return int(self.file.connection().execute("SELECT count(*) FROM queued").fetchone()[0])
