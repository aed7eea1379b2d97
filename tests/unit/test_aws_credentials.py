"""Running without AWS credentials (issue 12, item 11): said at start and at the first failure, once, without a
traceback; /readyz shows why answers are fallbacks; a transformer without a region or credentials fails at once.

Every test runs with no credentials anywhere boto3 looks (environment, files, instance metadata), so
nothing reaches the network.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from flask import Flask

from app import warm_up
from app.aws import AwsClients
from app.pinpoint.configs import SQLiteStore, new_record

ARN = "arn:aws:personalize:us-east-1:123456789012:campaign/movies"
ADMIN_KEY = "admin-key-0123456789abcdef"
SENTENCE = "no AWS credentials found"


@pytest.fixture(autouse=True)
def no_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leave boto3 nothing to find: no keys, no profile or config file, no instance metadata, no region."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def said(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if SENTENCE in r.getMessage()]


@pytest.fixture
def personalize_app(make_app: Callable[..., Flask]) -> Flask:
    app = make_app(personalize_campaign_arn=ARN)
    return app


def test_start_says_there_are_no_credentials_and_readyz_shows_it(personalize_app: Flask,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    warm_up(personalize_app)
    [line] = said(caplog)
    assert line.levelname == "ERROR" and "AWS_ACCESS_KEY_ID" in line.getMessage() and line.exc_info is None

    response = personalize_app.test_client().get("/readyz")
    # Ready: the fallbacks answer; 503 would take every worker out of the load balancer instead.
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready", "source": "personalize", "catalog_items": 40,
                                   "breaker": "closed", "last_error": "upstream_credentials"}


def test_the_first_failing_call_says_it_once_and_never_with_a_traceback(personalize_app: Flask,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    client = personalize_app.test_client()
    for n in range(4):
        response = client.get(f"/recommendations?user_id=u{n}")
        assert response.status_code == 200 and response.headers["X-Recommendations-Source"] != "personalize"
    [line] = said(caplog)
    assert line.levelname == "ERROR" and "AWS_ACCESS_KEY_ID" in line.getMessage()
    assert not [r for r in caplog.records if r.exc_info]
    state = client.get("/readyz").get_json()
    assert state["last_error"] == "upstream_credentials" and state["breaker"] in ("closed", "open")


def test_readyz_names_the_breaker_once_it_opens(make_app: Callable[..., Flask]) -> None:
    app = make_app(personalize_campaign_arn=ARN, breaker_failure_threshold=2)
    client = app.test_client()
    for n in range(3):
        client.get(f"/recommendations?user_id=u{n}")
    body = client.get("/readyz").get_json()
    assert (body["breaker"], body["last_error"]) == ("open", "upstream_credentials")
    assert set(body) == {"status", "source", "catalog_items", "breaker", "last_error"}  # no paths, no keys


class CountingSession:
    """A real boto3 session that records the clients made from it."""

    def __init__(self, built: list[str]) -> None:
        self._session = boto3.session.Session()
        self.built = built

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def client(self, service: str, **kwargs: Any) -> Any:
        self.built.append(service)
        return self._session.client(service, **kwargs)


def configured_app(make_app: Callable[..., Flask], tmp_path: Path, built: list[str],
                   region: str | None = None) -> tuple[Flask, str]:
    """An app with the admin API on and a stored configuration whose transformer is a bare function name."""
    store = SQLiteStore(str(tmp_path / "recommenders.sqlite3"))
    aws = AwsClients(region, session_factory=lambda: CountingSession(built))  # as create_app would, with AWS_REGION
    app = make_app({"recommender_store": store, "aws": aws}, admin_api_keys=ADMIN_KEY,
                   **({"aws_region": region} if region else {}))
    record = new_record({"RecommendationProviderUri": ARN, "RecommendationTransformerUri": "pinpoint-transformer",
                         "Attributes": {"Title": "Title"}, "RecommendationsPerMessage": 2})
    store.create(record)
    return app, record["Id"]


@pytest.mark.parametrize("region", [None, "us-east-1"])
def test_attributes_without_region_or_credentials_fall_back_at_once_and_say_so_once(
    make_app: Callable[..., Flask], tmp_path: Path, caplog: pytest.LogCaptureFixture, region: str | None,
) -> None:
    built: list[str] = []
    app, config_id = configured_app(make_app, tmp_path, built, region)
    warm_up(app)
    client = app.test_client()
    for _ in range(3):
        response = client.get(f"/recommendations?user_id=u1&recommender={config_id}&format=attributes")
        assert response.status_code == 200
        assert response.headers["X-Fallback-Reason"] == "transformer_failed"
        assert len(response.get_json()["Title"]) == 2  # the catalog's names, in the same shape
    assert not [r for r in caplog.records if r.exc_info]
    transformer_lines = [r.getMessage() for r in caplog.records if r.name == "app.pinpoint.serving"]
    assert len(transformer_lines) == 1  # once, not per request
    if region is None:
        assert "AWS_REGION" in transformer_lines[0]
    else:
        assert SENTENCE in transformer_lines[0]
    assert said(caplog)[0].levelname == "ERROR"
    assert "lambda" not in built  # failed before making a client (and botocore's look-ups) in the request
