"""The one place Redis clients are built, from CACHE_REDIS_URL: one node or a Redis Cluster, plain or TLS.

Every part kept in Redis (the answer cache, the single-flight lock, the recently recommended counts, the
batch store) uses the client `shared_redis` returns. It is built on first use, after gunicorn forks and never
during create_app (a cluster client asks the cluster for its slots as it is made), and it is a cluster client
when CACHE_REDIS_CLUSTER says so or, unset, when the server's `INFO cluster` says `cluster_enabled:1`.

Redis is an optimisation here, never a dependency of an answer: every call has the same short timeouts and a
single attempt, so a Redis that is down or hung costs a request at most TIMEOUT_SECONDS per call, and the
caller's fallback answers. Once a node has refused a connection or let a call time out, calls to it fail at
once for PAUSE_SECONDS (NodePausedError) rather than each waiting for its own timeout: a hung node would
otherwise hold every worker thread whose keys it owns for 0.25 s a call. A node answering CLUSTERDOWN (while
it rejoins its cluster) is paused the same way. Whatever a cluster client raises
when it cannot reach the cluster (redis-py's RedisClusterException is not a RedisError) is raised as
redis.ConnectionError, the error callers catch.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.cluster import ClusterPipeline, RedisCluster
from redis.connection import Connection, Encoder, SSLConnection
from redis.exceptions import ClusterDownError, RedisClusterException, RedisError
from redis.retry import Retry

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 0.25  # connect and read: a hung Redis costs a request milliseconds, not its budget
HEALTH_CHECK_SECONDS = 30  # a connection idle this long is PINGed before use (a NAT or balancer may drop it)
REBUILD_SECONDS = 1.0  # after a failed build (no node reachable), callers fail at once for this long
PAUSE_SECONDS = 1.0  # after a node failed to connect or answer in time, calls to it fail at once for this long


class NodePausedError(RedisError):
    """A node failed within the last PAUSE_SECONDS, so this call did not try it.

    Not a ConnectionError on purpose: redis-py's cluster client refreshes its map of slots after every
    ConnectionError, and a refresh per request while a node is down would load the healthy nodes.
    """


class _Pausing:
    """A connection that, once its node has failed, refuses to try it again for PAUSE_SECONDS.

    paused_until maps (host, port) to when that node may be tried again; each client has its own (see
    _connection_class), shared by all of its connections.
    """

    paused_until: dict[tuple[str, int], float]
    host: str
    port: int
    _sock: Any

    def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        if self._sock is not None:
            return
        address = (self.host, self.port)
        if self.paused_until.get(address, 0.0) > time.monotonic():
            raise NodePausedError(f"Redis at {self.host}:{self.port} failed less than {PAUSE_SECONDS:g} s ago")
        try:
            super().connect_check_health(*args, **kwargs)  # type: ignore[misc]
        except (redis.ConnectionError, redis.TimeoutError):
            self.paused_until[address] = time.monotonic() + PAUSE_SECONDS
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except redis.TimeoutError:
            # A hung node. Not on ConnectionError: a server closing an idle connection is reconnected at once.
            self.paused_until[(self.host, self.port)] = time.monotonic() + PAUSE_SECONDS
            raise
        except ClusterDownError as exc:
            # A node rejoining its cluster (or a cluster without a majority) answers CLUSTERDOWN for a while;
            # redis-py would sleep 0.25 s in the request's thread on each such answer before raising it.
            self.paused_until[(self.host, self.port)] = time.monotonic() + PAUSE_SECONDS
            raise NodePausedError(f"Redis at {self.host}:{self.port} answered CLUSTERDOWN") from exc


class _PausingConnection(_Pausing, Connection):
    pass


class _PausingSSLConnection(_Pausing, SSLConnection):
    pass


def _connection_class(tls: bool) -> type[Connection]:
    """Return a pausing connection class with a pause record of its own (one per client built)."""
    base = _PausingSSLConnection if tls else _PausingConnection
    return type(base.__name__, (base,), {"paused_until": {}})


def hash_tagged(name: str) -> str:
    """Return `{name}`: keys that hold the same hash tag live on the same cluster node (and slot).

    Multi-key commands (ZUNIONSTORE, MGET, a Lua script with several keys, MULTI) need their keys on one
    node; on a single Redis node the braces are plain characters of the key.
    """
    return "{" + name + "}"


@dataclass(frozen=True)
class RedisOptions:
    """How to reach Redis: the URL (with user and password) and its cluster and TLS settings."""

    url: str
    cluster: bool | None = None  # None: ask the server
    tls_ca_file: str | None = None  # PEM certificates to trust, else the system's
    tls_verify: str = "full"  # full: certificate and host name; ca: certificate only; none: nothing

    @property
    def tls(self) -> bool:
        return self.url.startswith("rediss://")

    @property
    def plain_url(self) -> str:
        """Return the URL with rediss:// as redis://: TLS then comes from connection_class alone.

        redis-py's cluster client lets a rediss:// URL replace the connection class it is given with its own
        SSLConnection; given redis:// it keeps ours, which is an SSLConnection too when the URL said rediss.
        """
        return "redis://" + self.url.removeprefix("rediss://") if self.tls else self.url

    def connection_kwargs(self) -> dict[str, Any]:
        """Return the keyword arguments every connection gets: timeouts, one attempt, TLS as set."""
        kwargs: dict[str, Any] = {
            "socket_timeout": TIMEOUT_SECONDS,
            "socket_connect_timeout": TIMEOUT_SECONDS,
            "health_check_interval": HEALTH_CHECK_SECONDS,
        }
        if not self.url.startswith("unix://"):
            kwargs["connection_class"] = _connection_class(self.tls)
        if self.tls:
            kwargs["ssl_cert_reqs"] = "none" if self.tls_verify == "none" else "required"
            kwargs["ssl_check_hostname"] = self.tls_verify == "full"
            if self.tls_ca_file:
                kwargs["ssl_ca_certs"] = self.tls_ca_file
        return kwargs


def _one_attempt() -> Retry:
    """A retry policy of no retries: a second attempt would spend the budget the fallbacks need."""
    return Retry(NoBackoff(), 0)


class _ClusterPipeline(ClusterPipeline):
    """A cluster pipeline whose failure to reach the cluster is a redis.ConnectionError."""

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            return super().execute(raise_on_error)
        except RedisClusterException as exc:
            raise redis.ConnectionError(f"Redis Cluster unreachable: {exc}") from exc


class _Cluster(RedisCluster):
    """redis-py's RedisCluster, raising redis.ConnectionError when the cluster (or a slot's node) is unreachable.

    redis-py refreshes its map of slots to nodes after a connection error (trying the failed node last),
    so a node that comes back, or a replica promoted in its place, is used from the next call on.
    """

    def _internal_execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._internal_execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise redis.ConnectionError(f"Redis Cluster unreachable: {exc}") from exc

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        pipe = super().pipeline(transaction, shard_hint)
        pipe.__class__ = _ClusterPipeline  # same object, one method more careful
        return pipe


def build_client(options: RedisOptions) -> redis.Redis | RedisCluster:
    """Return a connected client for the options, asking the server whether it is a cluster when unset.

    Raises redis.ConnectionError (or another RedisError) when Redis cannot be reached.
    """
    kwargs = options.connection_kwargs()
    if options.cluster is False:
        return redis.Redis.from_url(options.plain_url, retry=_one_attempt(), **kwargs)
    if options.cluster is None:
        probe = redis.Redis.from_url(options.plain_url, retry=_one_attempt(), **kwargs)
        if not is_cluster(probe):
            return probe
        probe.close()
    try:
        # require_full_coverage=False: a slot without a node costs that slot's keys, not the whole client.
        return _Cluster.from_url(options.plain_url, retry=_one_attempt(), require_full_coverage=False, **kwargs)
    except RedisClusterException as exc:
        raise redis.ConnectionError(f"Redis Cluster unreachable: {exc}") from exc


def is_cluster(client: redis.Redis) -> bool:
    """Ask a server whether it runs in cluster mode (`INFO cluster`: cluster_enabled)."""
    try:
        return bool(int(client.info("cluster").get("cluster_enabled", 0)))
    except redis.ResponseError as exc:  # e.g. an ACL user without INFO
        raise redis.ConnectionError(f"cannot tell whether Redis is a cluster (INFO cluster: {exc}); set "
                                    "CACHE_REDIS_CLUSTER to true or false") from exc


class SharedRedis:
    """The process's Redis client, built on first use and then shared by every part that keeps data in Redis.

    Any redis-py method called on it is the client's own (`shared.get(key)`, `shared.pipeline()`,
    `shared.register_script(...)`). While the client cannot be built (Redis down at first use), each call
    raises redis.ConnectionError, at once for REBUILD_SECONDS after a failed attempt so a down Redis is
    not asked again on every request, and the next call after that tries again: the service recovers by
    itself when Redis returns.
    """

    def __init__(self, options: RedisOptions) -> None:
        self.options = options
        self._client: redis.Redis | RedisCluster | None = None
        self._lock = threading.Lock()
        self._failed_until = 0.0
        self._threads = threading.local()

    @property
    def client(self) -> redis.Redis | RedisCluster:
        """Return the client, building it now if this is the first use."""
        client = self._client
        if client is None:
            client = self._build()
        return client

    @property
    def is_cluster(self) -> bool:
        """Say whether the client speaks the cluster protocol (builds it, so it may raise a RedisError)."""
        return isinstance(self.client, RedisCluster)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy, pickle and friends probing for hooks must not connect to Redis
            raise AttributeError(name)
        return getattr(self.client, name)

    def for_this_thread(self) -> redis.Redis | RedisCluster:
        """Return the client for this thread's commands on the request path.

        On one node: a client that keeps one of the pool's connections for this thread (redis-py's
        single_connection_client), so a command does not take a connection from the pool and give it back,
        a third of a round trip's CPU. A cluster's client already keeps a connection per node: itself.
        """
        client = self.client
        if isinstance(client, RedisCluster):
            return client
        mine = getattr(self._threads, "client", None)
        if mine is None or mine.connection_pool is not client.connection_pool:  # first use, or a rebuilt client
            mine = self._threads.client = redis.Redis(connection_pool=client.connection_pool,
                                                      single_connection_client=True)
        return mine

    def register_script(self, script: str) -> Script:
        """Return a Lua script run on this client, without building it yet (create_app does no network I/O)."""
        return Script(self, script)

    def get_encoder(self) -> Encoder:
        """Return how strings become bytes (the Script above asks): redis-py's default, as every client here has."""
        return Encoder("utf-8", "strict", False)

    def _build(self) -> redis.Redis | RedisCluster:
        with self._lock:
            if self._client is not None:
                return self._client
            if time.monotonic() < self._failed_until:
                raise redis.ConnectionError("Redis unreachable (tried less than a second ago).")
            try:
                self._client = build_client(self.options)
            except redis.RedisError as exc:
                self._failed_until = time.monotonic() + REBUILD_SECONDS
                log.warning("Redis client not built yet, trying again on a later call: %s: %s",
                            type(exc).__name__, exc)
                raise
            log.info("Redis client ready (%s)", "cluster" if isinstance(self._client, RedisCluster) else "one node")
            return self._client

    def close(self) -> None:
        """Close the client's connections, if it was built."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def shared_redis(url: str | None, cluster: bool | None = None, tls_ca_file: str | None = None,
                 tls_verify: str = "full") -> SharedRedis | None:
    """Return the shared client for CACHE_REDIS_URL and its settings, or None when Redis is not set."""
    if not url:
        return None
    if url.startswith("rediss://") and tls_verify == "none":
        log.warning("CACHE_REDIS_TLS_VERIFY=none: the Redis server's certificate is not checked, so anyone on the "
                    "network path can pose as it. Use it only to try things; give CACHE_REDIS_TLS_CA_FILE instead.")
    return SharedRedis(RedisOptions(url, cluster, tls_ca_file, tls_verify))
