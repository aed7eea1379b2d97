"""GET /recommendations?recommender=ID: the configuration's ARN, count, attributes and transformer."""
from __future__ import annotations

import logging

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.exceptions import ReadTimeoutError
from botocore.response import StreamingBody
from botocore.stub import Stubber
from flask import Flask
from flask.testing import FlaskClient

from app.aws import AwsClients
from app.components import components
from app.errors import UnavailableError
from app.pinpoint.configs import SQLiteStore, StoreError, new_record
from app.pinpoint.serving import ConfiguredRecommenders, UnknownRecommenderError
from app.pinpoint.transformer import LambdaTransformer, TransformerError, pinpoint_event
from tests.wire_stub import WireStub
from tests.conftest import FakeAws, FakeRecommender, stubbed

CAMPAIGN = "arn:aws:personalize:us-east-1:123456789012:campaign/movies"
OTHER_CAMPAIGN = "arn:aws:personalize:us-east-1:123456789012:campaign/books"
ROLE = "arn:aws:iam::123456789012:role/PinpointRecommendations"
BASE = {"RecommendationProviderUri": CAMPAIGN, "RecommendationProviderRoleArn": ROLE, "RecommendationsPerMessage": 3}
TRANSFORMER = "arn:aws:lambda:us-east-1:123456789012:function:pinpoint-transformer"
# sample/catalog.csv
NAMES = {"1000": "Trail Running Shoes", "1037": "Merino Wool Socks"}


class CountingStore(SQLiteStore):
    """A SQLite store that counts reads, to show which requests touch it."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.gets = 0
        self.fail = False

    def get(self, config_id: str) -> dict[str, Any] | None:
        self.gets += 1
        if self.fail:
            raise StoreError("the disk is gone")
        return super().get(config_id)


def answer(*item_ids: str, rid: str = "rid-1") -> dict[str, Any]:
    return {"itemList": [{"itemId": i} for i in item_ids], "recommendationId": rid}


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    return CountingStore(str(tmp_path / "recommenders.sqlite3"))


@pytest.fixture
def lambda_stub(dummy_aws: None) -> Iterator[tuple[Any, Stubber]]:
    with stubbed("lambda") as pair:
        yield pair


@pytest.fixture
def clients_asked() -> list[tuple[str | None, str | None]]:
    return []


@pytest.fixture
def serving_app(make_app: Callable[..., Flask], fake_recommender: FakeRecommender, store: CountingStore,
                runtime: tuple[Any, WireStub], lambda_stub: tuple[Any, Stubber],
                clients_asked: list[tuple[str | None, str | None]]) -> Flask:
    client, _ = runtime

    def role_client(role_arn: str | None, region: str | None) -> Any:
        clients_asked.append((role_arn, region))
        return client

    return make_app({"recommender": fake_recommender, "recommender_store": store,
                     "aws": FakeAws(personalize=role_client, lambdas=lambda region: lambda_stub[0])},
                    catalog_extra_fields="category", serve_recommenders=True)


@pytest.fixture
def serving(serving_app: Flask) -> FlaskClient:
    return serving_app.test_client()


def configure(store: SQLiteStore, **fields: Any) -> str:
    record = new_record({**BASE, **fields})
    store.create(record)
    return record["Id"]


def test_the_configuration_s_arn_role_and_count_are_used(serving: FlaskClient, store: CountingStore,
                                                        runtime: tuple[Any, WireStub],
                                                        fake_recommender: FakeRecommender,
                                                        clients_asked: list[Any]) -> None:
    config_id = configure(store)
    runtime[1].add_response("get_recommendations", answer("1000", "1037", "1074"),
                            {"campaignArn": CAMPAIGN, "userId": "u9", "numResults": 3})
    response = serving.get(f"/recommendations?user_id=u9&recommender={config_id}")
    assert response.status_code == 200
    assert [item["id"] for item in response.get_json()] == ["1000", "1037", "1074"]
    assert response.headers["X-Recommendations-Source"] == "personalize"
    assert clients_asked == [(ROLE, "us-east-1")]
    assert fake_recommender.calls == []  # the environment's default source was not asked


def test_num_results_in_the_request_wins(serving: FlaskClient, store: CountingStore,
                                         runtime: tuple[Any, WireStub]) -> None:
    config_id = configure(store)
    runtime[1].add_response("get_recommendations", answer("1000"),
                            {"campaignArn": CAMPAIGN, "userId": "u9", "numResults": 1})
    response = serving.get(f"/recommendations?user_id=u9&recommender={config_id}&num_results=1")
    assert [item["id"] for item in response.get_json()] == ["1000"]


def test_an_unknown_recommender_is_a_404_in_the_service_s_shape(serving: FlaskClient) -> None:
    response = serving.get("/recommendations?user_id=u1&recommender=nope")
    assert response.status_code == 404
    error = response.get_json()["error"]
    assert (error["code"], error["status"]) == ("unknown_recommender", 404)
    assert "nope" in error["message"]


def test_answers_are_cached_per_provider_arn(serving: FlaskClient, store: CountingStore,
                                             runtime: tuple[Any, WireStub]) -> None:
    movies = configure(store)
    books = configure(store, RecommendationProviderUri=OTHER_CAMPAIGN)
    runtime[1].add_response("get_recommendations", answer("1000", "1037", "1074"),
                            {"campaignArn": CAMPAIGN, "userId": "u9", "numResults": 3})
    runtime[1].add_response("get_recommendations", answer("1111", "1000", "1037"),
                            {"campaignArn": OTHER_CAMPAIGN, "userId": "u9", "numResults": 3})
    first = serving.get(f"/recommendations?user_id=u9&recommender={movies}")
    second = serving.get(f"/recommendations?user_id=u9&recommender={books}")
    again = serving.get(f"/recommendations?user_id=u9&recommender={movies}")
    assert [i["id"] for i in second.get_json()] == ["1111", "1000", "1037"]
    assert (first.headers["X-Cache"], second.headers["X-Cache"], again.headers["X-Cache"]) == ("MISS", "MISS", "HIT")
    assert again.get_json() == first.get_json()


def test_requests_without_a_recommender_never_touch_the_store(serving: FlaskClient, store: CountingStore,
                                                             fake_recommender: FakeRecommender) -> None:
    for _ in range(3):
        assert serving.get("/recommendations?user_id=u1").status_code == 200
    assert store.gets == 0
    assert len(fake_recommender.calls) == 1


def test_a_configuration_is_read_once_per_refresh_interval(serving: FlaskClient, store: CountingStore,
                                                           runtime: tuple[Any, WireStub]) -> None:
    config_id = configure(store)
    runtime[1].add_response("get_recommendations", answer("1000"),
                            {"campaignArn": CAMPAIGN, "userId": "u9", "numResults": 3})
    for _ in range(5):
        assert serving.get(f"/recommendations?user_id=u9&recommender={config_id}").status_code == 200
    assert store.gets == 1


def test_refresh_reads_the_store_again_and_keeps_the_last_good_on_error(store: CountingStore,
                                                                        serving_app: Flask) -> None:
    now = [0.0]
    app_s = components(serving_app).configured
    background: list[Callable[[], None]] = []
    configured = ConfiguredRecommenders(store, app_s.base, app_s.presenter, lambda config: app_s.base.recommender,
                                        app_s.transformer, refresh_seconds=30, clock=lambda: now[0],
                                        in_background=background.append)
    config_id = configure(store)
    assert configured.config(config_id).per_message == 3
    store.replace({**store.get(config_id), "RecommendationsPerMessage": 5})  # type: ignore[dict-item]
    store.gets = 0
    now[0] = 29.9
    assert configured.config(config_id).per_message == 3 and store.gets == 0 and background == []
    now[0] = 30.0
    assert configured.config(config_id).per_message == 3  # due: served from memory, re-read in the background
    assert configured.config(config_id).per_message == 3 and len(background) == 1  # one re-read at a time
    background.pop()()
    assert store.gets == 1 and configured.config(config_id).per_message == 5
    store.fail, now[0] = True, 61.0
    assert configured.config(config_id).per_message == 5
    background.pop()()  # the store is down: the re-read fails and the last good one stays
    assert configured.config(config_id).per_message == 5
    with pytest.raises(UnavailableError, match="cannot be read"):
        configured.config("never-seen")  # nothing to fall back on: 503
    store.fail, now[0] = False, 100.0
    store.delete(config_id)  # by another worker or host
    assert configured.config(config_id).per_message == 5
    background.pop()()
    with pytest.raises(UnknownRecommenderError):
        configured.config(config_id)


def test_one_guarded_recommender_per_arn_and_role(serving_app: Flask, store: CountingStore) -> None:
    configured = components(serving_app).configured
    a = configured.config(configure(store))
    b = configured.config(configure(store, Name="same-arn-and-role"))
    c = configured.config(configure(store, RecommendationProviderRoleArn=ROLE + "2"))
    assert configured.source_for(a) is configured.source_for(b)
    assert configured.source_for(a) is not configured.source_for(c)
    guarded = configured.source_for(a)
    assert type(guarded).__name__ == "GuardedRecommender" and guarded.key == CAMPAIGN
    assert configured.base is components(serving_app).service  # the same caches and fallbacks


def test_a_failing_provider_goes_to_the_fallback(serving: FlaskClient, store: CountingStore,
                                                 runtime: tuple[Any, WireStub]) -> None:
    config_id = configure(store)
    runtime[1].add_client_error("get_recommendations", "ThrottlingException", http_status_code=400)
    response = serving.get(f"/recommendations?user_id=u9&recommender={config_id}")
    assert response.status_code == 200
    assert response.headers["X-Fallback-Reason"] == "upstream_throttled"
    assert len(response.get_json()) == 3


def test_a_deleted_configuration_is_unknown_at_once_in_this_process(make_app: Callable[..., Flask],
                                                                   fake_recommender: FakeRecommender,
                                                                   tmp_path: Path) -> None:
    key = "admin-key-0123456789abcdef"
    app = make_app({"recommender": fake_recommender}, admin_api_keys=key,
                   recommender_db_path=str(tmp_path / "r.sqlite3"))
    client = app.test_client()
    config_id = "0" * 32
    assert client.get(f"/recommendations?user_id=u1&recommender={config_id}").status_code == 404
    record = client.post("/v1/recommenders", json={**BASE, "RecommendationsDisplayName": "Picks"},
                         headers={"X-API-Key": key}).get_json()
    components(app).configured.config(record["Id"])
    client.delete(f"/v1/recommenders/{record['Id']}", headers={"X-API-Key": key})
    assert client.get(f"/recommendations?user_id=u1&recommender={record['Id']}").status_code == 404


def test_format_attributes_from_the_catalog(serving: FlaskClient, store: CountingStore,
                                            runtime: tuple[Any, WireStub]) -> None:
    config_id = configure(store, Attributes={"Title": "Title", "Category": "Category", "Price": "Price"})
    runtime[1].add_response("get_recommendations", answer("1000", "1037"),
                            {"campaignArn": CAMPAIGN, "userId": "u9", "numResults": 2})
    response = serving.get(f"/recommendations?user_id=u9&recommender={config_id}&format=attributes&num_results=2")
    assert response.status_code == 200
    assert response.get_json() == {"Title": [NAMES["1000"], NAMES["1037"]], "Category": ["footwear", "apparel"],
                                   "Price": ["89.99", "14.5"]}
    assert response.headers["Cache-Control"].startswith("private, max-age=")


def test_format_attributes_needs_a_recommender(serving: FlaskClient) -> None:
    response = serving.get("/recommendations?user_id=u1&format=attributes")
    assert response.status_code == 400
    assert "format" in response.get_json()["error"]["errors"]


def test_format_attributes_needs_attributes(serving: FlaskClient, store: CountingStore) -> None:
    response = serving.get(f"/recommendations?user_id=u1&format=attributes&recommender={configure(store)}")
    assert response.status_code == 400
    assert response.get_json()["error"]["errors"] == {
        "format": ["attributes needs a recommender configuration with Attributes."]}


def lambda_answer(payload: Any, function_error: str | None = None) -> dict[str, Any]:
    raw = orjson.dumps(payload)
    answer: dict[str, Any] = {"StatusCode": 200, "Payload": StreamingBody(io.BytesIO(raw), len(raw))}
    if function_error:
        answer["FunctionError"] = function_error
    return answer


def with_transformer(store: CountingStore, runtime: tuple[Any, WireStub]) -> str:
    runtime[1].add_response("get_recommendations", answer("1000", "1037", "1074"),
                            {"campaignArn": CAMPAIGN, "userId": "u9", "numResults": 3})
    return configure(store, RecommendationTransformerUri=TRANSFORMER, Attributes={"Title": "Title", "Blurb": "Blurb"})


def test_the_transformer_lambda_gives_the_attributes(serving: FlaskClient, store: CountingStore,
                                                     runtime: tuple[Any, WireStub],
                                                     lambda_stub: tuple[Any, Stubber]) -> None:
    config_id = with_transformer(store, runtime)
    event = {"Endpoints": {"u9": {"User": {"UserId": "u9"}, "RecommendationItems": ["1000", "1037", "1074"]}}}
    returned = {"u9": {**event["Endpoints"]["u9"],
                       "Recommendations": {"Title": ["A", "B", "C"], "Blurb": "one string is allowed"}}}
    lambda_stub[1].add_response("invoke", lambda_answer(returned), {
        "FunctionName": TRANSFORMER, "InvocationType": "RequestResponse", "Payload": orjson.dumps(event)})
    response = serving.get(f"/recommendations?user_id=u9&recommender={config_id}&format=attributes")
    assert response.status_code == 200
    assert response.get_json() == {"Title": ["A", "B", "C"], "Blurb": ["one string is allowed"]}
    assert "X-Fallback-Reason" not in response.headers


def test_a_transformer_answering_in_an_endpoints_wrapper_is_read_too(serving: FlaskClient, store: CountingStore,
                                                                    runtime: tuple[Any, WireStub],
                                                                    lambda_stub: tuple[Any, Stubber]) -> None:
    config_id = with_transformer(store, runtime)
    returned = {"Endpoints": {"u9": {"Recommendations": {"Title": ["A"], "Blurb": ["b"]}}}}
    lambda_stub[1].add_response("invoke", lambda_answer(returned))
    response = serving.get(f"/recommendations?user_id=u9&recommender={config_id}&format=attributes")
    assert response.get_json() == {"Title": ["A"], "Blurb": ["b"]}


@pytest.mark.parametrize(("payload", "function_error", "reason"), [
    ({"errorMessage": "boom", "errorType": "KeyError"}, "Unhandled", "transformer_failed"),
    ({"u9": {"Recommendations": {"Title": ["A"]}}}, None, "transformer_failed"),  # Blurb missing
    ({"u9": {"Recommendations": {"Title": [1], "Blurb": ["b"]}}}, None, "transformer_failed"),
    ({"someone-else": {}}, None, "transformer_failed"),
])
def test_a_failing_transformer_falls_back_to_the_catalog(serving: FlaskClient, store: CountingStore,
                                                         runtime: tuple[Any, WireStub],
                                                         lambda_stub: tuple[Any, Stubber],
                                                         payload: Any, function_error: str | None,
                                                         reason: str) -> None:
    config_id = with_transformer(store, runtime)
    lambda_stub[1].add_response("invoke", lambda_answer(payload, function_error))
    response = serving.get(f"/recommendations?user_id=u9&recommender={config_id}&format=attributes")
    assert response.status_code == 200
    assert response.get_json()["Title"] == [NAMES["1000"], NAMES["1037"], "Waterproof Hiking Jacket"]
    assert response.get_json()["Blurb"] == ["", "", ""]  # the catalog has no such column
    assert response.headers["X-Fallback-Reason"] == reason
    assert response.headers["Cache-Control"] == "no-store"


def test_a_lambda_service_error_falls_back_too(serving: FlaskClient, store: CountingStore,
                                              runtime: tuple[Any, WireStub],
                                              lambda_stub: tuple[Any, Stubber]) -> None:
    config_id = with_transformer(store, runtime)
    lambda_stub[1].add_client_error("invoke", "ResourceNotFoundException", http_status_code=404)
    response = serving.get(f"/recommendations?user_id=u9&recommender={config_id}&format=attributes")
    assert response.status_code == 200
    assert response.headers["X-Fallback-Reason"] == "transformer_failed"


class SlowLambda:
    """A Lambda client whose every call times out."""

    def invoke(self, **_: Any) -> Any:
        raise ReadTimeoutError(endpoint_url="https://lambda.us-east-1.amazonaws.com")


def slow_lambdas(regions: list[str | None]) -> Callable[[str | None], SlowLambda]:
    """Return a Lambda client factory that records the region asked for."""

    def factory(region: str | None) -> SlowLambda:
        regions.append(region)
        return SlowLambda()

    return factory


def test_a_slow_transformer_is_a_timeout() -> None:
    with pytest.raises(TransformerError) as info:
        LambdaTransformer(lambda region: SlowLambda()).transform(TRANSFORMER, "u9", ["1000"], ["Title"])
    assert (info.value.code, info.value.status) == ("transformer_timeout", 504)


def test_the_transformer_client_is_for_the_function_s_region() -> None:
    regions: list[str | None] = []
    for function in ("arn:aws:lambda:eu-west-1:123456789012:function:t", "t"):
        with pytest.raises(TransformerError):
            LambdaTransformer(slow_lambdas(regions)).transform(function, "u9", [], ["Title"])
    assert regions == ["eu-west-1", None]


def test_the_event_is_pinpoint_shaped() -> None:
    assert pinpoint_event("u9", ["1", "2"]) == {
        "Endpoints": {"u9": {"User": {"UserId": "u9"}, "RecommendationItems": ["1", "2"]}}}


def test_unknown_ids_are_remembered_for_the_interval_and_bounded(serving: FlaskClient, serving_app: Flask,
                                                                 store: CountingStore) -> None:
    for _ in range(3):
        assert serving.get("/recommendations?user_id=u1&recommender=nope").status_code == 404
    assert store.gets == 1
    configured = components(serving_app).configured
    for i in range(configured._unknown.maxsize + 5):
        with pytest.raises(Exception, match="no recommender configuration"):
            configured.config(f"random-{i}")
    assert len(configured._unknown) == configured._unknown.maxsize


def test_an_id_created_here_after_a_miss_is_known_at_once(make_app: Callable[..., Flask],
                                                          fake_recommender: FakeRecommender, tmp_path: Path) -> None:
    key = "admin-key-0123456789abcdef"
    app = make_app({"recommender": fake_recommender}, admin_api_keys=key,
                   recommender_db_path=str(tmp_path / "r.sqlite3"))
    configured = components(app).configured
    record = new_record(BASE)
    with pytest.raises(Exception, match="no recommender configuration"):
        configured.config(record["Id"])
    components(app).store.create(record)
    with pytest.raises(Exception, match="no recommender configuration"):
        configured.config(record["Id"])  # written behind this worker's back: seen after the interval
    configured.forget(record["Id"])  # what the admin API does after each write
    assert configured.config(record["Id"]).provider_arn == CAMPAIGN


class RecordingSession:
    """A boto3 session whose clients are SlowLambdas, recording the region each was made for."""

    def __init__(self, regions: list[str | None]) -> None:
        self.regions = regions

    def client(self, service: str, region_name: str | None = None, config: Any = None) -> SlowLambda:
        self.regions.append(region_name)
        return SlowLambda()


def test_a_bare_function_name_is_called_in_aws_region(make_app: Callable[..., Flask],
                                                      fake_recommender: FakeRecommender) -> None:
    regions: list[str | None] = []
    aws = AwsClients("eu-west-1", session_factory=lambda: RecordingSession(regions))  # AWS_REGION's, as create_app
    app = make_app({"recommender": fake_recommender, "aws": aws}, aws_region="eu-west-1")
    transformer = components(app).configured.transformer
    for function in ("pinpoint-transformer", "arn:aws:lambda:us-west-2:123456789012:function:t"):
        with pytest.raises(TransformerError):
            transformer.transform(function, "u9", [], ["Title"])
    assert regions == ["eu-west-1", "us-west-2"]


def test_a_crashing_transformer_client_still_falls_back(make_app: Callable[..., Flask],
                                                        fake_recommender: FakeRecommender,
                                                        store: CountingStore, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    fake_recommender.answers["u1"] = ["1000", "1037", "1074"]
    app = make_app({"recommender": fake_recommender, "recommender_store": store,
                    "aws": FakeAws(personalize=lambda role, region: None,  # never reached: see below
                                   lambdas=lambda region: None)},  # .invoke on None: AttributeError
                   serve_recommenders=True)
    config_id = configure(store, RecommendationTransformerUri="t", Attributes={"Title": "Title"})
    configured = components(app).configured
    monkeypatch.setattr(configured, "source_for", lambda config: components(app).service.recommender)  # the fake
    with caplog.at_level(logging.ERROR, logger="app.pinpoint.serving"):
        responses = [app.test_client().get(f"/recommendations?user_id=u{n}&recommender={config_id}"
                                           "&format=attributes") for n in range(1, 4)]
    response = responses[0]
    assert response.status_code == 200
    assert response.get_json() == {"Title": [NAMES["1000"], NAMES["1037"], "Waterproof Hiking Jacket"]}
    assert [r.headers["X-Fallback-Reason"] for r in responses] == ["transformer_failed"] * 3
    crashes = [r for r in caplog.records if r.getMessage().startswith("transformer call crashed")]
    assert len(crashes) == 1 and crashes[0].exc_info is not None  # with its traceback, not once per request


def test_a_malformed_stored_configuration_is_a_503_not_a_crash(serving: FlaskClient, store: CountingStore) -> None:
    store._run("INSERT INTO recommenders (id, body) VALUES (?, ?)", ("broken", '{"Id": "broken"}'))
    response = serving.get("/recommendations?user_id=u1&recommender=broken")
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "recommender_store_unavailable"


def test_with_the_admin_api_off_configurations_are_off(make_app: Callable[..., Flask],
                                                       fake_recommender: FakeRecommender, store: CountingStore,
                                                       clients_asked: list[Any], tmp_path: Path) -> None:
    """Without ADMIN_API_KEYS (and SERVE_RECOMMENDERS), ?recommender= reads no store and assumes no role."""
    config_id = configure(store)  # a configuration someone left in the store

    def role_client(role_arn: str | None, region: str | None) -> Any:
        clients_asked.append((role_arn, region))
        raise AssertionError("no role may be assumed")

    app = make_app({"recommender": fake_recommender, "recommender_store": store,
                    "aws": FakeAws(personalize=role_client)})
    response = app.test_client().get(f"/recommendations?user_id=u1&recommender={config_id}")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "unknown_recommender"
    assert "off" in response.get_json()["error"]["message"]
    assert (store.gets, clients_asked, fake_recommender.calls) == (0, [], [])
    # The default store is not even created when configurations are off.
    make_app({"recommender": fake_recommender}).test_client().get(f"/recommendations?user_id=u1&recommender={config_id}")
    assert not list(tmp_path.glob("data/recommenders.sqlite3*"))


def test_serve_recommenders_turns_the_read_path_on(make_app: Callable[..., Flask], fake_recommender: FakeRecommender,
                                                   store: CountingStore) -> None:
    config_id = configure(store)
    app = make_app({"recommender": fake_recommender, "recommender_store": store,
                    "aws": FakeAws(personalize=lambda role, region: None)}, serve_recommenders="true")
    configured = components(app).configured
    assert configured.config(config_id).provider_arn == CAMPAIGN and store.gets == 1
    assert app.test_client().get("/v1/recommenders").status_code == 404  # the admin API itself stays off


def test_an_unusable_store_is_a_503_without_its_path(make_app: Callable[..., Flask],
                                                    fake_recommender: FakeRecommender, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    db_path = tmp_path / "state" / "recs.sqlite3"
    client = make_app({"recommender": fake_recommender}, serve_recommenders=True,
                      recommender_db_path=str(db_path)).test_client()
    db_path.unlink()
    db_path.mkdir()  # after the start's checks: SQLite cannot open a folder
    response = client.get("/recommendations?user_id=u1&recommender=abc")
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "recommender_store_unavailable"
    body = response.get_data(as_text=True)
    assert str(tmp_path) not in body and "sqlite3" not in body
    assert str(db_path) in caplog.text  # the operator finds it in the log


# --------------------------------------------------------------------------------------------------
# The transformer's attributes are cached with the answer they were made from (issue 16, item 5).


def lambda_attributes(title: str) -> dict[str, Any]:
    return lambda_answer({"u9": {"Recommendations": {"Title": [title, "B", "C"], "Blurb": ["b", "b", "b"]}}})


def test_a_repeated_attributes_request_within_the_ttl_does_not_invoke_the_lambda(
    serving: FlaskClient, cache_dir: str, store: CountingStore, runtime: tuple[Any, WireStub],
    lambda_stub: tuple[Any, Stubber],
) -> None:
    config_id = with_transformer(store, runtime)  # Personalize answers once; the second request is a HIT
    lambda_stub[1].add_response("invoke", lambda_attributes("A"))  # and the Lambda once: a second call is unstubbed
    url = f"/recommendations?user_id=u9&recommender={config_id}&format=attributes"
    first, second = serving.get(url), serving.get(url)
    expected = {"Title": ["A", "B", "C"], "Blurb": ["b", "b", "b"]}
    assert first.get_json() == second.get_json() == expected
    assert "X-Fallback-Reason" not in second.headers
    assert second.headers["X-Cache"] == "HIT"
    lambda_stub[1].assert_no_pending_responses()
    runtime[1].assert_no_pending_responses()
    # Kept as data (JSON) in the answer cache's folder, next to the Personalize answer, never as a pickle.
    stored = [f.read_bytes()[4:] for f in Path(cache_dir).iterdir()]  # after FileSystemCache's expiry header
    entries = [orjson.loads(data) for data in stored if data.startswith(b"{")]  # not the entry count
    assert sorted(sorted(e) for e in entries) == [["at", "attributes", "made_from"], ["at", "items", "rid"]]
    assert [e["attributes"] for e in entries if "attributes" in e] == [expected]


def test_a_transformer_fallback_is_never_cached(serving: FlaskClient, store: CountingStore,
                                               runtime: tuple[Any, WireStub],
                                               lambda_stub: tuple[Any, Stubber]) -> None:
    config_id = with_transformer(store, runtime)
    lambda_stub[1].add_response("invoke", lambda_answer({"errorMessage": "boom"}, "Unhandled"))
    lambda_stub[1].add_response("invoke", lambda_attributes("A"))
    url = f"/recommendations?user_id=u9&recommender={config_id}&format=attributes"
    assert serving.get(url).headers["X-Fallback-Reason"] == "transformer_failed"
    again = serving.get(url)  # the Lambda answers again: asked again, not the catalog's fallback from the cache
    assert again.get_json()["Title"] == ["A", "B", "C"] and "X-Fallback-Reason" not in again.headers
    lambda_stub[1].assert_no_pending_responses()


def test_cached_attributes_serve_only_the_item_ids_they_were_made_from_within_the_ttl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cachelib import SimpleCache

    from app.caching import answers

    cache = answers.AnswerCache(SimpleCache(), ttl=60)
    attributes = {"Title": ["A", "B"]}
    cache.put_attributes("k", ["1000", "1037"], attributes)
    assert cache.get_attributes("k", ["1000", "1037"]) == attributes
    assert cache.get_attributes("k", ["1037", "1000"]) is None  # Personalize's answer changed: the Lambda is asked
    assert cache.get_attributes("other", ["1000", "1037"]) is None
    later = answers.time.time() + 61
    monkeypatch.setattr(answers.time, "time", lambda: later)
    assert cache.get_attributes("k", ["1000", "1037"]) is None  # the answer cache's TTL


@pytest.mark.parametrize("entry", [b"garbage", b'{"items": ["1"], "rid": null, "at": 1}', b"[]",
                                   b'{"made_from": ["1"], "attributes": {"Title": [1]}, "at": 1}',
                                   b'{"made_from": "1", "attributes": {}, "at": 1}'])
def test_a_cache_entry_that_is_not_attributes_is_a_miss(entry: bytes) -> None:
    from app.caching.answers import decode_attributes

    assert decode_attributes(entry) is None
