"""Where a batch job's answers live: Redis (one node or a cluster) or SQLite files every worker of a host shares.

Both keep whole versions side by side and switch with one write: a reader follows the pointer to a version
that is complete, so it sees the old job until the new one is in, then only the new one, never a mix. An old
version is removed GRACE_SECONDS after the switch, longer than a reader trusts the pointer it read.

Redis, cluster-safe (only single-key commands and non-transactional pipelines, which a cluster client splits
by slot): the pointer `recs:batch:current` holds the served version's description; a version's answers are
in `buckets` hashes `recs:batch:<version>:<bucket>` (bucket = crc32(key) % buckets), so an old version is
deleted by naming its keys, never by KEYS or SCAN. `recs:batch:versions` lists the versions written.

SQLite (chosen by measurement over LMDB, README "Before a big send"): one file per version under
DATA_DIR/batch, opened read-only and immutable by readers; pages are read into a small per-connection cache,
where LMDB's memory map grew each reader's RSS with every page touched. The pointer is the file `current.json`,
replaced atomically.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import redis

from app.storage import private_file, private_folder

log = logging.getLogger(__name__)

GRACE_SECONDS = 10.0  # > batch.POINTER_SECONDS + a request's budget: no reader still uses the old version
BUCKETS = 4096  # Redis hashes per version: small enough to delete by name, large enough to keep each hash small
LOCK_SECONDS = 60  # a Redis load lock not renewed this long (its loader died) is free again
DELETE_BATCH = 512  # keys unlinked per pipeline when an old version goes
WRITE_ATTEMPTS = 4  # tries of one pipeline of a load before it fails
FLUSH_ANSWERS = 50_000  # answers gathered before a pipeline goes to Redis (about 10 MB)


@dataclass(frozen=True)
class Version:
    """A complete version of a job in the store."""

    id: str  # the job's version: a hash of its URI and its files' names, sizes and versions
    uri: str
    users: int  # answers stored (users and items)
    buckets: int = 0  # Redis only
    switched_at: float = 0.0  # when it became the one served (time.time())

    def __len__(self) -> int:
        return self.users

    def dumps(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def loads(cls, raw: bytes | str) -> Version:
        return cls(**json.loads(raw))


class Writer(Protocol):
    def put(self, answers: list[tuple[bytes, bytes]]) -> None:
        """Store answers (key, items) in the version being written."""

    def finish(self, users: int) -> Version:
        """Make the version complete and the one served; return it."""

    def abort(self) -> None:
        """Drop what was written (the version never becomes served)."""


class BatchStore(Protocol):
    kind: str
    errors: tuple[type[Exception], ...]  # what a read may raise when the store is down

    def current(self) -> Version | None:
        """Return the version served, or None before the first one is complete."""

    def get(self, version: Version, key: bytes) -> bytes | None:
        """Return the stored answer of key in version, or None."""

    def lock(self) -> contextlib.AbstractContextManager[bool]:
        """Hold the store's load lock (once per host or cluster); yield False when another loader holds it."""

    def begin(self, version_id: str, uri: str) -> Writer:
        """Start writing a version from scratch (what an interrupted load left of it is overwritten)."""

    def remove_old(self, keep: Version, grace: float) -> list[str]:
        """Remove every version but keep, grace seconds after keep was switched to; return their ids."""


def _wait_grace(keep: Version, grace: float, renew: Callable[[], None] | None = None) -> None:
    """Sleep until grace seconds have passed since keep was switched to, renewing a load lock meanwhile."""
    while (left := keep.switched_at + grace - time.time()) > 0:
        time.sleep(min(left, LOCK_SECONDS / 4))
        if renew is not None:
            renew()


# -- Redis --------------------------------------------------------------------------------------------------------


class RedisBatchStore:
    """The job's answers in Redis hashes, named so an old version can be deleted key by key."""

    kind = "redis"
    errors: tuple[type[Exception], ...] = (redis.RedisError,)

    def __init__(self, client: Any, prefix: str = "recs:batch", buckets: int = BUCKETS) -> None:
        self.client = client
        self.prefix = prefix
        self.buckets = buckets
        self.pointer = f"{prefix}:current"
        self.versions = f"{prefix}:versions"
        self._held: Any = None  # the load lock, while this process holds it

    def current(self) -> Version | None:
        raw = self.client.get(self.pointer)
        return Version.loads(raw) if raw else None

    def get(self, version: Version, key: bytes) -> bytes | None:
        return self.client.hget(self.bucket_key(version.id, zlib.crc32(key) % version.buckets), key)  # type: ignore[no-any-return]

    def bucket_key(self, version_id: str, bucket: int) -> str:
        return f"{self.prefix}:{version_id}:{bucket}"

    def meta_key(self, version_id: str) -> str:
        return f"{self.prefix}:{version_id}:meta"

    @contextlib.contextmanager
    def lock(self) -> Iterator[bool]:
        lock = self.client.lock(f"{self.prefix}:lock", timeout=LOCK_SECONDS, blocking=False)
        if not lock.acquire(blocking=False):
            yield False
            return
        self._held = lock
        try:
            yield True
        finally:
            self._held = None
            with contextlib.suppress(redis.exceptions.LockError):
                lock.release()

    def renew_lock(self) -> None:
        """Keep the load lock while a long load runs (a dead loader's lock lapses after LOCK_SECONDS)."""
        if self._held is not None:
            self._held.reacquire()

    def begin(self, version_id: str, uri: str) -> RedisWriter:
        self._delete(version_id, self.buckets)  # a rerun after an interruption starts the version afresh
        self.client.set(self.meta_key(version_id), Version(version_id, uri, 0, self.buckets).dumps())
        self.client.sadd(self.versions, version_id)
        return RedisWriter(self, version_id, uri)

    def remove_old(self, keep: Version, grace: float) -> list[str]:
        old = [member.decode() for member in self.client.smembers(self.versions) if member.decode() != keep.id]
        if old:
            _wait_grace(keep, grace, self.renew_lock)
        for version_id in old:
            raw = self.client.get(self.meta_key(version_id))
            self._delete(version_id, Version.loads(raw).buckets if raw else self.buckets)
            self.client.delete(self.meta_key(version_id))
            self.client.srem(self.versions, version_id)
        return old

    def _delete(self, version_id: str, buckets: int) -> None:
        for start in range(0, buckets, DELETE_BATCH):
            pipe = self.client.pipeline(transaction=False)
            for bucket in range(start, min(start + DELETE_BATCH, buckets)):
                pipe.unlink(self.bucket_key(version_id, bucket))  # freed by Redis in the background
            pipe.execute()


class RedisWriter:
    """Write a version's answers in pipelines of HSETs, each setting many fields of one bucket.

    Answers are gathered by bucket until FLUSH_ANSWERS are waiting: with 4096 buckets, a flush sends about a
    dozen fields per HSET, so the pipeline carries a fraction of the commands one HSET per user would.
    """

    def __init__(self, store: RedisBatchStore, version_id: str, uri: str) -> None:
        self.store, self.version_id, self.uri = store, version_id, uri
        self._waiting: dict[int, dict[bytes, bytes]] = {}
        self._count = 0

    def put(self, answers: list[tuple[bytes, bytes]]) -> None:
        buckets, waiting = self.store.buckets, self._waiting
        for key, value in answers:
            waiting.setdefault(zlib.crc32(key) % buckets, {})[key] = value
        self._count += len(answers)
        if self._count >= FLUSH_ANSWERS:
            self._flush()

    def _flush(self) -> None:
        store = self.store
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            pipe = store.client.pipeline(transaction=False)
            for bucket, mapping in self._waiting.items():
                pipe.hset(store.bucket_key(self.version_id, bucket), mapping=mapping)
            try:
                pipe.execute()
                break
            except (redis.TimeoutError, redis.ConnectionError) as exc:
                # The service's client has short timeouts, made for requests; an HSET may simply be sent again.
                if attempt == WRITE_ATTEMPTS:
                    raise
                log.warning("batch store write failed (%s); trying again (%d of %d)", exc, attempt + 1,
                            WRITE_ATTEMPTS)
                time.sleep(0.5 * attempt)
        self._waiting, self._count = {}, 0
        store.renew_lock()

    def finish(self, users: int) -> Version:
        self._flush()
        version = Version(self.version_id, self.uri, users, self.store.buckets, time.time())
        self.store.client.set(self.store.meta_key(self.version_id), version.dumps())
        self.store.client.set(self.store.pointer, version.dumps())  # the switch: one key, one write
        return version

    def abort(self) -> None:
        self.store._delete(self.version_id, self.store.buckets)
        self.store.client.delete(self.store.meta_key(self.version_id))
        self.store.client.srem(self.store.versions, self.version_id)


# -- SQLite files -----------------------------------------------------------------------------------------------


class SQLiteBatchStore:
    """One read-only SQLite file per version in a private folder; the pointer is a small JSON file."""

    kind = "sqlite"
    errors: tuple[type[Exception], ...] = (sqlite3.Error, OSError)

    def __init__(self, folder: str, variable: str = "DATA_DIR", cache_kib: int = 256) -> None:
        self.folder = folder
        self.variable = variable
        # Each reader connection's page cache, one per thread: WEB_THREADS x this is what a worker holds of the
        # store (16 x 2 MB added 37 MB to a worker serving 10M users); the OS page cache keeps the rest.
        self.cache_kib = cache_kib
        self.pointer = os.path.join(folder, "current.json")
        self._local = threading.local()

    def path(self, version_id: str) -> str:
        return os.path.join(self.folder, f"{version_id}.sqlite3")

    def current(self) -> Version | None:
        try:
            with open(self.pointer, "rb") as fh:
                return Version.loads(fh.read())
        except FileNotFoundError:
            return None

    def get(self, version: Version, key: bytes) -> bytes | None:
        row = self._connection(version).execute("SELECT v FROM answers WHERE k = ?", (key,)).fetchone()
        return row[0] if row else None

    def _connection(self, version: Version) -> sqlite3.Connection:
        """Return this thread's read-only connection to the version's file (a new one after a switch)."""
        local = self._local
        if getattr(local, "key", None) != (os.getpid(), version.id):
            if getattr(local, "connection", None) is not None and local.key[0] == os.getpid():
                local.connection.close()
            # immutable: the file never changes once complete, so SQLite skips locking and change checks.
            connection = sqlite3.connect(f"file:{self.path(version.id)}?mode=ro&immutable=1", uri=True,
                                         check_same_thread=False)
            connection.execute(f"PRAGMA cache_size=-{self.cache_kib}")
            local.connection, local.key = connection, (os.getpid(), version.id)
        return local.connection  # type: ignore[no-any-return]

    @contextlib.contextmanager
    def lock(self) -> Iterator[bool]:
        private_folder(self.folder, self.variable)
        path = private_file(os.path.join(self.folder, "load.lock"), self.variable)
        with open(path, "rb") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def begin(self, version_id: str, uri: str) -> SQLiteWriter:
        private_folder(self.folder, self.variable)
        part = self.path(version_id) + ".part"
        with contextlib.suppress(FileNotFoundError):
            os.remove(part)  # what an interrupted load left
        return SQLiteWriter(self, version_id, uri, private_file(part, self.variable))

    def remove_old(self, keep: Version, grace: float) -> list[str]:
        names = [name for name in os.listdir(self.folder)
                 if name.endswith((".sqlite3", ".sqlite3.part")) and not name.startswith(keep.id + ".")]
        if names:
            _wait_grace(keep, grace)
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.folder, name))  # a reader's open file stays readable until closed
        return [name.split(".")[0] for name in names]


class SQLiteWriter:
    """Fill a new file without a journal (it is thrown away if the load stops), then rename it complete."""

    def __init__(self, store: SQLiteBatchStore, version_id: str, uri: str, path: str) -> None:
        self.store, self.version_id, self.uri, self.path = store, version_id, uri, path
        self.connection = sqlite3.connect(path, isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-65536", "locking_mode=EXCLUSIVE"):
            self.connection.execute(f"PRAGMA {pragma}")
        self.connection.execute("CREATE TABLE answers (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
        self.connection.execute("BEGIN")

    def put(self, answers: list[tuple[bytes, bytes]]) -> None:
        self.connection.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?)", answers)

    def finish(self, users: int) -> Version:
        self.connection.execute("COMMIT")
        self.connection.close()
        final = self.store.path(self.version_id)
        os.replace(self.path, final)
        version = Version(self.version_id, self.uri, users, 0, time.time())
        tmp = private_file(self.store.pointer + ".tmp", self.store.variable)
        with open(tmp, "wb") as fh:
            fh.write(version.dumps())
        os.replace(tmp, self.store.pointer)  # the switch: readers open the new file from their next look
        return version

    def abort(self) -> None:
        self.connection.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)
