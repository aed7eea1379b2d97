"""app/sources/personalize.py on a personalize-runtime client as AwsClients makes it, answered on the wire
(tests/wire_stub.py): requests are serialised, signed, sent and parsed as in production."""
from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import (
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from app.aws import AwsClients, Timeouts
from app.errors import InvalidParameterError, UpstreamError
from app.sources.personalize import (
    PersonalizeRecommender,
    request_for,
)
from app.sources.recommender import CALL_DEADLINE, Recommendation
from tests.conftest import TEST_CREDENTIALS
from tests.wire_stub import WireStub

CAMPAIGN_ARN = "arn:aws:personalize:us-east-1:123456789012:campaign/braze-recs"
RECOMMENDER_ARN = "arn:aws:personalize:us-east-1:123456789012:recommender/top-picks"


# Dummy credentials and no host profile or endpoint for every test here (the fixture is in tests/conftest.py).
pytestmark = pytest.mark.usefixtures("dummy_aws")


def recommender_on(client: Any, arn: str = CAMPAIGN_ARN) -> PersonalizeRecommender:
    return PersonalizeRecommender(arn, lambda: client, credentials=lambda: TEST_CREDENTIALS)


# --- request building -------------------------------------------------------------------------------


def test_request_for_campaign_arn_uses_campaign_arn() -> None:
    assert request_for(CAMPAIGN_ARN, "user-1", 7) == {"campaignArn": CAMPAIGN_ARN, "userId": "user-1", "numResults": 7}


def test_request_for_recommender_arn_uses_recommender_arn() -> None:
    assert request_for(RECOMMENDER_ARN, "user-1", 3) == {
        "recommenderArn": RECOMMENDER_ARN,
        "userId": "user-1",
        "numResults": 3,
    }


def test_campaign_request_reaches_the_client_exactly(runtime: tuple[Any, WireStub]) -> None:
    client, stubber = runtime
    stubber.add_response(
        "get_recommendations",
        {"itemList": [{"itemId": "1000"}], "recommendationId": "RID-1"},
        expected_params={"campaignArn": CAMPAIGN_ARN, "userId": "user 42/é", "numResults": 5},
    )
    assert recommender_on(client).recommend("user 42/é", 5).item_ids == ["1000"]


def test_recommender_request_reaches_the_client_exactly(runtime: tuple[Any, WireStub]) -> None:
    client, stubber = runtime
    stubber.add_response(
        "get_recommendations",
        {"itemList": [{"itemId": "7"}]},
        expected_params={"recommenderArn": RECOMMENDER_ARN, "userId": "u1", "numResults": 25},
    )
    assert recommender_on(client, RECOMMENDER_ARN).recommend("u1", 25).item_ids == ["7"]


# --- responses ----------------------------------------------------------------------------------------


def test_response_becomes_recommendation_in_order(runtime: tuple[Any, WireStub]) -> None:
    client, stubber = runtime
    stubber.add_response(
        "get_recommendations",
        {
            "itemList": [
                {"itemId": "1740", "score": 0.9},
                {"itemId": "1333", "score": 0.5},
                {"itemId": "1000", "score": 0.7},
            ],
            "recommendationId": "RID-abc",
        },
        expected_params={"campaignArn": CAMPAIGN_ARN, "userId": "u1", "numResults": 3},
    )
    answer = recommender_on(client).recommend("u1", 3)
    assert answer == Recommendation(item_ids=["1740", "1333", "1000"], recommendation_id="RID-abc")


def test_entries_without_item_id_are_dropped(runtime: tuple[Any, WireStub]) -> None:
    client, stubber = runtime
    stubber.add_response(
        "get_recommendations",
        {"itemList": [{"itemId": "a"}, {"score": 0.4}, {"itemId": ""}, {"itemId": "b"}], "recommendationId": "R"},
    )
    assert recommender_on(client).recommend("u1", 10).item_ids == ["a", "b"]


def test_empty_response_gives_no_items_and_no_id(runtime: tuple[Any, WireStub]) -> None:
    client, stubber = runtime
    stubber.add_response("get_recommendations", {})
    assert recommender_on(client).recommend("u1", 10) == Recommendation(item_ids=[], recommendation_id=None)


# --- error mapping from Personalize's answers -------------------------------------------------------


def call_with_error(runtime: tuple[Any, WireStub], code: str, status: int, message: str = "nope") -> Exception:
    client, stubber = runtime
    stubber.add_client_error(
        "get_recommendations", service_error_code=code, service_message=message, http_status_code=status
    )
    with pytest.raises(Exception) as info:
        recommender_on(client).recommend("u1", 5)
    return info.value


def test_invalid_input_is_a_400_rejected_by_personalize(runtime: tuple[Any, WireStub]) -> None:
    error = call_with_error(runtime, "InvalidInputException", 400, "userId is too long")
    assert isinstance(error, InvalidParameterError)
    assert (error.status, error.code) == (400, "rejected_by_personalize")
    assert "userId is too long" in error.message


def test_resource_not_found_is_a_502_recommender_not_found(runtime: tuple[Any, WireStub],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    error = call_with_error(runtime, "ResourceNotFoundException", 404)
    assert isinstance(error, UpstreamError)
    assert (error.status, error.code) == (502, "recommender_not_found")
    assert CAMPAIGN_ARN in error.message
    # A wrong setting turns every answer into a fallback: the log must say which ARN, at ERROR.
    [record] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert CAMPAIGN_ARN in record.getMessage() and "PERSONALIZE_CAMPAIGN_ARN" in record.getMessage()


@pytest.mark.parametrize(("code", "status"), [("ThrottlingException", 400), ("TooManyRequestsException", 400),
                                              ("SlowDown", 429)])
def test_throttling_is_a_503_with_retry_after(runtime: tuple[Any, WireStub], code: str, status: int) -> None:
    error = call_with_error(runtime, code, status)
    assert isinstance(error, UpstreamError)
    assert (error.status, error.code, error.retry_after) == (503, "upstream_throttled", 1)


def test_internal_failure_is_a_502_upstream_error(runtime: tuple[Any, WireStub]) -> None:
    error = call_with_error(runtime, "InternalFailure", 500)
    assert isinstance(error, UpstreamError)
    assert (error.status, error.code, error.retry_after) == (502, "upstream_error", None)
    assert "InternalFailure" in error.message


@pytest.mark.parametrize("code", ["AccessDeniedException", "UnrecognizedClientException", "ExpiredTokenException"])
def test_refused_credentials_are_upstream_access_denied(runtime: tuple[Any, WireStub], code: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    error = call_with_error(runtime, code, 403)
    assert isinstance(error, UpstreamError)
    assert (error.status, error.code) == (502, "upstream_access_denied")
    assert code in error.message
    [record] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert code in record.getMessage() and CAMPAIGN_ARN in record.getMessage()


# --- errors raised by botocore itself -----------------------------------------------------------------


ENDPOINT = "https://personalize-runtime.us-east-1.amazonaws.com"


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (ReadTimeoutError(endpoint_url=ENDPOINT), 504, "upstream_timeout"),
        (ConnectTimeoutError(endpoint_url=ENDPOINT), 504, "upstream_timeout"),
        (EndpointConnectionError(endpoint_url=ENDPOINT), 502, "upstream_unavailable"),
    ],
    ids=["read-timeout", "connect-timeout", "endpoint-connection"],
)
def test_transport_errors_are_mapped(runtime: tuple[Any, WireStub], exc: Exception, status: int, code: str) -> None:
    client, _ = runtime
    sent: list[Any] = []

    def fail(request: Any, **kwargs: Any) -> None:  # where botocore's HTTP session raises them
        sent.append(request)
        raise exc

    client.meta.events.register_first("before-send.personalize-runtime.GetRecommendations", fail)
    with pytest.raises(UpstreamError) as info:
        recommender_on(client).recommend("u1", 5)
    assert (info.value.status, info.value.code) == (status, code)
    assert info.value.__cause__ is exc
    assert len(sent) == 1


def test_no_credentials_is_upstream_credentials_and_sends_nothing(runtime: tuple[Any, WireStub]) -> None:
    client, stub = runtime
    said: list[bool] = []
    recommender = PersonalizeRecommender(CAMPAIGN_ARN, lambda: client, credentials=lambda: None,
                                         on_no_credentials=lambda: said.append(True))
    with pytest.raises(UpstreamError) as info:
        recommender.recommend("u1", 5)
    assert (info.value.status, info.value.code) == (503, "upstream_credentials")
    assert isinstance(info.value.__cause__, NoCredentialsError)
    assert said == [True] and stub.requests == []


# --- client configuration and construction ---------------------------------------------------------


def test_client_config_sets_timeouts_retries_and_pool() -> None:
    config = Timeouts(connect=0.3, read=0.8, attempts=4, pool=17).config()
    assert isinstance(config, Config)
    assert config.connect_timeout == 0.3
    assert config.read_timeout == 0.8
    assert config.retries is not None and config.retries["mode"] == "standard"
    assert config.max_pool_connections == 17


def test_client_config_is_accepted_by_a_real_client() -> None:
    client = boto3.client(
        "personalize-runtime", region_name="us-east-1", config=Timeouts(0.25, 1.5, 2, 9).config()
    )
    assert client.meta.config.connect_timeout == 0.25
    assert client.meta.config.read_timeout == 1.5
    assert client.meta.config.max_pool_connections == 9
    assert client.meta.config.retries["mode"] == "standard"
    assert client.meta.config.retries["total_max_attempts"] == 2  # the first call included


class FailingRaw:
    """The raw body botocore's AWSResponse reads: an InternalFailure JSON error."""

    def __init__(self) -> None:
        self.body = b'{"__type": "InternalFailure", "message": "boom"}'

    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        yield self.body


@pytest.mark.parametrize("max_attempts", [1, 2, 3])
def test_max_attempts_is_the_total_number_of_attempts(monkeypatch: pytest.MonkeyPatch, max_attempts: int) -> None:
    client, sent = failing_client(monkeypatch, delay=0, max_attempts=max_attempts)
    with pytest.raises(UpstreamError) as info:
        recommender_on(client).recommend("u1", 5)
    assert info.value.code == "upstream_error"
    assert len(sent) == max_attempts


def test_client_is_built_once_not_at_construction(runtime: tuple[Any, WireStub]) -> None:
    client, stubber = runtime
    built: list[Any] = []

    def factory() -> Any:
        built.append(client)
        return client

    recommender = PersonalizeRecommender(CAMPAIGN_ARN, factory, credentials=lambda: TEST_CREDENTIALS)
    assert built == []  # not at construction (create_app runs before gunicorn forks)
    recommender.check_ready()  # warm_up builds it in the worker, before the first request
    assert built == [client]
    for user in ("u1", "u2", "u3"):
        stubber.add_response("get_recommendations", {"itemList": [{"itemId": user}]},
                             expected_params={"campaignArn": CAMPAIGN_ARN, "userId": user, "numResults": 1})
        assert recommender.recommend(user, 1).item_ids == [user]
    assert len(built) == 1


def test_recommender_identifies_itself_by_arn() -> None:
    factory: Callable[[], Any] = lambda: None  # noqa: E731
    recommender = PersonalizeRecommender(RECOMMENDER_ARN, factory)
    assert (recommender.name, recommender.key) == ("personalize", RECOMMENDER_ARN)


# --- retries within the caller's deadline, and when a call may run without a watchdog ----------------


def failing_client(monkeypatch: pytest.MonkeyPatch, delay: float, connect: float = 0.2, read: float = 0.5,
                   max_attempts: int = 3) -> tuple[Any, list[str]]:
    """A personalize-runtime client from AwsClients (production's wiring) whose every attempt is answered 500 at once; botocore's back-off
    before a retry is `delay` seconds (and botocore really sleeps it before a retry it makes)."""
    from botocore.awsrequest import AWSResponse
    from botocore.retries import standard

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, context: delay)
    client = AwsClients("us-east-1", Timeouts(connect, read, max_attempts, 2)).personalize_runtime()
    sent: list[str] = []

    def answer_500(request: Any, **kwargs: Any) -> AWSResponse:
        sent.append(request.url)
        return AWSResponse(request.url, 500, {"Content-Type": "application/x-amz-json-1.1"}, FailingRaw())

    client.meta.events.register("before-send.personalize-runtime.GetRecommendations", answer_500)
    return client, sent


def call_with_deadline(client: Any, seconds: float | None) -> None:
    token = CALL_DEADLINE.set(None if seconds is None else time.monotonic() + seconds)
    try:
        with pytest.raises(UpstreamError):
            recommender_on(client).recommend("u1", 5)
    finally:
        CALL_DEADLINE.reset(token)


def test_without_a_deadline_botocore_makes_every_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    client, sent = failing_client(monkeypatch, delay=0.01)
    call_with_deadline(client, None)
    assert len(sent) == 3


def test_retries_are_made_while_the_back_off_and_an_attempt_end_before_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, sent = failing_client(monkeypatch, delay=0.05)  # 0.05 + 0.2 + 0.5 = 0.75 s per retry
    call_with_deadline(client, 5)
    assert len(sent) == 3


def test_no_retry_when_one_more_attempt_could_not_end_before_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    client, sent = failing_client(monkeypatch, delay=0)
    call_with_deadline(client, 0.6)  # an attempt may take 0.2 + 0.5 s
    assert len(sent) == 1


def test_no_retry_when_the_back_off_would_push_the_attempt_past_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, sent = failing_client(monkeypatch, delay=0.5)  # a throttling back-off; 0.5 + 0.7 > 1.0
    call_with_deadline(client, 1.0)
    assert len(sent) == 1


def test_ends_within_needs_the_connect_and_read_timeouts_to_fit() -> None:
    client = AwsClients("us-east-1", Timeouts(0.2, 0.5, 2, 2)).personalize_runtime()
    recommender = PersonalizeRecommender(CAMPAIGN_ARN, lambda: client)
    assert recommender.ends_within(0.71)
    assert recommender.ends_within(0.7)
    assert not recommender.ends_within(0.69)


def refreshable(expires_in: float) -> Any:
    from botocore.credentials import RefreshableCredentials

    expiry = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=expires_in)).isoformat()
    return RefreshableCredentials.create_from_metadata(
        {"access_key": "a", "secret_key": "s", "token": "t", "expiry_time": expiry},
        refresh_using=lambda: pytest.fail("ends_within must not refresh the credentials itself"),
        method="sts-assume-role",
    )


@pytest.mark.parametrize(("credentials", "inline"), [
    (None, True),  # none found: the call fails at once with upstream_credentials
    (Credentials("a", "s"), True),  # static keys never refresh
    ("hour", True),  # an hour left: no refresh is due
    ("ten-minutes", False),  # within botocore's 15-minute advisory window: the next call may call STS
    ("deferred", False),  # an assumed role not assumed yet: the first call calls STS
])
def test_ends_within_is_false_while_a_credential_refresh_is_due(credentials: Any, inline: bool) -> None:
    from botocore.credentials import DeferredRefreshableCredentials

    made = {
        "hour": lambda: refreshable(3600),
        "ten-minutes": lambda: refreshable(600),
        "deferred": lambda: DeferredRefreshableCredentials(refresh_using=lambda: {}, method="assume-role"),
    }
    if isinstance(credentials, str):
        credentials = made[credentials]()
    client = AwsClients("us-east-1", Timeouts(0.2, 0.5, 2, 2)).personalize_runtime()
    recommender = PersonalizeRecommender(CAMPAIGN_ARN, lambda: client, credentials=lambda: credentials)
    assert recommender.ends_within(0.79) is inline


def test_ends_within_is_false_when_the_client_cannot_be_built() -> None:
    def broken() -> Any:
        raise RuntimeError("no region")

    assert PersonalizeRecommender(CAMPAIGN_ARN, broken).ends_within(5) is False

