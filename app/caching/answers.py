"""The answer cache: each source's answer per (source, user, parameters), kept in flask-caching's backend."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import orjson
from cachelib.base import BaseCache
from cachelib.serializers import BaseSerializer
from cachetools import TTLCache
from flask_caching.backends.filesystemcache import FileSystemCache
from flask_caching.backends.rediscache import RedisCache
from redis.exceptions import RedisError

from app.sources.recommender import Recommendation

log = logging.getLogger(__name__)

# What a cache backend raises when it is down, full or unwritable: the cache is then skipped, never fatal.
CACHE_FAILURES = (RedisError, OSError)
LOG_CHANGES_SECONDS = 60.0  # "answer cache failing" and "works again" are each logged at most this often


@dataclass(frozen=True)
class CachedAnswer:
    recommendation: Recommendation
    stored_at: float


@dataclass(frozen=True)
class CachedAttributes:
    """A transformer Lambda's attributes and the item ids it was given (the answer they were made from)."""

    item_ids: list[str]
    attributes: dict[str, list[str]]
    stored_at: float


_Entry = TypeVar("_Entry", CachedAnswer, CachedAttributes)


def encode_attributes(entry: CachedAttributes) -> bytes:
    """Return the attributes as the JSON bytes the backend keeps: data only."""
    return orjson.dumps({"made_from": entry.item_ids, "attributes": entry.attributes, "at": entry.stored_at})


def decode_attributes(data: Any) -> CachedAttributes | None:
    """Return the entry encode_attributes wrote, or None for anything else."""
    fields = _fields(data, "made_from", "attributes", "at")
    if fields is None:
        return None
    items, attributes, at = fields
    if (not _strings(items) or not isinstance(attributes, dict) or type(at) not in (int, float)
            or not all(_strings(v) for v in attributes.values())):
        return None
    return CachedAttributes(items, attributes, float(at))


def _fields(data: Any, *names: str) -> list[Any] | None:
    """Return the named fields of an entry that is a JSON object holding them all, else None."""
    if not isinstance(data, bytes) or not data.startswith(b"{"):
        return None
    try:
        value = orjson.loads(data)
        return [value[name] for name in names]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def encode_answer(answer: CachedAnswer) -> bytes:
    """Return the answer as the JSON bytes the backend keeps: data only, nothing that could run when read."""
    rec = answer.recommendation
    return orjson.dumps({"items": rec.item_ids, "rid": rec.recommendation_id, "at": answer.stored_at})


def decode_answer(data: Any) -> CachedAnswer | None:
    """Return the answer encode_answer wrote, or None for anything else (an old pickle, garbage, a counter)."""
    # Inline, not through _fields: this runs on every cache hit of the request path.
    if not isinstance(data, bytes) or not data.startswith(b"{"):
        return None
    try:
        value = orjson.loads(data)
        items, rid, at = value["items"], value["rid"], value["at"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if (not isinstance(items, list) or not all(isinstance(i, str) for i in items)
            or not (rid is None or isinstance(rid, str)) or type(at) not in (int, float)):
        return None
    return CachedAnswer(Recommendation(items, rid), float(at))


class DataSerializer(BaseSerializer):
    """Keep bytes and integers as they are and refuse anything else: nothing read back is ever unpickled.

    cachelib's own serializers pickle, so whoever can write the cache (a Redis without a password, a cache
    folder others can write) could run code in the service with a crafted entry.
    """

    def dumps(self, value: Any, protocol: int | None = None) -> bytes:
        if type(value) is int:  # FileSystemCache's entry count; Redis INCR-compatible, as cachelib's
            return str(value).encode("ascii")
        if isinstance(value, bytes):
            return value
        raise TypeError(f"the answer cache keeps bytes, not {type(value).__name__}")

    def loads(self, value: bytes | None) -> Any:
        if value is None:
            return None
        return int(value) if value.isdigit() else bytes(value)

    def dump(self, value: Any, f: IO[bytes], protocol: int | None = None) -> None:
        f.write(self.dumps(value))

    def load(self, f: IO[bytes]) -> Any:
        return self.loads(f.read())


class DataRedisCache(RedisCache):
    """flask-caching's RedisCache keeping bytes, never pickles, on the client app/caching/redis.py builds
    (one node or a cluster, TLS, short timeouts) rather than one of its own from CACHE_REDIS_URL."""

    serializer = DataSerializer()

    @classmethod
    def factory(cls, app: Any, config: dict[str, Any], args: list[Any], kwargs: dict[str, Any]) -> DataRedisCache:
        """Build the backend on the client cache_config put in CACHE_OPTIONS (flask-caching's would make its own)."""
        return cls(*args, key_prefix=config.get("CACHE_KEY_PREFIX"), **kwargs)  # kwargs: CACHE_OPTIONS' host

    def redis_key(self, key: str) -> str:
        """Return the Redis key an entry is kept under (the key prefix and the key), for callers that pipeline."""
        return f"{self._get_prefix()}{key}"


class DataFileSystemCache(FileSystemCache):
    """flask-caching's FileSystemCache keeping bytes, never pickles, and raising OSError when a file cannot be
    read or written (a full disk, a read-only folder) where cachelib logs a traceback and returns False, which
    the answer cache could not tell from success (one traceback per request, and no state change logged)."""

    serializer = DataSerializer()

    @property
    def _file_count(self) -> int:
        count = self.get(self._fs_count_file)
        return count if isinstance(count, int) else 0  # an older release's pickled count, or garbage: recount

    def get(self, key: str) -> Any:
        try:
            with open(self._get_filename(key), "rb") as f:
                header = f.read(4)
                if len(header) < 4:
                    return None  # a torn or foreign file: a miss
                expires = struct.unpack("I", header)[0]
                if expires == 0 or expires >= time.time():
                    return self.serializer.load(f)
        except FileNotFoundError:
            pass
        return None

    def set(self, key: str, value: Any, timeout: Any = None, mgmt_element: bool = False) -> bool:
        if mgmt_element:
            timeout = 0
        else:
            self._prune()
        expires = self._normalize_timeout(timeout)
        filename = self._get_filename(key)
        overwrite = os.path.isfile(filename)
        fd, tmp = tempfile.mkstemp(suffix=self._fs_transaction_suffix, dir=self._path)  # 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(struct.pack("I", expires))
                self.serializer.dump(value, f)
            os.replace(tmp, filename)
        except BaseException:
            with contextlib.suppress(OSError):  # a full disk must not fill up with half-written files too
                os.remove(tmp)
            raise
        if not overwrite and not mgmt_element:
            self._update_count(delta=1)
        return True


def cache_config(redis_client: Any, cache_dir: str, threshold: int, ttl: int) -> dict[str, Any]:
    """Return flask-caching settings: Redis when a client is given (app/caching/redis.py's, with its short
    timeouts), else files shared by the host's workers."""
    if redis_client is not None:
        return {
            "CACHE_TYPE": f"{__name__}.DataRedisCache",
            "CACHE_DEFAULT_TIMEOUT": ttl,
            "CACHE_OPTIONS": {"host": redis_client},
        }
    return {
        "CACHE_TYPE": f"{__name__}.DataFileSystemCache",
        "CACHE_DIR": cache_dir,
        "CACHE_THRESHOLD": threshold,
        "CACHE_DEFAULT_TIMEOUT": ttl,
    }


class AnswerCache:
    """Read and write answers; a backend failure is logged once per change of state and treated as a miss.

    With local_seconds, answers are also kept that long in this process, so the 2-3 calls Braze makes
    for one recipient within seconds cost one backend round trip per worker, not one each. The copy
    carries its stored_at, so freshness is judged exactly as for the shared entry.
    on_error(operation) is told of every failed read, write or malformed entry; on_failing(bool) of each
    change between failing and working (the metrics).
    """

    def __init__(
        self, backend: BaseCache, ttl: int, stale_seconds: int = 0, local_seconds: float = 0, local_items: int = 0,
        on_error: Callable[[str], None] | None = None, on_failing: Callable[[bool], None] | None = None,
    ) -> None:
        self.backend = backend
        self.ttl = ttl
        # Answers are kept past their TTL for stale-if-error, but only served fresh within it.
        self.keep_seconds = max(ttl, stale_seconds)
        self._failing = {"read": False, "write": False}
        self._next_log: dict[int, float] = {}  # log level -> when a change of state may be logged again
        self._unlogged = 0
        self._malformed = False
        self._on_error = on_error or (lambda operation: None)
        self._on_failing = on_failing or (lambda failing: None)
        self._local: TTLCache[str, CachedAnswer] | None = None
        if local_seconds > 0 and local_items > 0:
            self._local = TTLCache(maxsize=local_items, ttl=min(local_seconds, ttl))
        self._local_lock = threading.Lock()  # cachetools caches are not thread-safe

    @staticmethod
    def key(source_key: str, user_id: str, params: Mapping[str, Any]) -> str:
        """Return a key that differs for every source, user and parameter set (and holds no user id).

        The digest is a Redis hash tag ({...}): the single-flight lock key adds to it, so an answer and its
        lock sit in one Redis Cluster slot and can share a pipeline.
        """
        material = orjson.dumps([source_key, user_id, params], option=orjson.OPT_SORT_KEYS)
        return "recs:v1:{" + hashlib.sha256(material).hexdigest() + "}"

    def redis_key(self, key: str) -> str | None:
        """Return the Redis key the backend keeps key's answer under, or None when the backend is not Redis."""
        return self.backend.redis_key(key) if isinstance(self.backend, DataRedisCache) else None

    def get(self, key: str) -> CachedAnswer | None:
        """Return the stored answer, or None on a miss, a backend failure or an entry that is not an answer."""
        answer = self.local(key)
        if answer is not None:
            return answer
        answer = self._read(key, decode_answer)
        if answer is not None:
            self._remember(key, answer)
        return answer

    def local(self, key: str) -> CachedAnswer | None:
        """Return this process's fresh copy of the answer (CACHE_LOCAL_SECONDS), or None."""
        if self._local is None:
            return None
        with self._local_lock:
            answer = self._local.get(key)
        return answer if answer is not None and self.is_fresh(answer) else None

    def put(self, key: str, recommendation: Recommendation) -> None:
        """Store an answer (kept past its TTL for stale-if-error); a failure only costs a later miss."""
        self._write(key, self.remember(key, recommendation), self.keep_seconds)

    def remember(self, key: str, recommendation: Recommendation) -> bytes:
        """Keep a new answer in this process and return the bytes to store for keep_seconds (the caller's write).

        For SingleFlight, which writes them in one Redis round trip with the lock's release; it reports
        the write's outcome with written().
        """
        answer = CachedAnswer(recommendation, time.time())
        self._remember(key, answer)
        return encode_answer(answer)

    def written(self, exc: Exception | None) -> None:
        """Take note of a write made by the caller: failed (exc) or done."""
        self._report("write", exc)

    def accept(self, key: str, data: Any) -> CachedAnswer | None:
        """Return the answer in bytes the caller read from the backend (fresh ones are kept in this process too),
        or None for none or an entry that is not an answer; the read itself worked."""
        self._report("read", None)
        if data is None:
            return None
        answer = decode_answer(data)
        self._report_malformed(answer is None)
        if answer is not None:
            self._remember(key, answer)
        return answer

    def read_failed(self, exc: Exception) -> None:
        """Take note of a read made by the caller that failed."""
        self._report("read", exc)

    def get_attributes(self, key: str, item_ids: list[str]) -> dict[str, list[str]] | None:
        """Return a transformer's attributes stored within the TTL for exactly these item ids, else None."""
        entry = self._read(key, decode_attributes)
        if entry is None or entry.item_ids != item_ids or not self.is_fresh(entry):
            return None
        return entry.attributes

    def put_attributes(self, key: str, item_ids: list[str], attributes: dict[str, list[str]]) -> None:
        """Store a transformer's attributes with the item ids they were made from, for the TTL."""
        self._write(key, encode_attributes(CachedAttributes(item_ids, attributes, time.time())), self.ttl)

    def _read(self, key: str, decode: Callable[[Any], _Entry | None]) -> _Entry | None:
        """Return the decoded entry, or None on a miss, a backend failure or an entry decode refuses."""
        try:
            value = self.backend.get(key)
        except CACHE_FAILURES as exc:
            self._report("read", exc)
            return None
        self._report("read", None)
        if value is None:
            return None
        entry = decode(value)
        self._report_malformed(entry is None)
        return entry

    def _write(self, key: str, data: bytes, timeout: int) -> None:
        try:
            self.backend.set(key, data, timeout=timeout)
        except CACHE_FAILURES as exc:
            self._report("write", exc)
            return
        self._report("write", None)

    def _remember(self, key: str, answer: CachedAnswer) -> None:
        if self._local is not None and self.is_fresh(answer):
            with self._local_lock:
                self._local[key] = answer

    def is_fresh(self, answer: CachedAnswer | CachedAttributes) -> bool:
        """Say whether the answer is younger than the TTL (older ones only serve when the source fails)."""
        return time.time() - answer.stored_at < self.ttl

    def max_age(self, answer: CachedAnswer) -> int:
        """Return how many more seconds the answer stays fresh (never more than the TTL, whatever the clocks)."""
        return max(0, min(self.ttl, int(answer.stored_at + self.ttl - time.time())))

    def _report(self, operation: str, exc: Exception | None) -> None:
        # Log when the cache as a whole starts and stops failing, not once per request during an outage.
        if exc is None and not self._failing[operation]:
            return  # the common case, a working cache: one dict lookup
        if exc is not None:
            self._on_error(operation)
        was_failing = any(self._failing.values())
        self._failing[operation] = exc is not None
        if exc is not None and not was_failing:
            self._log_change(logging.ERROR, f"answer cache failing ({operation}), serving without it: {_reason(exc)}")
            self._on_failing(True)
        elif was_failing and not any(self._failing.values()):
            self._log_change(logging.WARNING, "answer cache works again")
            self._on_failing(False)

    def _log_change(self, level: int, message: str) -> None:
        """Log a change of state, each kind at most once a LOG_CHANGES_SECONDS, counting the changes left out.

        A cache that fails for some keys only (one Redis Cluster node down) changes state on nearly every
        request; one line a change would be thousands a second.
        """
        now = time.monotonic()
        if now < self._next_log.get(level, 0.0):
            self._unlogged += 1
            return
        self._next_log[level] = now + LOG_CHANGES_SECONDS
        if self._unlogged:
            message += (f" ({self._unlogged} more changes between failing and working were not logged since: some "
                        "calls fail and others work, e.g. one Redis Cluster node is down)")
            self._unlogged = 0
        log.log(level, message)

    def _report_malformed(self, malformed: bool) -> None:
        if malformed:
            self._on_error("malformed")
        if malformed and not self._malformed:
            log.warning("answer cache entry is not an answer this service wrote (an older release's pickle, or "
                        "written by someone else): ignored, treated as a miss and overwritten")
        self._malformed = malformed


def _reason(exc: Exception) -> str:
    """Return the error without the file path an OSError carries (the cache folder is in the settings)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"
