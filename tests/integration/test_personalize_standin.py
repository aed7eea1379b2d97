"""Real boto3, through app.sources.personalize.PersonalizeRecommender, against the Personalize Runtime stand-in.

The stand-in speaks the rest-json wire protocol, so these tests cover botocore's serialisation of the request,
its parsing of answers and AWS-shaped errors, its timeouts and retries, and the project's mapping of each.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any
from urllib.error import HTTPError

import pytest

from app.aws import AwsClients, Timeouts
from app.errors import InvalidParameterError, UpstreamError
from app.sources.guard import GuardedRecommender
from app.sources.personalize import PersonalizeRecommender
from tests.conftest import ROOT, SAMPLE_CATALOG
from tests.standin.personalize import Control, StandinHandle, items_from, start_standin

CAMPAIGN = "arn:aws:personalize:us-east-1:123456789012:campaign/x"
RECOMMENDER = "arn:aws:personalize:us-east-1:123456789012:recommender/x"
UNKNOWN = "arn:aws:personalize:us-east-1:123456789012:campaign/nobody-made-this"
CATALOG_IDS = items_from(str(SAMPLE_CATALOG))


@pytest.fixture(scope="module")
def standin() -> Iterator[StandinHandle]:
    handle = start_standin(CATALOG_IDS, arns=[CAMPAIGN, RECOMMENDER])
    yield handle
    handle.stop()


@pytest.fixture(autouse=True)
def aws_env(standin: StandinHandle, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> StandinHandle:
    """Point boto3 at the stand-in with dummy credentials, ignoring whatever AWS set-up the machine has."""
    standin.reset()
    for name in ("AWS_PROFILE", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_PERSONALIZE_RUNTIME", standin.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    yield standin
    standin.reset()  # wakes a request still hanging


@pytest.fixture
def make_recommender() -> Iterator[Callable[..., PersonalizeRecommender]]:
    """Build PersonalizeRecommenders on a real boto3 client (closed after the test)."""
    clients: list[Any] = []

    def build(arn: str = CAMPAIGN, read_timeout: float = 2.0, max_attempts: int = 1,
              connect_timeout: float = 1.0) -> PersonalizeRecommender:
        # Production's wiring: AwsClients also keeps botocore's retries within the caller's deadline.
        aws = AwsClients("us-east-1", Timeouts(connect_timeout, read_timeout, max_attempts, 4))

        def factory() -> Any:
            client = aws.personalize_runtime()
            clients.append(client)
            return client

        return PersonalizeRecommender(arn, factory, credentials=aws.credentials)

    yield build
    for client in clients:
        client.close()


def test_boto3_uses_the_standin_endpoint(make_recommender: Callable[..., PersonalizeRecommender],
                                         standin: StandinHandle) -> None:
    recommender = make_recommender()
    assert recommender.runtime.template.url == standin.url + "/recommendations"


def test_recommend_returns_the_standin_items_in_order(make_recommender: Callable[..., PersonalizeRecommender],
                                                      standin: StandinHandle) -> None:
    answer = make_recommender().recommend("u1", 7)

    assert answer.item_ids == standin.ranked("u1", 7)
    assert len(answer.item_ids) == 7 and set(answer.item_ids) <= set(CATALOG_IDS)
    assert answer.recommendation_id and answer.recommendation_id.startswith("RID-")
    assert standin.calls()["requests"] == [{"campaignArn": CAMPAIGN, "userId": "u1", "numResults": 7}]


def test_recommend_returns_the_standin_recommendation_id(make_recommender: Callable[..., PersonalizeRecommender],
                                                         standin: StandinHandle) -> None:
    standin.set_answer("fixed", ["1037", "1000", "1111"], recommendation_id="RID-fixed-42")

    answer = make_recommender().recommend("fixed", 2)

    assert answer.item_ids == ["1037", "1000"]
    assert answer.recommendation_id == "RID-fixed-42"


def test_users_get_different_deterministic_lists(make_recommender: Callable[..., PersonalizeRecommender]) -> None:
    recommender = make_recommender()
    first, second = recommender.recommend("alice", 10), recommender.recommend("bob", 10)

    assert first.item_ids != second.item_ids
    assert recommender.recommend("alice", 10).item_ids == first.item_ids
    assert first.recommendation_id != second.recommendation_id


@pytest.mark.parametrize(
    ("arn", "field", "other"),
    [(RECOMMENDER, "recommenderArn", "campaignArn"), (CAMPAIGN, "campaignArn", "recommenderArn")],
)
def test_the_arn_goes_in_the_field_for_its_kind(make_recommender: Callable[..., PersonalizeRecommender],
                                                standin: StandinHandle, arn: str, field: str, other: str) -> None:
    make_recommender(arn).recommend("u1", 3)

    body = standin.calls()["requests"][-1]
    assert body == {field: arn, "userId": "u1", "numResults": 3}
    assert other not in body


def test_an_arn_personalize_does_not_know_is_recommender_not_found(
    make_recommender: Callable[..., PersonalizeRecommender],
) -> None:
    with pytest.raises(UpstreamError) as caught:
        make_recommender(UNKNOWN).recommend("u1", 3)

    assert caught.value.code == "recommender_not_found"
    assert caught.value.status == 502
    assert UNKNOWN in caught.value.message


def test_input_personalize_rejects_is_a_400(make_recommender: Callable[..., PersonalizeRecommender]) -> None:
    with pytest.raises(InvalidParameterError) as caught:
        make_recommender().recommend("", 3)  # the stand-in, like Personalize, requires a userId

    assert caught.value.code == "rejected_by_personalize"
    assert caught.value.status == 400
    assert "userId" in caught.value.message


@pytest.mark.parametrize(
    ("fault", "code", "status"),
    [
        ({"mode": "throttle"}, "upstream_throttled", 503),
        ({"mode": "not_found"}, "recommender_not_found", 502),
        ({"mode": "error500"}, "upstream_error", 502),
        ({"mode": "error500", "status": 503}, "upstream_error", 502),
    ],
    ids=["throttle", "not_found", "error500", "error503"],
)
def test_fault_modes_map_to_the_project_errors(make_recommender: Callable[..., PersonalizeRecommender],
                                               standin: StandinHandle, fault: dict[str, Any], code: str,
                                               status: int) -> None:
    standin.set_fault(**fault)

    with pytest.raises(UpstreamError) as caught:
        make_recommender().recommend("u1", 3)

    assert (caught.value.code, caught.value.status) == (code, status)
    assert standin.calls()["total"] == 1  # max_attempts=1: no retry hid the error
    if fault["mode"] == "throttle":
        assert caught.value.retry_after == 1


@pytest.mark.parametrize("mode", ["latency", "hang"])
def test_an_answer_slower_than_the_timeouts_is_upstream_timeout(
    make_recommender: Callable[..., PersonalizeRecommender], standin: StandinHandle, mode: str
) -> None:
    """An attempt ends at its connect + read timeouts (attempt_seconds, which the deadline checks count on), on a
    kept connection as on a new one, well before the stand-in would answer."""
    recommender = make_recommender(read_timeout=0.3, connect_timeout=0.2)
    recommender.recommend("u0", 3)  # opens the connection
    for user in ("u1", "u2"):
        standin.set_fault(mode, latency_ms=1500)
        started = time.monotonic()

        with pytest.raises(UpstreamError) as caught:
            recommender.recommend(user, 3)

        assert (caught.value.code, caught.value.status) == ("upstream_timeout", 504)
        assert 0.5 <= time.monotonic() - started < 1.0  # attempt_seconds, not the stand-in's 1.5 s
    assert recommender.runtime.attempt_seconds == pytest.approx(0.5)


def test_latency_within_the_read_timeout_still_answers(make_recommender: Callable[..., PersonalizeRecommender],
                                                       standin: StandinHandle) -> None:
    standin.set_fault("latency", latency_ms=200)
    started = time.monotonic()

    answer = make_recommender(read_timeout=2.0).recommend("u1", 3)

    assert answer.item_ids == standin.ranked("u1", 3)
    assert time.monotonic() - started >= 0.2


def test_botocore_retries_a_500_once_with_two_attempts(make_recommender: Callable[..., PersonalizeRecommender],
                                                       standin: StandinHandle) -> None:
    standin.set_fault("error500", times=1)  # the first call fails, the retry succeeds

    answer = make_recommender(max_attempts=2).recommend("u1", 3)

    assert answer.item_ids == standin.ranked("u1", 3)
    assert standin.calls()["total"] == 2


@pytest.mark.parametrize("mode", ["hang", "error500"])
def test_in_the_request_thread_a_hang_or_failure_ends_within_the_budget_without_a_late_retry(
    make_recommender: Callable[..., PersonalizeRecommender], standin: StandinHandle, mode: str
) -> None:
    """Production's defaults: 0.2 + 0.5 s per attempt, 2 attempts, an 800 ms budget of which 790 ms are left.

    The attempt fits, so the guard calls in the caller's thread; after a hang (read timeout at 0.5 s) the
    retry would not fit and is not made. After a 500 at once it fits and is made.
    """
    standin.set_fault(mode, latency_ms=1500)
    inner = make_recommender(connect_timeout=0.2, read_timeout=0.5, max_attempts=2)
    guard = GuardedRecommender(inner, max_concurrency=4, failure_threshold=5, recovery_seconds=30)
    threads: list[str] = []
    inner.runtime.events.register("before-send.personalize-runtime",
                                      lambda **_: threads.append(threading.current_thread().name))
    started = time.monotonic()

    with pytest.raises(UpstreamError) as caught:
        guard.recommend("u1", 3, timeout=0.79)

    elapsed = time.monotonic() - started
    assert threads and set(threads) == {threading.current_thread().name}
    if mode == "hang":
        assert caught.value.code == "upstream_timeout"
        assert 0.5 <= elapsed < 0.79
        assert standin.calls()["total"] == 1
    else:
        assert caught.value.code == "upstream_error"
        assert standin.calls()["total"] == 2


@pytest.mark.parametrize("attempts", [1, 2])
def test_max_attempts_is_the_number_of_calls(make_recommender: Callable[..., PersonalizeRecommender],
                                             standin: StandinHandle, attempts: int) -> None:
    """PERSONALIZE_MAX_ATTEMPTS counts every call (botocore's total_max_attempts, not its retry count)."""
    standin.set_fault("error500")

    with pytest.raises(UpstreamError):
        make_recommender(max_attempts=attempts).recommend("u1", 3)

    assert standin.calls()["total"] == attempts


def test_reset_clears_the_fault_and_the_counts(make_recommender: Callable[..., PersonalizeRecommender],
                                               standin: StandinHandle) -> None:
    recommender = make_recommender()
    standin.set_fault("throttle")
    with pytest.raises(UpstreamError):
        recommender.recommend("u1", 3)
    standin.reset()

    assert standin.calls() == {"total": 0, "by_user": {}, "requests": []}
    assert recommender.recommend("u1", 3).item_ids == standin.ranked("u1", 3)


@pytest.mark.parametrize("user_id", ["Ana María", "vip+1@example.com", "🚀rocket-fan", "a b"])
def test_unicode_user_ids_reach_personalize_unchanged(make_recommender: Callable[..., PersonalizeRecommender],
                                                      standin: StandinHandle, user_id: str) -> None:
    answer = make_recommender().recommend(user_id, 4)

    calls = standin.calls()
    assert calls["requests"][-1]["userId"] == user_id
    assert calls["by_user"] == {user_id: 1}
    assert answer.item_ids == standin.ranked(user_id, 4)


# -- the stand-in's own wire format, as seen without boto3 ------------------------------------------------------


def _post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - a local URL
            return response.status, dict(response.headers), json.loads(response.read())
    except HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), json.loads(exc.read())


@pytest.mark.parametrize(
    ("body", "status", "error_type"),
    [
        ({"campaignArn": UNKNOWN, "userId": "u"}, 404, "ResourceNotFoundException"),
        ({"campaignArn": CAMPAIGN}, 400, "InvalidInputException"),
        ({"userId": "u"}, 400, "InvalidInputException"),
        ({"campaignArn": CAMPAIGN, "userId": "u", "numResults": 0}, 400, "InvalidInputException"),
    ],
    ids=["unknown-arn", "no-user", "no-arn", "zero-results"],
)
def test_errors_have_the_aws_wire_shape(standin: StandinHandle, body: dict[str, Any], status: int,
                                        error_type: str) -> None:
    got_status, headers, payload = _post(standin.url + "/recommendations", body)

    assert got_status == status
    assert headers["x-amzn-ErrorType"] == error_type
    assert payload["__type"] == error_type and payload["message"]
    assert headers["Content-Type"] == "application/json"


def test_numresults_defaults_to_25(standin: StandinHandle) -> None:
    status, _, payload = _post(standin.url + "/recommendations", {"recommenderArn": RECOMMENDER, "userId": "u"})

    assert status == 200
    assert [entry["itemId"] for entry in payload["itemList"]] == standin.ranked("u", 25)
    assert all(isinstance(entry["score"], float) for entry in payload["itemList"])


def test_runs_as_a_module_and_is_controlled_over_http() -> None:
    """`python -m tests.standin.personalize` prints its port first and answers the control API."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.standin.personalize", "--port", "0", "--items-from", "1000,1037,1074",
         "--arn", CAMPAIGN],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline().strip()
        assert first.startswith("LISTENING 127.0.0.1:"), first
        url = "http://" + first.split(" ", 1)[1]
        control = Control(url)

        status, _, payload = _post(url + "/recommendations", {"campaignArn": CAMPAIGN, "userId": "z", "numResults": 2})
        assert status == 200 and len(payload["itemList"]) == 2
        assert {e["itemId"] for e in payload["itemList"]} <= {"1000", "1037", "1074"}

        control.set_fault("throttle")
        status, headers, _ = _post(url + "/recommendations", {"campaignArn": CAMPAIGN, "userId": "z"})
        assert (status, headers["x-amzn-ErrorType"]) == (400, "ThrottlingException")

        calls = control.calls()
        assert calls["total"] == 2 and calls["by_user"] == {"z": 2}
        control.reset()
        assert control.calls()["total"] == 0
    finally:
        process.terminate()
        process.communicate(timeout=10)
    assert process.returncode == 0
