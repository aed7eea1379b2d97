"""A configuration's RecommendationProviderRoleArn: Personalize is called with AssumeRole's credentials."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.stub import Stubber
from flask import Flask

from app.aws import SESSION_NAME, AwsClients
from app.pinpoint.configs import SQLiteStore, new_record
from tests.conftest import FakeRecommender, stubbed

CAMPAIGN = "arn:aws:personalize:eu-west-1:123456789012:campaign/movies"
ROLE = "arn:aws:iam::123456789012:role/PinpointRecommendations"
ASSUME = {"RoleArn": ROLE, "RoleSessionName": SESSION_NAME, "DurationSeconds": 3600}


class RawBody:
    """The raw body botocore reads a response from."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def credentials(n: int, expires_in: timedelta) -> dict[str, Any]:
    return {"Credentials": {"AccessKeyId": f"ASIAASSUMEDKEY{n:06d}", "SecretAccessKey": f"secret-{n}" * 4,
                            "SessionToken": f"session-token-{n}",
                            "Expiration": datetime.now(timezone.utc) + expires_in}}


@pytest.fixture
def sts(dummy_aws: None) -> Iterator[tuple[Any, Stubber]]:
    with stubbed("sts", "eu-west-1") as pair:
        yield pair


@pytest.fixture
def signed() -> list[dict[str, str]]:
    """The headers of every request sent to Personalize (answered here, never sent anywhere)."""
    return []


@pytest.fixture
def app_with_role(make_app: Callable[..., Flask], tmp_path: Path, sts: tuple[Any, Stubber],
                  signed: list[dict[str, str]]) -> tuple[Flask, str, list[str | None]]:
    sts_regions: list[str | None] = []

    def capture(request: AWSRequest, **_: Any) -> AWSResponse:
        signed.append({name: value.decode() if isinstance(value, bytes) else value
                       for name, value in request.headers.items()})
        body = orjson.dumps({"itemList": [{"itemId": "1000"}, {"itemId": "1037"}], "recommendationId": "rid"})
        return AWSResponse(request.url, 200, {"Content-Type": "application/json"}, RawBody(body))

    class CapturedAws(AwsClients):
        """The production clients, credentials and all, with STS stubbed and Personalize answered here."""

        def sts(self, region: str | None = None) -> Any:
            sts_regions.append(region)
            return sts[0]

        def personalize_runtime(self, role_arn: str | None = None, region: str | None = None) -> Any:
            client = super().personalize_runtime(role_arn, region)
            client.meta.events.register("before-send.personalize-runtime.GetRecommendations", capture,
                                        unique_id="test-capture")
            return client

    store = SQLiteStore(str(tmp_path / "r.sqlite3"))
    record = new_record({"RecommendationProviderUri": CAMPAIGN, "RecommendationProviderRoleArn": ROLE})
    store.create(record)
    app = make_app({"recommender": FakeRecommender(), "recommender_store": store, "aws": CapturedAws(None)},
                   serve_recommenders=True)
    return app, record["Id"], sts_regions


def access_key(headers: dict[str, str]) -> str:
    return headers["Authorization"].split("Credential=")[1].split("/")[0]


def test_personalize_is_signed_with_the_assumed_role(app_with_role: tuple[Flask, str, list[str | None]],
                                                    sts: tuple[Any, Stubber], signed: list[dict[str, str]]) -> None:
    app, config_id, sts_regions = app_with_role
    sts[1].add_response("assume_role", credentials(1, timedelta(hours=1)), ASSUME)
    response = app.test_client().get(f"/recommendations?user_id=u9&recommender={config_id}")
    assert response.status_code == 200
    assert response.headers["X-Recommendations-Source"] == "personalize"
    assert [item["id"] for item in response.get_json()[:2]] == ["1000", "1037"]
    assert len(signed) == 1
    assert access_key(signed[0]) == "ASIAASSUMEDKEY000001"
    assert signed[0]["X-Amz-Security-Token"] == "session-token-1"
    assert "/eu-west-1/personalize/" in signed[0]["Authorization"]
    assert sts_regions == ["eu-west-1"]


def test_credentials_are_refreshed_before_they_expire(app_with_role: tuple[Flask, str, list[str | None]],
                                                      sts: tuple[Any, Stubber], signed: list[dict[str, str]]) -> None:
    app, config_id, _ = app_with_role
    # The first credentials are inside botocore's refresh window (15 minutes): the next call assumes the role
    # again; the second ones last an hour, so a third call reuses them (a third AssumeRole would fail the stub).
    sts[1].add_response("assume_role", credentials(1, timedelta(minutes=5)), ASSUME)
    sts[1].add_response("assume_role", credentials(2, timedelta(hours=1)), ASSUME)
    client = app.test_client()
    for user in ("u1", "u2", "u3"):
        assert client.get(f"/recommendations?user_id={user}&recommender={config_id}").status_code == 200
    assert [access_key(h) for h in signed] == ["ASIAASSUMEDKEY000001", "ASIAASSUMEDKEY000002",
                                               "ASIAASSUMEDKEY000002"]
    assert [h["X-Amz-Security-Token"] for h in signed] == ["session-token-1", "session-token-2", "session-token-2"]


def test_the_environment_s_own_credentials_are_never_used_for_a_role(
        app_with_role: tuple[Flask, str, list[str | None]], sts: tuple[Any, Stubber],
        signed: list[dict[str, str]], caplog: pytest.LogCaptureFixture) -> None:
    app, config_id, _ = app_with_role
    sts[1].add_client_error("assume_role", "AccessDenied", http_status_code=403)
    response = app.test_client().get(f"/recommendations?user_id=u9&recommender={config_id}")
    assert response.status_code == 200  # the fallback answers
    assert response.headers["X-Recommendations-Source"] != "personalize"
    assert signed == []  # nothing reached Personalize with the dummy environment credentials
    # The log names the role, not just "Personalize failed".
    assert any(r.levelname == "ERROR" and ROLE in r.getMessage() and "AssumeRole" in r.getMessage()
               for r in caplog.records)


def test_role_clients_say_when_an_assume_role_call_is_due(sts: tuple[Any, Stubber]) -> None:
    """The guard calls in the request's thread only when no AssumeRole is due (it has its own, longer timeouts)."""
    class StubbedSts(AwsClients):
        def sts(self, region: str | None = None) -> Any:
            return sts[0]

    clients = StubbedSts(None)
    sts[1].add_response("assume_role", credentials(1, timedelta(hours=1)), ASSUME)

    client = clients.personalize_runtime(ROLE, "eu-west-1")
    signing = clients.credentials(ROLE, "eu-west-1")
    assert signing.refresh_needed()  # not assumed yet: the first call assumes the role

    def answer(request: AWSRequest, **_: Any) -> AWSResponse:
        return AWSResponse(request.url, 200, {"Content-Type": "application/json"}, RawBody(b'{"itemList": []}'))

    client.meta.events.register("before-send.personalize-runtime.GetRecommendations", answer)
    client.get_recommendations(campaignArn=CAMPAIGN, userId="u1")

    assert clients.credentials(ROLE, "eu-west-1") is signing  # the very credentials the client signs with
    assert not signing.refresh_needed()  # an hour left: the next calls need no AssumeRole
