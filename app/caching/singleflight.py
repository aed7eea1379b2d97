"""One upstream call per cache key at a time: in this process with an event, across workers with a Redis lock."""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from redis.exceptions import RedisError

from app.caching.answers import AnswerCache, CachedAnswer
from app.errors import UpstreamError
from app.sources.recommender import Recommendation

log = logging.getLogger(__name__)

Fetch = Callable[[float], Recommendation]  # given the seconds left, fetch an answer

# Delete the lock only if it is still ours (it may have expired and been taken by another worker).
RELEASE_LOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
# Read the answer (KEYS[1]); when there is none, take its lock (KEYS[2]) for ARGV[2] ms with token ARGV[1].
READ_OR_LOCK = """
local answer = redis.call('get', KEYS[1])
if answer then return {answer, 0} end
if redis.call('set', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {false, 1} end
return {false, 0}
"""
# Write the answer (KEYS[1] = ARGV[1], expiring after ARGV[3] s unless 0) and release its lock (KEYS[2]) if it is
# still ours (ARGV[2]). One script rather than a pipeline: redis-py refuses scripts in a Redis Cluster pipeline.
STORE_AND_RELEASE = """
if ARGV[3] == '0' then redis.call('set', KEYS[1], ARGV[1]) else redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[3]) end
if redis.call('get', KEYS[2]) == ARGV[2] then redis.call('del', KEYS[2]) end
return 1
"""


@dataclass
class _Flight:
    done: threading.Event = field(default_factory=threading.Event)
    result: Recommendation | None = None
    error: BaseException | None = None


def _timeout() -> UpstreamError:
    return UpstreamError("No answer within the request budget.", code="upstream_timeout", status=504)


class SingleFlight:
    """Run fetch once per key while concurrent callers for the same key wait for its answer; cache the answer.

    Within a process the first caller fetches and the others wait on an event. With a Redis client,
    the caller first takes a short Redis lock (SET NX, expiring with the budget, so a dead worker cannot
    hold it); a worker that finds the lock taken polls the cache for the answer the holder writes.
    A miss costs two round trips: lookup's script, which reads the answer and takes the lock when there is
    none, and the answer's write with the lock's release (one script as well). The keys share a hash tag, so Redis
    Cluster takes both. Without a claim from lookup (a stale answer, a lock already taken), run() takes the lock
    with a second read in one pipeline.
    Nobody waits past the deadline: they get UpstreamError and the caller falls back.
    The lock is a plain SET NX with a random token and a token-checked delete: redis-py's Lock does the
    same with a uuid1 token and per-call bookkeeping, more CPU per miss.
    """

    def __init__(self, cache: AnswerCache, lock_client: redis.Redis | None = None, poll_seconds: float = 0.01) -> None:
        self.cache = cache
        self.lock_client = lock_client
        self.poll_seconds = poll_seconds
        self._flights: dict[str, _Flight] = {}
        self._mutex = threading.Lock()
        self._release = lock_client.register_script(RELEASE_LOCK) if lock_client is not None else None
        self._read_or_lock = lock_client.register_script(READ_OR_LOCK) if lock_client is not None else None
        self._store_release = lock_client.register_script(STORE_AND_RELEASE) if lock_client is not None else None
        # SharedRedis: a connection kept per thread for the miss path's two scripts; a plain client: itself.
        self._thread_client = getattr(lock_client, "for_this_thread", lambda: lock_client)

    def lookup(self, key: str, deadline: float) -> tuple[CachedAnswer | None, bytes | None]:
        """Return the cached answer (fresh or not) and, when there was none, this caller's claim on fetching it.

        With the answers in the lock's Redis, one round trip reads the answer and, only if there is none, takes
        the lock (a script; the keys share a hash tag): a miss costs no separate lock. The claim (the lock's
        token) goes to run(). Otherwise: the answer cache's own read, and no claim.
        """
        shared = self.cache.redis_key(key)
        if self._read_or_lock is None or shared is None:
            return self.cache.get(key), None
        local = self.cache.local(key)
        if local is not None:
            return local, None
        token = os.urandom(8)
        lock_ms = max(int((deadline - time.monotonic()) * 1000), 50)
        try:
            data, locked = self._read_or_lock(keys=[shared, f"{key}:lock"], args=[token, lock_ms],
                                              client=self._thread_client())
        except RedisError as exc:
            self.cache.read_failed(exc)
            return None, None
        return self.cache.accept(key, data), token if locked else None

    def run(self, key: str, fetch: Fetch, deadline: float, claim: bytes | None = None) -> Recommendation:
        """Return the answer for key, fetched by this caller or by the one already fetching it.

        claim: the lock lookup() took for this caller, if it did.
        """
        with self._mutex:
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
        assert flight is not None
        if not leader and claim is not None:
            # This caller holds the cross-worker lock, so it fetches: the leader here came without the lock and
            # waits for the holder's answer in Redis (joining it would leave both waiting for each other).
            return self._fetch_locked(key, fetch, deadline, self.cache.redis_key(key), f"{key}:lock", claim)
        if not leader:
            if not flight.done.wait(max(0.0, deadline - time.monotonic())):
                raise _timeout()
            if flight.error is not None:
                raise flight.error
            assert flight.result is not None
            return flight.result
        try:
            flight.result = self._across_workers(key, fetch, deadline, claim)
            return flight.result
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._mutex:
                del self._flights[key]
            flight.done.set()

    def _across_workers(self, key: str, fetch: Fetch, deadline: float, claim: bytes | None) -> Recommendation:
        remaining = deadline - time.monotonic()
        if self.lock_client is None:
            return self._fetch_and_store(key, fetch, remaining)
        lock_key, token = f"{key}:lock", claim or os.urandom(8)  # the key's {hash tag}: one Cluster slot for both
        shared = self.cache.redis_key(key)
        if claim is not None:
            return self._fetch_locked(key, fetch, deadline, shared, lock_key, token)
        try:
            # One round trip takes the lock and reads the answer again: a worker that held the lock since this
            # caller's miss may have written it, and then nobody asks the source twice.
            pipe = self.lock_client.pipeline(transaction=False)
            pipe.set(lock_key, token, nx=True, px=max(int(remaining * 1000), 50))
            if shared is not None:
                pipe.get(shared)
            acquired, *landed = pipe.execute()
        except RedisError as exc:
            log.debug("single-flight lock unavailable, fetching without it: %s", exc)
            return self._fetch_and_store(key, fetch, deadline - time.monotonic())
        cached = self.cache.accept(key, landed[0]) if landed else None
        if cached is not None and self.cache.is_fresh(cached):
            if acquired:
                self._unlock(lock_key, token)
            return cached.recommendation
        if not acquired:
            return self._wait_for_answer(key, lock_key, deadline)
        return self._fetch_locked(key, fetch, deadline, shared, lock_key, token)

    def _fetch_locked(self, key: str, fetch: Fetch, deadline: float, shared: str | None, lock_key: str,
                      token: bytes) -> Recommendation:
        try:
            # Taking the lock spent part of the budget.
            answer = fetch(deadline - time.monotonic())
        except BaseException:
            self._unlock(lock_key, token)
            raise
        self._store_and_unlock(key, shared, lock_key, token, answer)
        return answer

    def _fetch_and_store(self, key: str, fetch: Fetch, remaining: float) -> Recommendation:
        answer = fetch(remaining)
        self.cache.put(key, answer)
        return answer

    def _store_and_unlock(self, key: str, shared: str | None, lock_key: str, token: bytes,
                          answer: Recommendation) -> None:
        """Write the answer and release the lock, in one round trip when the answers live in this Redis."""
        if shared is None:  # another backend keeps the answers
            self.cache.put(key, answer)
            self._unlock(lock_key, token)
            return
        assert self._store_release is not None
        data = self.cache.remember(key, answer)
        try:
            self._store_release(keys=[shared, lock_key], args=[data, token, self.cache.keep_seconds or 0],
                                client=self._thread_client())
        except RedisError as exc:  # Redis went away (the lock expires anyway) or refused the write
            self.cache.written(exc)
            return
        self.cache.written(None)

    def _unlock(self, lock_key: str, token: bytes) -> None:
        assert self._release is not None
        try:
            self._release(keys=[lock_key], args=[token])
        except RedisError as exc:  # Redis went away: the lock expires anyway
            log.debug("single-flight lock not released: %s", exc)

    def _wait_for_answer(self, key: str, lock_key: str, deadline: float) -> Recommendation:
        """Poll the cache until the lock holder's answer lands; its failure is this caller's failure too."""
        while time.monotonic() < deadline:
            time.sleep(min(self.poll_seconds, max(0.0, deadline - time.monotonic())))
            cached = self.cache.get(key)
            if cached is not None and self.cache.is_fresh(cached):
                return cached.recommendation
            try:
                holder_done = not self.lock_client.exists(lock_key)
            except RedisError:
                holder_done = True
            if holder_done:
                cached = self.cache.get(key)  # it may have landed between the two reads
                if cached is not None and self.cache.is_fresh(cached):
                    return cached.recommendation
                raise UpstreamError("The worker fetching this answer failed.", code="upstream_error")
        raise _timeout()
