"""Everything kept in Redis on a real 3-node Redis Cluster and on a TLS redis-server with a user and password.

The cluster (tests/redis_server.py's RedisClusterServers) and the TLS server are the tests' own, started once
per session on free loopback ports. One test kills a node mid-run and starts it again: requests stay 200s
(answered by the fallbacks for that node's keys only) and the service uses the node again by itself.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import pytest
import redis
from flask import Flask
from redis.cluster import RedisCluster
from werkzeug.test import TestResponse

from app.caching.answers import AnswerCache, CachedAnswer
from app.caching.redis import TIMEOUT_SECONDS, RedisOptions, SharedRedis, shared_redis
from app.caching.singleflight import SingleFlight
from app.components import components
from app.errors import UpstreamError
from app.sources.recommender import Recommendation
from tests.conftest import FakeRecommender
from tests.integration.test_cache_redis import full_key, two_workers_count
from tests.redis_server import RedisClusterServers, RedisServer

WAIT = 5.0  # upper bound on a wait for another thread; never reached when the code works
RECOVERY_DEADLINE = 20.0  # a restarted node rejoins within about 2 x cluster-node-timeout (1 s here)
BRAZE_WAITS = 2.0  # a request slower than this is an empty block in the email


def get(app: Flask, **params: Any) -> TestResponse:
    return app.test_client().get("/recommendations", query_string=urlencode(params))


def shared_client(app: Flask) -> SharedRedis:
    """Return the Redis client the app built from CACHE_REDIS_URL (the one its lock and counts use)."""
    client = components(app).service.flights.lock_client
    assert isinstance(client, SharedRedis)
    return client


def cluster_client(url: str) -> RedisCluster:
    return RedisCluster.from_url(url, socket_timeout=1)


# --------------------------------------------------------------------------------------------------
# which client: CACHE_REDIS_CLUSTER, or the server's own answer


def test_unset_cache_redis_cluster_detects_a_cluster(make_app: Callable[..., Flask], cluster_url: str) -> None:
    app = make_app({"recommender": FakeRecommender()}, cache_redis_url=cluster_url)

    assert shared_client(app).is_cluster


def test_unset_cache_redis_cluster_detects_one_node(make_app: Callable[..., Flask], redis_url: str) -> None:
    app = make_app({"recommender": FakeRecommender()}, cache_redis_url=redis_url)

    assert not shared_client(app).is_cluster


def test_cache_redis_cluster_false_is_obeyed(cluster_url: str) -> None:
    """Said false, the service speaks to the URL's node alone, as to any Redis (no cluster protocol)."""
    client = shared_redis(cluster_url, cluster=False)
    assert client is not None

    assert not client.is_cluster
    client.close()


def test_cache_redis_cluster_true_on_one_node_says_so_and_costs_only_the_cache(
    make_app: Callable[..., Flask], redis_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeRecommender({"u1": ["1000"]})
    app = make_app({"recommender": fake}, cache_redis_url=redis_url, cache_redis_cluster=True)

    with caplog.at_level(logging.WARNING):
        resp = get(app, user_id="u1")

    assert (resp.status_code, resp.headers["X-Cache"]) == (200, "MISS")
    assert "Cluster mode is not enabled on this node" in caplog.text


@pytest.mark.parametrize(("verify", "expected"), [
    ("full", {"ssl_cert_reqs": "required", "ssl_check_hostname": True}),
    ("ca", {"ssl_cert_reqs": "required", "ssl_check_hostname": False}),
    ("none", {"ssl_cert_reqs": "none", "ssl_check_hostname": False}),
])
def test_tls_verify_modes_become_redis_py_options(verify: str, expected: dict[str, Any]) -> None:
    kwargs = RedisOptions("rediss://cache:6379", tls_ca_file="/ca.pem", tls_verify=verify).connection_kwargs()

    assert {name: kwargs[name] for name in expected} == expected
    assert kwargs["ssl_ca_certs"] == "/ca.pem" and kwargs["socket_timeout"] == TIMEOUT_SECONDS


def test_nothing_is_asked_of_redis_until_first_use() -> None:
    """create_app makes no connection (gunicorn forks after it); a down Redis is only a failing call later."""
    client = shared_redis("redis://127.0.0.1:1/0")
    assert client is not None
    script = client.register_script("return 1")  # SingleFlight registers its script in create_app

    assert client._client is None and script.sha
    with pytest.raises(redis.ConnectionError):
        client.get("anything")
    with pytest.raises(redis.ConnectionError, match="less than a second ago"):
        client.get("anything")  # not asked again at once: a down Redis costs requests nothing


# --------------------------------------------------------------------------------------------------
# the answer cache, the lock and the counts on the cluster


def test_two_apps_share_answers_through_the_cluster(make_app: Callable[..., Flask], cluster_url: str,
                                                    redis_cluster: RedisClusterServers, tmp_path: Any) -> None:
    fake_a, fake_b = FakeRecommender({"u1": ["1000", "1037"]}), FakeRecommender({"u1": ["9999"]})
    host_a = make_app({"recommender": fake_a}, cache_redis_url=cluster_url, cache_dir=str(tmp_path / "a"))
    host_b = make_app({"recommender": fake_b}, cache_redis_url=cluster_url, cache_dir=str(tmp_path / "b"))

    a, b = get(host_a, user_id="u1"), get(host_b, user_id="u1")

    assert (a.status_code, a.headers["X-Cache"]) == (200, "MISS")
    assert (b.status_code, b.headers["X-Cache"]) == (200, "HIT")
    assert b.get_json() == a.get_json() and fake_b.calls == []
    key = full_key(host_a, fake_a.key, "u1")
    owner = redis_cluster.node_for(key).client()
    assert owner.get(key).startswith(b'{"items":["1000","1037"]')  # data, on the node that owns the key's slot
    owner.close()


def test_answers_spread_over_every_node(make_app: Callable[..., Flask], cluster_url: str,
                                        redis_cluster: RedisClusterServers) -> None:
    """Answers are not pinned to one node by a hash tag: the cluster's memory is the sum of its nodes'."""
    fake = FakeRecommender({f"u{i}": ["1000"] for i in range(30)})
    app = make_app({"recommender": fake}, cache_redis_url=cluster_url)

    for i in range(30):
        assert get(app, user_id=f"u{i}").status_code == 200

    owners = {redis_cluster.node_for(full_key(app, fake.key, f"u{i}")).port for i in range(30)}
    assert owners == {node.port for node in redis_cluster.nodes}


class PolledCache(AnswerCache):
    """The shared answer cache; `polled` is set once a follower worker reads it while waiting."""

    def __init__(self, backend: Any, ttl: int) -> None:
        super().__init__(backend, ttl)
        self.polled = threading.Event()

    def get(self, key: str) -> CachedAnswer | None:
        self.polled.set()
        return super().get(key)


def two_workers_fetch_once(app: Flask, make_client: Callable[[], Any]) -> list[str]:
    """Run one key on two SingleFlights with clients of their own (two workers); return who fetched.

    The first worker's fetch waits until the second has found the lock taken and polls the cache.
    """
    service = components(app).service
    cache = PolledCache(service.cache.backend, service.cache.ttl)
    fetched: list[str] = []

    def fetch(worker: str) -> Callable[[float], Recommendation]:
        def run(remaining: float) -> Recommendation:
            fetched.append(worker)
            assert cache.polled.wait(WAIT)
            return Recommendation(["1000"], f"rid-{worker}")
        return run

    key = AnswerCache.key("src", "u1", {"num_results": 10})
    workers = [SingleFlight(cache, make_client()) for _ in range(2)]
    results: list[Recommendation] = []
    first = threading.Thread(target=lambda: results.append(workers[0].run(key, fetch("A"), time.monotonic() + WAIT)))
    first.start()
    deadline = time.monotonic() + WAIT
    while not fetched and time.monotonic() < deadline:  # A holds the lock once it fetches
        time.sleep(0.005)
    results.append(workers[1].run(key, fetch("B"), time.monotonic() + WAIT))
    first.join(WAIT)
    assert [r.recommendation_id for r in results] == ["rid-A", "rid-A"]
    return fetched


def test_the_single_flight_lock_works_across_workers_on_the_cluster(make_app: Callable[..., Flask],
                                                                      cluster_url: str) -> None:
    app = make_app({"recommender": FakeRecommender()}, cache_redis_url=cluster_url)

    assert two_workers_fetch_once(app, lambda: shared_redis(cluster_url)) == ["A"]


def test_recently_recommended_counts_work_on_the_cluster(cluster_url: str, redis_cluster: RedisClusterServers) -> None:
    """ZUNIONSTORE over the hourly buckets needs them on one node: their keys share a hash tag."""
    # Failing (a CROSSSLOT error) would leave the list empty and the counter failing.
    assert two_workers_count(lambda: shared_redis(cluster_url)) == ["1037", "1000", "1074"]
    client = cluster_client(cluster_url)
    buckets = list(client.scan_iter("*recs:recent*"))
    client.close()
    assert buckets and len({redis_cluster.node_for(key.decode()).port for key in buckets}) == 1


# --------------------------------------------------------------------------------------------------
# a node killed and started again


def users_by_node(app: Flask, source_key: str, cluster: RedisClusterServers,
                  victim: RedisServer) -> tuple[list[str], list[str]]:
    """Split 200 users into those whose answers live on victim and the others."""
    on: list[str] = []
    off: list[str] = []
    for i in range(200):
        user = f"u{i}"
        (on if cluster.node_for(full_key(app, source_key, user)) is victim else off).append(user)
    assert len(on) > 11 and len(off) > 11
    return on, off


def timed(app: Flask, user: str) -> TestResponse:
    started = time.monotonic()
    resp = get(app, user_id=user)
    assert time.monotonic() - started < BRAZE_WAITS, "a request waited on a dead node"
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp


def test_a_killed_node_costs_only_its_keys_and_the_service_recovers_when_it_returns(
    make_app: Callable[..., Flask], cluster_url: str, redis_cluster: RedisClusterServers,
    caplog: pytest.LogCaptureFixture,
) -> None:
    victim = redis_cluster.nodes[1]
    fake = FakeRecommender({f"u{i}": ["1000", "1037"] for i in range(200)})
    app = make_app({"recommender": fake}, cache_redis_url=cluster_url, cache_stale_seconds=3600)
    victims, others = users_by_node(app, fake.key, redis_cluster, victim)
    on_victim, elsewhere = victims[0], others[0]
    assert timed(app, on_victim).headers["X-Cache"] == timed(app, elsewhere).headers["X-Cache"] == "MISS"

    victim.kill()

    with caplog.at_level(logging.WARNING, logger="app.caching.answers"):
        # The source works: the victim's user is asked again (its answer is gone), the other is still a hit.
        assert timed(app, elsewhere).headers["X-Cache"] == "HIT"
        resp = timed(app, on_victim)
        assert (resp.headers["X-Cache"], resp.headers["X-Recommendations-Source"]) == ("MISS", "fake")
        # New users by turns: the cache works for one (read, write), fails for the next, ten times over.
        for other, on in zip(others[1:11], victims[1:11]):
            assert timed(app, other).headers["X-Cache"] == timed(app, on).headers["X-Cache"] == "MISS"
        assert [get(app, user_id=user).headers["X-Cache"] for user in others[1:11]] == ["HIT"] * 10
        # The source fails: the other user's stale answer serves; the victim's user gets the fallback, a 200.
        fake.error = UpstreamError("down", code="upstream_timeout", status=504)
        assert timed(app, elsewhere).headers["X-Cache"] == "HIT"
        resp = timed(app, on_victim)
    assert resp.headers["X-Recommendations-Source"] == "fallback" and resp.get_json()
    # The cache failed and worked by turns, ten times each: logged once each, not once a request.
    changes = [r.getMessage().split(" (")[0] for r in caplog.records if r.name == "app.caching.answers"]
    assert changes == ["answer cache failing", "answer cache works again"], changes

    victim.start()
    fake.error = None

    # Recovered when the victim's user is a hit again: an answer was written to the node and read back.
    calls_before = len(fake.calls)
    deadline = time.monotonic() + RECOVERY_DEADLINE
    while (resp := timed(app, on_victim)).headers["X-Cache"] != "HIT":
        assert time.monotonic() < deadline, "the service did not use the restarted node again"
        time.sleep(0.05)  # a poll interval, not a wait for a race: the loop ends on what it observes
    assert len(fake.calls) > calls_before  # the hit is an answer written after the restart
    owner = victim.client()
    assert owner.exists(full_key(app, fake.key, on_victim))
    owner.close()


def test_a_hung_node_costs_one_timeout_a_second_not_one_a_call(cluster_url: str,
                                                                redis_cluster: RedisClusterServers) -> None:
    """A node that accepts but never answers (SIGSTOP, like a host gone from the network) must not hold a worker
    thread for the socket timeout on every call: after one timeout its calls fail at once for PAUSE_SECONDS."""
    victim = redis_cluster.nodes[2]
    client = shared_redis(cluster_url)
    assert client is not None and client.is_cluster
    keys = [f"k{i}" for i in range(200)]
    on_victim = [k for k in keys if redis_cluster.node_for(k) is victim][:20]
    elsewhere = [k for k in keys if redis_cluster.node_for(k) is not victim][:20]
    for key in on_victim + elsewhere:
        client.set(key, "v")

    victim.kill(signal.SIGSTOP)
    try:
        started = time.monotonic()
        failed = 0
        for key in on_victim:
            with pytest.raises(redis.RedisError):
                client.get(key)
            failed += 1
        spent = time.monotonic() - started
        assert [client.get(key) for key in elsewhere] == [b"v"] * len(elsewhere)  # the other nodes still answer
    finally:
        victim.kill(signal.SIGCONT)

    assert failed == 20
    # 20 calls that each waited for the timeout would take 20 x TIMEOUT_SECONDS = 5 s.
    assert spent < 4 * TIMEOUT_SECONDS, spent
    deadline = time.monotonic() + RECOVERY_DEADLINE
    while True:  # the pause ends by itself, and the node answers again
        try:
            assert client.get(on_victim[0]) == b"v"
            break
        except redis.RedisError:
            assert time.monotonic() < deadline, "calls to the node did not resume"
            time.sleep(0.05)


def test_a_restarted_node_rejoining_its_cluster_costs_no_wait(cluster_url: str,
                                                              redis_cluster: RedisClusterServers) -> None:
    """A node started again answers CLUSTERDOWN until it has rejoined; redis-py sleeps 0.25 s on each such
    answer, which the service must not spend in a request's thread."""
    victim = redis_cluster.nodes[1]
    client = shared_redis(cluster_url)
    assert client is not None and client.is_cluster
    key = next(f"k{i}" for i in range(200) if redis_cluster.node_for(f"k{i}") is victim)
    victim.kill()
    with pytest.raises(redis.RedisError):
        client.get(key)
    victim.start()

    slowest, answers = 0.0, []
    deadline = time.monotonic() + RECOVERY_DEADLINE
    while True:
        started = time.monotonic()
        try:
            client.set(key, "back")
            break
        except redis.RedisError as exc:
            answers.append(type(exc).__name__)
        finally:
            slowest = max(slowest, time.monotonic() - started)
        assert time.monotonic() < deadline, f"the node was not used again: {answers[-3:]}"
        time.sleep(0.01)  # a poll interval
    assert slowest < 0.2, f"a call waited {slowest:.2f} s while the node rejoined ({len(answers)} failed calls)"


# --------------------------------------------------------------------------------------------------
# TLS with a user and password (rediss://user:password@host), as ElastiCache Serverless requires


def test_answers_and_the_lock_over_tls_with_a_password(make_app: Callable[..., Flask], tls_redis_url: str,
                                                       tls_redis: RedisServer, tmp_path: Any) -> None:
    assert tls_redis_url.startswith("rediss://recs:") and "%40" in tls_redis_url  # user, escaped password
    ca = str(tls_redis.tls.ca_file) if tls_redis.tls else None
    fake_a, fake_b = FakeRecommender({"u1": ["1000", "1037"]}), FakeRecommender({"u1": ["9999"]})
    host_a = make_app({"recommender": fake_a}, cache_redis_url=tls_redis_url, cache_redis_tls_ca_file=ca,
                      cache_dir=str(tmp_path / "a"))
    host_b = make_app({"recommender": fake_b}, cache_redis_url=tls_redis_url, cache_redis_tls_ca_file=ca,
                      cache_dir=str(tmp_path / "b"))

    assert get(host_a, user_id="u1").headers["X-Cache"] == "MISS"
    assert get(host_b, user_id="u1").headers["X-Cache"] == "HIT" and fake_b.calls == []
    assert not shared_client(host_a).is_cluster
    assert two_workers_fetch_once(host_a, lambda: shared_redis(tls_redis_url, tls_ca_file=ca)) == ["A"]


@pytest.mark.parametrize("settings, why", [
    pytest.param({}, "certificate verify failed", id="certificate-not-trusted"),
    pytest.param({"password": "wrong-password"}, "invalid username-password", id="wrong-password"),
])
def test_a_tls_redis_that_refuses_the_service_costs_the_cache_not_the_answer(
    make_app: Callable[..., Flask], tls_redis_url: str, tls_redis: RedisServer, caplog: pytest.LogCaptureFixture,
    settings: dict[str, str], why: str,
) -> None:
    url = tls_redis_url
    config: dict[str, Any] = {}
    if "password" in settings:
        url = url.replace(url.split("@")[0].split(":", 2)[2], settings["password"])
        config["cache_redis_tls_ca_file"] = str(tls_redis.tls.ca_file) if tls_redis.tls else None
    fake = FakeRecommender({"u1": ["1000"]})
    app = make_app({"recommender": fake}, cache_redis_url=url, **config)

    with caplog.at_level(logging.WARNING):
        first, second = get(app, user_id="u1"), get(app, user_id="u1")

    assert first.status_code == second.status_code == 200
    assert second.headers["X-Cache"] == "MISS" and len(fake.calls) == 2
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert why in logged and "answer cache failing" in logged
    assert "s3cr" not in logged and "wrong-password" not in logged  # no password in the log


def test_tls_verify_none_trusts_any_certificate(make_app: Callable[..., Flask], tls_redis_url: str) -> None:
    fake = FakeRecommender({"u1": ["1000"]})
    app = make_app({"recommender": fake}, cache_redis_url=tls_redis_url, cache_redis_tls_verify="none")

    assert get(app, user_id="u1").headers["X-Cache"] == "MISS"
    assert get(app, user_id="u1").headers["X-Cache"] == "HIT"


def test_a_tls_cluster_with_a_password_serves_answers_the_lock_and_the_counts(
    make_app: Callable[..., Flask], tls_redis_cluster: RedisClusterServers,
) -> None:
    """ElastiCache Serverless's combination: the cluster protocol over TLS, a user and password in the URL."""
    url = tls_redis_cluster.url
    assert url.startswith("rediss://recs:")
    ca = str(tls_redis_cluster.tls.ca_file) if tls_redis_cluster.tls else None
    tls_redis_cluster.flush()
    fake = FakeRecommender({"u1": ["1000", "1037"]})
    app = make_app({"recommender": fake}, cache_redis_url=url, cache_redis_tls_ca_file=ca)

    assert get(app, user_id="u1").headers["X-Cache"] == "MISS"
    assert get(app, user_id="u1").headers["X-Cache"] == "HIT" and len(fake.calls) == 1
    assert shared_client(app).is_cluster  # detected over TLS, as the user it was given
    assert two_workers_fetch_once(app, lambda: shared_redis(url, tls_ca_file=ca)) == ["A"]
    assert two_workers_count(lambda: shared_redis(url, tls_ca_file=ca)) == ["1037", "1000", "1074"]
