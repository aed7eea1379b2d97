"""/v1/recommenders: the seed's resource, its MessageBody errors, ADMIN_API_KEYS, and persistence."""
from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import botocore.parsers
import botocore.session
import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.pinpoint.admin import MAX_BODY_BYTES, message_body
from app.pinpoint.configs import BadTokenError, DynamoDBStore, encode_token
from app.settings import ConfigError

ADMIN_KEY = "admin-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"
AUTH = {"X-API-Key": ADMIN_KEY}
BODY = {"Name": "movies", "RecommendationProviderUri": "arn:aws:personalize:us-east-1:123456789012:campaign/movies",
        "RecommendationProviderRoleArn": "arn:aws:iam::123456789012:role/PinpointRecommendations",
        "RecommendationsPerMessage": 3, "RecommendationsDisplayName": "Top movies"}


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "state" / "recommenders.sqlite3")


@pytest.fixture
def admin_app(make_app: Callable[..., Flask], fake_recommender: Any, db_path: str) -> Flask:
    return make_app({"recommender": fake_recommender}, admin_api_keys=ADMIN_KEY, recommender_db_path=db_path)


@pytest.fixture
def admin(admin_app: Flask) -> FlaskClient:
    return admin_app.test_client()


def create(client: FlaskClient, **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/recommenders", json={**BODY, **fields}, headers=AUTH)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


# What Pinpoint's service model names each error: SDKs raise client.exceptions.<name> from X-Amzn-ErrorType.
MODELLED = {400: "BadRequestException", 403: "ForbiddenException", 404: "NotFoundException",
            405: "MethodNotAllowedException", 413: "PayloadTooLargeException", 500: "InternalServerErrorException"}


def assert_message_body(response: Any, status: int, *words: str) -> None:
    assert response.status_code == status
    body = response.get_json()
    assert set(body) == {"Message", "RequestID"}
    assert response.headers["X-Amzn-ErrorType"] == MODELLED[status]
    # One id per request: Pinpoint's RequestID is the X-Request-Id the request log line carries too.
    assert body["RequestID"] == response.headers["X-Amzn-RequestId"] == response.headers["X-Request-Id"]
    for word in words:
        assert word in body["Message"]


def test_post_answers_201_with_the_configuration(admin: FlaskClient) -> None:
    record = create(admin)
    assert {k: record[k] for k in BODY} == BODY
    assert len(record["Id"]) == 32
    for stamp in ("CreationDate", "LastModifiedDate"):
        assert datetime.fromisoformat(record[stamp]).tzinfo is not None
    assert record["RecommendationProviderIdType"] == "PINPOINT_ENDPOINT_ID"


def test_get_put_delete_one_configuration(admin: FlaskClient) -> None:
    record = create(admin)
    url = f"/v1/recommenders/{record['Id']}"
    assert admin.get(url, headers=AUTH).get_json() == record

    changed = admin.put(url, json={**BODY, "RecommendationsPerMessage": 5, "Name": "renamed"}, headers=AUTH)
    assert changed.status_code == 200
    updated = changed.get_json()
    assert (updated["Id"], updated["CreationDate"]) == (record["Id"], record["CreationDate"])
    assert updated["LastModifiedDate"] >= record["LastModifiedDate"]
    assert (updated["Name"], updated["RecommendationsPerMessage"]) == ("renamed", 5)
    assert admin.get(url, headers=AUTH).get_json() == updated

    deleted = admin.delete(url, headers=AUTH)
    assert deleted.status_code == 200 and deleted.get_json() == updated
    assert_message_body(admin.get(url, headers=AUTH), 404, record["Id"])
    assert_message_body(admin.delete(url, headers=AUTH), 404)
    assert_message_body(admin.put(url, json=BODY, headers=AUTH), 404)


def test_list_pages_through_more_than_one_page(admin: FlaskClient) -> None:
    created = [create(admin, Name=f"config-{i}")["Id"] for i in range(5)]
    seen, token, pages = [], None, 0
    while True:
        query = {"page-size": "2", **({"token": token} if token else {})}
        body = admin.get("/v1/recommenders", query_string=query, headers=AUTH).get_json()
        assert set(body) == {"Item", "NextToken"} and len(body["Item"]) <= 2
        seen += [item["Id"] for item in body["Item"]]
        pages += 1
        token = body["NextToken"]
        if token is None:
            break
    assert pages == 3
    assert seen == created


@pytest.mark.parametrize("query", [{"page-size": "0"}, {"page-size": "101"}, {"page-size": "two"},
                                   {"token": "garbage!"}])
def test_bad_paging_is_a_400(admin: FlaskClient, query: dict[str, str]) -> None:
    assert_message_body(admin.get("/v1/recommenders", query_string=query, headers=AUTH), 400)


@pytest.mark.parametrize("name", ["page-size", "token"])
def test_a_paging_parameter_given_twice_is_a_400(admin: FlaskClient, name: str) -> None:
    values = ["1", "2"] if name == "page-size" else ["", ""]  # each alone would be accepted
    response = admin.get("/v1/recommenders", query_string={name: values}, headers=AUTH)
    assert_message_body(response, 400, f"Give {name} once.")


def test_an_invalid_configuration_is_a_400_naming_the_field(admin: FlaskClient) -> None:
    response = admin.post("/v1/recommenders", json={**BODY, "RecommendationsPerMessage": 6}, headers=AUTH)
    assert_message_body(response, 400, "RecommendationsPerMessage")
    response = admin.post("/v1/recommenders", json={"Name": "x"}, headers=AUTH)
    assert_message_body(response, 400, "RecommendationProviderUri", "RecommendationProviderRoleArn")
    assert admin.get("/v1/recommenders", headers=AUTH).get_json()["Item"] == []


@pytest.mark.parametrize("data", ["not json", "[1, 2]", ""])
def test_a_body_that_is_not_an_object_is_a_400(admin: FlaskClient, data: str) -> None:
    response = admin.post("/v1/recommenders", data=data, content_type="application/json", headers=AUTH)
    assert_message_body(response, 400, "JSON object")


def test_a_huge_body_is_a_413(admin: FlaskClient) -> None:
    response = admin.post("/v1/recommenders", json={**BODY, "Description": "x" * 70_000}, headers=AUTH)
    assert_message_body(response, 413)


@pytest.mark.parametrize(("method", "path"), [("patch", "/v1/recommenders"), ("delete", "/v1/recommenders"),
                                              ("post", "/v1/recommenders/abc")])
def test_other_methods_are_a_405_in_the_same_shape(admin: FlaskClient, method: str, path: str) -> None:
    response = getattr(admin, method)(path, headers=AUTH)
    assert_message_body(response, 405)
    assert "GET" in response.headers["Allow"]


@pytest.mark.parametrize(("path", "allowed"), [("/v1/recommenders", ["GET", "POST", "OPTIONS"]),
                                               ("/v1/recommenders/abc", ["GET", "PUT", "DELETE", "OPTIONS"])])
def test_options_answers_without_a_key_and_advertises_only_what_answers(admin: FlaskClient, path: str,
                                                                        allowed: list[str]) -> None:
    response = admin.options(path)
    assert response.status_code == 200
    assert response.headers["Allow"].split(", ") == allowed
    for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - set(allowed):  # each of the others is a 405
        assert admin.open(path, method=method, headers=AUTH).status_code == 405


def test_attributes_without_a_transformer_are_a_400_naming_attributes(admin: FlaskClient) -> None:
    response = admin.post("/v1/recommenders", json={**BODY, "Attributes": {"Title": "Title"}}, headers=AUTH)
    assert_message_body(response, 400, "Attributes", "RecommendationTransformerUri")
    without_name = {k: v for k, v in BODY.items() if k != "RecommendationsDisplayName"}
    assert_message_body(admin.post("/v1/recommenders", json=without_name, headers=AUTH), 400,
                        "RecommendationsDisplayName")
    with_transformer = {**without_name, "RecommendationTransformerUri": "pinpoint-transformer",
                        "Attributes": {"Title": "Title"}}
    assert admin.post("/v1/recommenders", json=with_transformer, headers=AUTH).status_code == 201
    assert len(admin.get("/v1/recommenders", headers=AUTH).get_json()["Item"]) == 1


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": OTHER_KEY}, {"X-API-Key": ADMIN_KEY[:-1]}])
def test_a_missing_or_wrong_admin_key_is_a_403(admin: FlaskClient, headers: dict[str, str]) -> None:
    assert_message_body(admin.get("/v1/recommenders", headers=headers), 403, "ADMIN_API_KEYS")
    assert_message_body(admin.post("/v1/recommenders", json=BODY, headers=headers), 403)


def test_the_admin_key_works_as_the_basic_auth_password(admin: FlaskClient) -> None:
    credential = base64.b64encode(f"anyone:{ADMIN_KEY}".encode()).decode()
    assert admin.get("/v1/recommenders", headers={"Authorization": f"Basic {credential}"}).status_code == 200


def test_a_recommendations_key_does_not_open_the_admin_api(make_app: Callable[..., Flask], db_path: str) -> None:
    client = make_app(api_keys=OTHER_KEY, admin_api_keys=ADMIN_KEY, recommender_db_path=db_path).test_client()
    assert_message_body(client.get("/v1/recommenders", headers={"X-API-Key": OTHER_KEY}), 403)
    assert client.get("/v1/recommenders", headers=AUTH).status_code == 200


def test_without_admin_keys_the_api_is_off(make_app: Callable[..., Flask], db_path: str) -> None:
    client = make_app(recommender_db_path=db_path).test_client()
    for response in (client.get("/v1/recommenders"), client.post("/v1/recommenders", json=BODY, headers=AUTH),
                     client.get("/v1/recommenders/abc", headers=AUTH)):
        assert_message_body(response, 404, "off", "ADMIN_API_KEYS")


def test_the_read_path_never_needs_the_admin_key(admin: FlaskClient) -> None:
    assert admin.get("/recommendations?user_id=u1").status_code == 200


def test_configurations_survive_a_restart(make_app: Callable[..., Flask], fake_recommender: Any,
                                          admin: FlaskClient, db_path: str) -> None:
    record = create(admin)
    restarted = make_app({"recommender": fake_recommender}, admin_api_keys=ADMIN_KEY,
                         recommender_db_path=db_path).test_client()
    assert restarted.get(f"/v1/recommenders/{record['Id']}", headers=AUTH).get_json() == record
    assert [i["Id"] for i in restarted.get("/v1/recommenders", headers=AUTH).get_json()["Item"]] == [record["Id"]]


def test_admin_keys_follow_the_api_keys_rules(make_app: Callable[..., Flask]) -> None:
    with pytest.raises(ConfigError, match="ADMIN_API_KEYS: 1 key"):
        make_app(admin_api_keys="short")


@pytest.mark.parametrize(("settings", "words"), [
    ({"recommender_store": "postgres"}, "RECOMMENDER_STORE"),
    ({"recommender_store": "dynamodb"}, "RECOMMENDER_TABLE"),
    ({"recommender_refresh_seconds": "-1"}, "RECOMMENDER_REFRESH_SECONDS"),
    ({"transformer_timeout_ms": "5000"}, "TRANSFORMER_TIMEOUT_MS"),
])
def test_store_settings_are_checked_at_start(make_app: Callable[..., Flask], settings: dict[str, str],
                                             words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        make_app(**settings)


def pinpoint_error(response: Any) -> type[Exception]:
    """Parse an answer as boto3's pinpoint client does and return the exception class it would raise."""
    client = botocore.session.get_session().create_client(
        "pinpoint", region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="x" * 40)
    parsed = botocore.parsers.create_parser("rest-json").parse(
        {"status_code": response.status_code, "headers": {k.lower(): v for k, v in response.headers.items()},
         "body": response.get_data()},
        None)
    return client.exceptions.from_code(parsed["Error"]["Code"])


def test_sdks_raise_pinpoints_modelled_exception_for_each_error(admin: FlaskClient, admin_app: Flask) -> None:
    answers = {
        "BadRequestException": admin.post("/v1/recommenders", json={"Name": "x"}, headers=AUTH),
        "ForbiddenException": admin.get("/v1/recommenders"),
        "NotFoundException": admin.get("/v1/recommenders/nope", headers=AUTH),
        "MethodNotAllowedException": admin.patch("/v1/recommenders", headers=AUTH),
        "PayloadTooLargeException": admin.post("/v1/recommenders", json={**BODY, "Description": "x" * 70_000},
                                               headers=AUTH),
    }
    with admin_app.test_request_context():  # statuses no route answers today, so that a future one is named too
        answers |= {name: message_body(status, "m") for status, name in
                    [(409, "ConflictException"), (429, "TooManyRequestsException"),
                     (500, "InternalServerErrorException")]}
    assert {name: pinpoint_error(response).__name__ for name, response in answers.items()} == \
        {name: name for name in answers}


def test_a_failing_store_is_a_500_in_the_same_shape(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    db_path = tmp_path / "state" / "r.sqlite3"
    client = make_app(admin_api_keys=ADMIN_KEY, recommender_db_path=str(db_path)).test_client()
    db_path.unlink()
    db_path.mkdir()  # after the start's checks: SQLite cannot open a folder
    blocker = db_path
    response = client.get("/v1/recommenders", headers=AUTH)
    assert_message_body(response, 500, "store failed")
    assert str(blocker) not in response.get_json()["Message"]  # the path stays in the log


# --------------------------------------------------------------------------------------------------
# What an outside attack answered with a 500 and a traceback (issue 12, item 6): each is the client's mistake.


@pytest.fixture
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail the test if anything is logged at ERROR: a client's mistake is not the service's failure."""
    with caplog.at_level(logging.INFO):
        yield
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("depth", [990, 1025, 20_000])
def test_deeply_nested_json_is_a_400(admin: FlaskClient, no_errors_logged: None, depth: int) -> None:
    nested = '{"Attributes": ' + "[" * depth + "]" * depth + "}"
    response = admin.post("/v1/recommenders", data=nested, content_type="application/json", headers=AUTH)
    assert_message_body(response, 400)
    assert "Traceback" not in response.get_data(as_text=True)


@pytest.mark.parametrize("page_size", ["%C2%B2", "%D9%A3", "1_0", "%202", "+2", "-0", "2%20", "0x10", "1" * 5000])
def test_page_size_takes_ascii_digits_only(admin: FlaskClient, no_errors_logged: None, page_size: str) -> None:
    response = admin.get(f"/v1/recommenders?page-size={page_size}", headers=AUTH)
    assert_message_body(response, 400, "page-size")


def token(position: bytes) -> str:
    """Wrap JSON text as encode_token does (it cannot encode every number JSON can say)."""
    return base64.urlsafe_b64encode(position).decode()


@pytest.mark.parametrize("position", [b"9223372036854775808", b"18446744073709551616", b"1" * 5000, b"-1", b"true",
                                      b"false", b"1.5", b"1e3", b'"1"', b"null", b"[1]", b'{"seq": 1}', b"[" * 2000])
def test_a_token_sqlite_never_handed_out_is_a_400(admin: FlaskClient, no_errors_logged: None, position: bytes) -> None:
    create(admin)
    response = admin.get("/v1/recommenders", query_string={"token": token(position)}, headers=AUTH)
    assert_message_body(response, 400, "token")


def test_the_largest_sqlite_position_is_a_valid_token(admin: FlaskClient) -> None:
    response = admin.get("/v1/recommenders", query_string={"token": encode_token(2**63 - 1)}, headers=AUTH)
    assert response.status_code == 200 and response.get_json() == {"Item": [], "NextToken": None}


@pytest.mark.parametrize("position", ["", "x" * 2049, "\u00e9" * 1025, 1, True, None, ["a"]])
def test_a_token_dynamodb_never_handed_out_is_refused_before_asking(position: Any) -> None:
    def no_client() -> Any:
        raise AssertionError("DynamoDB was asked")

    with pytest.raises(BadTokenError):
        DynamoDBStore("recommenders", no_client).list(10, encode_token(position))


def test_a_query_string_that_is_not_utf8_is_a_400(admin: FlaskClient, no_errors_logged: None) -> None:
    response = admin.get("/v1/recommenders", headers=AUTH, environ_overrides={"QUERY_STRING": "page-size=\xff"})
    assert_message_body(response, 400, "UTF-8")


def chunked(admin: FlaskClient, body: bytes) -> Any:
    """POST body as a chunked request does under gunicorn: no Content-Length, a stream the server terminates."""
    return admin.post("/v1/recommenders", input_stream=io.BytesIO(body), content_type="application/json",
                      headers={**AUTH, "Transfer-Encoding": "chunked"},
                      environ_overrides={"wsgi.input_terminated": True})


def test_a_chunked_body_over_the_limit_is_a_413(admin: FlaskClient, no_errors_logged: None) -> None:
    body = orjson.dumps({**BODY, "Description": "x" * 10_000_000})
    response = chunked(admin, body)
    assert response.request.content_length is None  # what a chunked request has: nothing to check up front
    assert_message_body(response, 413, str(MAX_BODY_BYTES))
    assert admin.get("/v1/recommenders", headers=AUTH).get_json()["Item"] == []


def test_a_chunked_body_under_the_limit_is_read(admin: FlaskClient) -> None:
    response = chunked(admin, orjson.dumps(BODY))
    assert response.status_code == 201, response.get_json()


@pytest.mark.parametrize("chunks", [False, True])
def test_the_limit_is_exact(admin: FlaskClient, chunks: bool) -> None:
    def post(size: int) -> Any:
        padded = orjson.dumps(BODY)[:-1] + b" " * (size - len(orjson.dumps(BODY))) + b"}"
        assert len(padded) == size
        if chunks:
            return chunked(admin, padded)
        return admin.post("/v1/recommenders", data=padded, content_type="application/json", headers=AUTH)

    assert post(MAX_BODY_BYTES).status_code == 201
    assert_message_body(post(MAX_BODY_BYTES + 1), 413)


def test_allowed_cidrs_guard_the_admin_api(make_app: Callable[..., Flask], db_path: str) -> None:
    client = make_app(admin_api_keys=ADMIN_KEY, recommender_db_path=db_path,
                      allowed_cidrs="52.4.160.214/32").test_client()
    outside = client.get("/v1/recommenders", headers=AUTH, environ_base={"REMOTE_ADDR": "192.0.2.1"})
    assert_message_body(outside, 403, "ADMIN_ALLOWED_CIDRS")
    inside = client.get("/v1/recommenders", headers=AUTH, environ_base={"REMOTE_ADDR": "52.4.160.214"})
    assert inside.status_code == 200


def test_admin_allowed_cidrs_replace_allowed_cidrs_for_the_admin_api(make_app: Callable[..., Flask],
                                                                     db_path: str) -> None:
    client = make_app(admin_api_keys=ADMIN_KEY, recommender_db_path=db_path, allowed_cidrs="52.4.160.214/32",
                      admin_allowed_cidrs="192.0.2.0/24").test_client()
    office = {"REMOTE_ADDR": "192.0.2.1"}
    assert client.get("/v1/recommenders", headers=AUTH, environ_base=office).status_code == 200
    assert client.get("/recommendations?user_id=u1", environ_base=office).status_code == 403
    braze = {"REMOTE_ADDR": "52.4.160.214"}
    assert_message_body(client.get("/v1/recommenders", headers=AUTH, environ_base=braze), 403)
    with pytest.raises(ConfigError, match="ADMIN_ALLOWED_CIDRS"):
        make_app(admin_allowed_cidrs="office")
