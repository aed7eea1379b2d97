"""Fixtures shared by every tier: sample data, a fake recommender that records calls, the app."""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from botocore.credentials import Credentials
from botocore.stub import Stubber
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.aws import AwsClients, Timeouts
from app.sources.recommender import NO_OPTIONS, Options, Recommendation
from tests.redis_server import (RedisClusterServers, RedisServer, RedisUnavailable, Tls, given_redis_url,
                                must_fail)
from tests.wire_stub import WireStub

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CATALOG = ROOT / "sample" / "catalog.csv"
SAMPLE_BATCH = ROOT / "sample" / "batch-output.json.out"
TEST_REDIS_PASSWORD = "s3cr:t/p@ss%"  # characters a URL must escape: the rediss:// URL carries it percent-encoded
TEST_CREDENTIALS = Credentials("testing", "testing", "testing")  # dummy_aws's keys


class FakeRecommender:
    """A recommendation source that answers from a dict and records every call."""

    name = "fake"

    def __init__(self, answers: dict[str, list[str]] | None = None, key: str = "fake-source") -> None:
        self.answers = answers or {}
        self.key = key
        self.calls: list[tuple[str | None, int]] = []
        self.options: list[Options] = []
        self.error: Exception | None = None

    def recommend(self, user_id: str | None, num_results: int, options: Options = NO_OPTIONS) -> Recommendation:
        self.calls.append((user_id, num_results))
        self.options.append(options)
        if self.error is not None:
            raise self.error
        key = f"item:{options.item_id}" if options.item_id else user_id
        return Recommendation(self.answers.get(key or "", [])[:num_results], recommendation_id=f"rid-{key}")

    def check_ready(self) -> None:
        return None


class FakeAws(AwsClients):
    """AwsClients whose clients are the test's own (usually under botocore's Stubber); records what was asked.

    personalize: (role ARN, region) -> a personalize-runtime client; lambdas: region -> a lambda client;
    s3: () -> an S3 client. A client not given is the real one AwsClients would build.
    """

    def __init__(self, personalize: Callable[[str | None, str | None], Any] | None = None,
                 lambdas: Callable[[str | None], Any] | None = None, s3: Callable[[], Any] | None = None,
                 region: str | None = "us-east-1") -> None:
        super().__init__(region)
        self._personalize, self._lambdas, self._s3 = personalize, lambdas, s3
        self.asked: list[tuple[str, str | None, str | None]] = []

    def personalize_runtime(self, role_arn: str | None = None, region: str | None = None) -> Any:
        self.asked.append(("personalize-runtime", role_arn, region))
        if self._personalize is None:
            return super().personalize_runtime(role_arn, region)
        return self._personalize(role_arn, region)

    def credentials(self, role_arn: str | None = None, region: str | None = None) -> Any:
        # The test's own client signs with dummy_aws's keys, as a client made from the environment would.
        return TEST_CREDENTIALS if self._personalize is not None else super().credentials(role_arn, region)

    def lambda_(self, region: str | None = None) -> Any:
        self.asked.append(("lambda", None, region))
        return super().lambda_(region) if self._lambdas is None else self._lambdas(region)

    def s3(self) -> Any:
        return super().s3() if self._s3 is None else self._s3()


@pytest.fixture
def cache_dir(tmp_path: Path) -> str:
    return str(tmp_path / "cache")


@pytest.fixture
def make_app(cache_dir: str, tmp_path: Path) -> Callable[..., Flask]:
    """Build an app on the sample catalog with a file cache of its own; keyword settings override."""

    def build(services: dict[str, Any] | None = None, **settings: Any) -> Flask:
        # The per-process copy of answers is off by default here, so tests that reach into the shared
        # backend (garbage, backdated entries, Redis down) see it directly; tests/unit/test_local_cache.py
        # covers the copy itself, and e2e runs with the production default.
        # Request lines written at once: a line an earlier test's app still held would land in this test's
        # captured output. The batched writing is tested on RequestLog itself and under gunicorn (e2e).
        config = {"catalog_uri": str(SAMPLE_CATALOG), "recommendations_uri": str(SAMPLE_BATCH), "cache_dir": cache_dir,
                  "data_dir": str(tmp_path / "data"), "cache_local_seconds": 0, "log_flush_ms": 0}
        config.update(settings)
        app = create_app(config, **(services or {}))  # a misspelt service name is a TypeError
        app.config["TESTING"] = True
        return app

    return build


@pytest.fixture
def fake_recommender() -> FakeRecommender:
    return FakeRecommender({"u1": ["1000", "1037", "1074"], "u2": ["1111", "1000"]})


@pytest.fixture
def app(make_app: Callable[..., Flask], fake_recommender: FakeRecommender) -> Flask:
    return make_app({"recommender": fake_recommender})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Yield the URL of a Redis of the tests' own (a redis-server on a free port, or TEST_REDIS_URL).

    Fail, never skip, under CI=true when there is none; elsewhere skip the tests that need it.
    """
    if (given := given_redis_url()) is not None:
        yield given
        return
    with _running(RedisServer(tmp_path_factory.mktemp("redis") / "redis.log")) as server:
        yield server.url


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """Yield the URL of the tests' own Redis, emptied before and after the test."""
    client = redis.Redis.from_url(redis_server, socket_connect_timeout=1)
    client.flushdb()
    yield redis_server
    client.flushdb()
    client.close()


@contextmanager
def _running(server: Any) -> Iterator[Any]:
    """Start a test server, yield it and stop it; fail under CI=true, else skip, when it cannot start."""
    try:
        server.start()
    except RedisUnavailable as exc:
        if must_fail():
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """Yield a 3-node Redis Cluster of the tests' own (started once per session, on free loopback ports)."""
    with _running(RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))) as cluster:
        yield cluster


@pytest.fixture
def cluster_url(redis_cluster: RedisClusterServers) -> Iterator[str]:
    """Yield the URL of the tests' cluster, every node running and empty, emptied again after the test."""
    for node in redis_cluster.nodes:
        if node.process is None or node.process.poll() is not None:  # a test killed it
            node.start()
    redis_cluster.wait_until_ok()
    redis_cluster.flush()
    yield redis_cluster.url
    redis_cluster.flush()


@pytest.fixture(scope="session")
def tls_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """Yield a 3-node Redis Cluster speaking only TLS, with one ACL user and password: ElastiCache Serverless's way."""
    folder = tmp_path_factory.mktemp("redis-tls-cluster")
    with _running(RedisClusterServers(folder, tls=Tls.make(folder / "tls"), user="recs",
                                      password=TEST_REDIS_PASSWORD)) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Yield a redis-server speaking only TLS, with a certificate made for it and one ACL user with a password."""
    folder = tmp_path_factory.mktemp("redis-tls")
    with _running(RedisServer(folder / "redis.log", tls=Tls.make(folder / "tls"), user="recs",
                              password=TEST_REDIS_PASSWORD)) as server:
        yield server


@pytest.fixture
def tls_redis_url(tls_redis: RedisServer) -> Iterator[str]:
    """Yield the rediss:// URL (user and password in it) of the TLS server, emptied before and after the test."""
    client = tls_redis.client()
    client.flushdb()
    yield tls_redis.url
    client.flushdb()
    client.close()


@pytest.fixture
def dummy_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give boto3 credentials that cannot reach anything real, and no profile or endpoint from the host."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_PERSONALIZE_RUNTIME"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def isolated_aws(dummy_aws: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """dummy_aws, and nothing else from the machine: no config or credentials file, CA bundle or proxy."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
                 "http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


EVENTS_TRACKER = "tracker-1"


@pytest.fixture
def events_standin(dummy_aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A PutEvents stand-in knowing EVENTS_TRACKER, where AWS_ENDPOINT_URL_PERSONALIZE_EVENTS points."""
    from tests.standin.personalize_events import start_events_standin

    with start_events_standin([EVENTS_TRACKER]) as handle:
        monkeypatch.setenv("AWS_ENDPOINT_URL_PERSONALIZE_EVENTS", handle.url)
        yield handle


@contextmanager
def stubbed(service_name: str, region: str = "us-east-1") -> Iterator[tuple[Any, Stubber]]:
    """Yield a real boto3 client under botocore's Stubber; every queued answer must be used."""
    client = boto3.client(service_name, region_name=region)
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


@pytest.fixture
def runtime(dummy_aws: None) -> Iterator[tuple[Any, WireStub]]:
    """Yield a personalize-runtime client as AwsClients makes it (one attempt: every answer is queued by the test)
    and its WireStub: requests the service signs and sends are answered on the wire; every queued answer must be
    used."""
    client = AwsClients("us-east-1", Timeouts(connect=1, read=1, attempts=1, pool=2)).personalize_runtime()
    with WireStub(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]
