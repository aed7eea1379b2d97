"""PersonalizeRuntime sends, byte for byte, the request botocore's own client sends for the same call.

Time and the invocation id are frozen; each request is caught at botocore's before-send (the last step before
the HTTP session) and compared: method, URL, every header in order (Authorization included) and body.
"""
from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.credentials import Credentials, RefreshableCredentials

from app.aws import AwsClients, Timeouts
from app.sources.personalize import PersonalizeRuntime, request_for
from app.sources.recommender import Options
from tests.wire_stub import EVENT, _Raw

CAMPAIGN_ARN = "arn:aws:personalize:eu-west-1:123456789012:campaign/braze-recs"
RECOMMENDER_ARN = "arn:aws:personalize:eu-west-1:123456789012:recommender/top-picks"
FROZEN = datetime.datetime(2026, 3, 4, 5, 6, 7)


@pytest.fixture(autouse=True)
def frozen(monkeypatch: pytest.MonkeyPatch, dummy_aws: None) -> None:
    """Sign at one instant with one invocation id, whoever signs."""
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda remove_tzinfo=True: FROZEN)
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID("12345678-1234-5678-1234-567812345678"))


def wire(request: Any) -> tuple[str, str, list[tuple[str, bytes]], bytes]:
    """Return what goes on the wire: http.client sends str header values as latin-1, bytes as they are."""
    headers = [(name, value if isinstance(value, bytes) else value.encode("latin-1"))
               for name, value in request.headers.items()]
    return request.method, request.url, headers, request.body


@pytest.fixture
def sent() -> list[Any]:
    return []


def client_for(sent: list[Any], region: str = "eu-west-1") -> Any:
    """A personalize-runtime client as production makes it, whose requests are recorded and answered here."""
    client = AwsClients(region, Timeouts(connect=0.2, read=0.5, attempts=2, pool=4)).personalize_runtime()

    def answer(request: Any, **kwargs: Any) -> AWSResponse:
        sent.append(wire(request))
        return AWSResponse(request.url, 200, {"Content-Type": "application/json"},
                           _Raw(b'{"itemList": [{"itemId": "1000"}], "recommendationId": "RID"}'))

    client.meta.events.register(EVENT, answer)
    return client


PARAMS = [
    request_for(CAMPAIGN_ARN, "user 42/é", 7),
    request_for(RECOMMENDER_ARN, None, 25, Options(item_id="1000")),
    request_for(CAMPAIGN_ARN, "u1", 10, Options(filter_arn=CAMPAIGN_ARN.replace("campaign", "filter"),
                                                filter_values=(("CATEGORY", "shoes,hats"),),
                                                context=(("DEVICE", "mobile"),)),
                promotion={"name": "p", "filterArn": "arn:aws:personalize:eu-west-1:1:filter/p",
                           "percentPromotedItems": 20}),
]


@pytest.mark.parametrize("params", PARAMS, ids=["campaign-unicode-user", "recommender-item", "filter-context-promo"])
@pytest.mark.parametrize("credentials", [Credentials("AKIDEXAMPLE", "secret", "session-token"),
                                         Credentials("AKIDEXAMPLE", "secret")], ids=["with-token", "without-token"])
def test_the_signed_request_is_botocore_s(sent: list[Any], params: dict[str, Any], credentials: Credentials,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", credentials.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", credentials.secret_key)
    if credentials.token:
        monkeypatch.setenv("AWS_SESSION_TOKEN", credentials.token)
    else:
        monkeypatch.delenv("AWS_SESSION_TOKEN")
    client = client_for(sent)
    client.get_recommendations(**params)
    answer = PersonalizeRuntime(client, credentials).get_recommendations(**params)
    assert answer["itemList"] == [{"itemId": "1000"}]
    botocore_s, ours = sent
    assert ours == botocore_s
    assert dict(ours[2])["Authorization"].startswith(b"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260304/eu-west-1/")


def test_the_endpoint_override_and_region_are_botocore_s(sent: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_PERSONALIZE_RUNTIME", "https://personalize.internal.example:8443")
    client = client_for(sent, region="ap-southeast-2")
    client.get_recommendations(**PARAMS[0])
    PersonalizeRuntime(client, Credentials("testing", "testing", "testing")).get_recommendations(**PARAMS[0])
    botocore_s, ours = sent
    assert ours == botocore_s
    assert ours[1] == "https://personalize.internal.example:8443/recommendations"
    assert b"/ap-southeast-2/personalize/aws4_request" in dict(ours[2])["Authorization"]


def test_refreshable_credentials_are_refreshed_before_signing(sent: list[Any]) -> None:
    """An assumed role or instance role: botocore refreshes the keys when they near expiry, and they sign."""
    keys = iter(["first", "second"])

    def refresh() -> dict[str, str]:
        expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)  # inside the window
        return {"access_key": next(keys), "secret_key": "s", "token": "t", "expiry_time": expiry.isoformat()}

    credentials = RefreshableCredentials.create_from_metadata(refresh(), refresh, "assume-role")
    runtime = PersonalizeRuntime(client_for(sent), credentials)
    runtime.get_recommendations(**PARAMS[0])
    assert b"Credential=second/" in dict(sent[0][2])["Authorization"]


def test_the_http_session_is_the_client_s(sent: list[Any]) -> None:
    """botocore keeps the client's HTTP session at client._endpoint.http_session; an upgrade that moves it fails here."""
    client = client_for(sent)
    runtime = PersonalizeRuntime(client, Credentials("a", "b"))
    assert runtime._http is client._endpoint.http_session
    timeout = runtime._http._timeout
    assert runtime._http._max_pool_connections == 4  # PERSONALIZE_MAX_CONCURRENCY, as the boto3 call had it
    assert (timeout.connect_timeout, timeout.read_timeout) == (0.2, 0.5)
