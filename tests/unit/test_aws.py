"""app/aws.py, the one place that makes boto3 clients, and create_app's replaceable outside services."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
import requests
from cachelib import SimpleCache
from flask import Flask

from app.aws import RETRY_HANDLER_ID, AwsClients, Timeouts, region_of
from app.components import components
from tests.conftest import FakeRecommender


@pytest.mark.parametrize(("arn", "region"), [
    ("arn:aws:personalize:eu-west-1:123456789012:campaign/movies", "eu-west-1"),
    ("arn:aws:lambda:us-west-2:123456789012:function:transformer", "us-west-2"),
    ("arn:aws-cn:personalize:cn-north-1:123456789012:recommender/r", "cn-north-1"),
    ("pinpoint-transformer", None),
    ("arn:aws:iam::123456789012:role/r", None),
])
def test_region_of_reads_any_arn(arn: str, region: str | None) -> None:
    assert region_of(arn) == region


def test_botocore_still_registers_its_retry_handler_under_the_id_we_replace(dummy_aws: None) -> None:
    """refuse_late_retries relies on botocore's private handler id: if an upgrade renames it, this fails
    (our handler would then run beside botocore's instead of in its place)."""
    client = AwsClients("us-east-1", Timeouts(0.2, 0.5, 2, 2)).personalize_runtime()
    handlers = list(client.meta.events._emitter._lookup_cache.get("needs-retry.personalize-runtime.GetRecommendations")
                    or client.meta.events._emitter._handlers.prefix_search("needs-retry.personalize-runtime"))
    ours = [h for h in handlers if isinstance(h, functools.partial) and h.func.__name__ == "_retry_in_time"]
    assert len(ours) == 1
    # Nothing else answers needs-retry: botocore's own standard handler was unregistered by its id.
    assert [h for h in handlers if h not in ours and "retry" in repr(h).lower()] == []
    assert RETRY_HANDLER_ID.format(service="personalize-runtime") == "retry-config-personalize-runtime"


def test_one_client_per_service_role_and_region(dummy_aws: None) -> None:
    aws = AwsClients("us-east-1", Timeouts(0.2, 0.5, 2, 4))
    assert aws.personalize_runtime() is aws.personalize_runtime(None, None)
    assert aws.personalize_runtime(None, "eu-west-1") is not aws.personalize_runtime()
    assert aws.personalize_runtime(None, "eu-west-1").meta.region_name == "eu-west-1"
    assert aws.s3() is aws.s3()
    config = aws.personalize_runtime().meta.config
    assert (config.connect_timeout, config.read_timeout, config.max_pool_connections) == (0.2, 0.5, 4)
    assert aws.lambda_().meta.config.retries["total_max_attempts"] == 1


def test_a_misspelt_service_is_refused(make_app: Callable[..., Flask]) -> None:
    with pytest.raises(TypeError, match="recomender"):
        make_app({"recomender": FakeRecommender()})


def test_every_outside_service_can_be_replaced(make_app: Callable[..., Flask], redis_url: str) -> None:
    import redis

    backend, session, lock = SimpleCache(), requests.Session(), redis.Redis.from_url(redis_url)
    fake = FakeRecommender({"u1": ["1000"]})
    app = make_app({"recommender": fake, "answer_backend": backend, "lock_client": lock, "http_session": session},
                   cache_redis_url=redis_url, catalog_uri="https://feeds.example.com/catalog.csv")
    service = components(app).service
    assert service.cache.backend is backend
    assert service.flights.lock_client is lock
    assert service.catalog.source._session is session
    assert service.recommender.inner is fake
    lock.close()


def test_timeouts_make_a_botocore_config() -> None:
    config: Any = Timeouts(connect=0.3, read=0.8, attempts=4, pool=17).config()
    assert (config.connect_timeout, config.read_timeout, config.max_pool_connections) == (0.3, 0.8, 17)
    assert config.retries == {"mode": "standard", "total_max_attempts": 4}
