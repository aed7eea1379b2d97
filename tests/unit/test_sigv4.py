"""AWS Signature Version 4 on /v1/recommenders: requests botocore signs get in, tampered or stale ones do not."""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.utils import percent_encode_sequence
from flask import Flask
from flask.testing import FlaskClient

from app.pinpoint.configs import encode_token
from app.settings import ConfigError, Settings
from tests.unit.test_admin_api import BODY, assert_message_body

KEY_ID = "AKIAEXAMPLEADMIN0001"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
OTHER_ID = "AKIAEXAMPLEADMIN0002"
OTHER_SECRET = "another-secret-access-key-0123456789"
ADMIN_KEY = "admin-key-0123456789abcdef"
REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-2"]


@pytest.fixture
def make_admin(make_app: Callable[..., Flask], fake_recommender: Any, tmp_path: Path) -> Callable[..., FlaskClient]:
    def build(**settings: Any) -> FlaskClient:
        config = {"admin_aws_keys": f"{KEY_ID}:{SECRET},{OTHER_ID}:{OTHER_SECRET}",
                  "recommender_db_path": str(tmp_path / "recommenders.sqlite3"), **settings}
        return make_app({"recommender": fake_recommender}, **config).test_client()

    return build


@pytest.fixture
def client(make_admin: Callable[..., FlaskClient]) -> FlaskClient:
    return make_admin()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[datetime], None]]:
    """Let a test choose the time botocore signs at (SigV4Auth.add_auth reads the clock itself)."""
    def set_clock(when: datetime) -> None:
        monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: when.replace(tzinfo=None))

    yield set_clock


def sign(method: str, path: str, query: dict[str, Any] | None = None, body: bytes = b"", *,
         region: str = "us-east-1", key_id: str = KEY_ID, secret: str = SECRET, service: str = "mobiletargeting",
         headers: dict[str, str] | None = None, token: str | None = None) -> dict[str, Any]:
    """Sign a request as boto3's pinpoint client does and return the Flask test client's arguments for it."""
    query_string = percent_encode_sequence(query or {})
    url = f"http://localhost{path}" + (f"?{query_string}" if query_string else "")
    request = AWSRequest(method=method, url=url, data=body,
                         headers={**({"Content-Type": "application/json"} if body else {}), **(headers or {})})
    SigV4Auth(Credentials(key_id, secret, token), service, region).add_auth(request)
    return {"method": method, "path": path, "query_string": query_string, "data": body,
            "headers": dict(request.headers.items())}


def send(client: FlaskClient, args: dict[str, Any]) -> Any:
    return client.open(args["path"], method=args["method"], query_string=args["query_string"], data=args["data"],
                       headers=args["headers"])


@pytest.mark.parametrize("region", REGIONS)
def test_requests_botocore_signs_get_in_for_any_region(client: FlaskClient, region: str) -> None:
    body = orjson.dumps(BODY)
    created = send(client, sign("POST", "/v1/recommenders", body=body, region=region))
    assert created.status_code == 201, created.get_json()
    record_id = created.get_json()["Id"]
    path = f"/v1/recommenders/{record_id}"
    assert send(client, sign("GET", path, region=region)).get_json() == created.get_json()
    changed = orjson.dumps({**BODY, "Name": "renamed"})
    assert send(client, sign("PUT", path, body=changed, region=region)).get_json()["Name"] == "renamed"
    listed = send(client, sign("GET", "/v1/recommenders", {"page-size": 1}, region=region))
    assert [item["Id"] for item in listed.get_json()["Item"]] == [record_id]
    assert send(client, sign("DELETE", path, region=region)).status_code == 200
    assert_message_body(send(client, sign("GET", path, region=region)), 404)  # signed, and then not found


def test_a_signed_query_with_a_paging_token_gets_in(client: FlaskClient) -> None:
    ids = [send(client, sign("POST", "/v1/recommenders", body=orjson.dumps({**BODY, "Name": f"n{i}"}))).get_json()["Id"]
           for i in range(3)]
    first = send(client, sign("GET", "/v1/recommenders", {"page-size": 2})).get_json()
    # A token holds characters percent-encoding changes (=, maybe - and _): signed as encoded, checked as sent.
    rest = send(client, sign("GET", "/v1/recommenders", {"page-size": 2, "token": first["NextToken"]})).get_json()
    assert [item["Id"] for item in first["Item"] + rest["Item"]] == ids
    padded = encode_token(7)
    assert padded.endswith("=")
    assert send(client, sign("GET", "/v1/recommenders", {"token": padded})).status_code == 200


def test_a_percent_encoded_path_is_checked_as_it_was_sent(client: FlaskClient) -> None:
    # boto3 sends RecommenderId="a b:c" as a%20b%3Ac and signs that, encoded once more; the server decodes it.
    response = send(client, sign("GET", "/v1/recommenders/a%20b%3Ac"))
    assert_message_body(response, 404, "'a b:c'")


def test_the_second_key_gets_in_too(client: FlaskClient) -> None:
    response = send(client, sign("GET", "/v1/recommenders", key_id=OTHER_ID, secret=OTHER_SECRET))
    assert response.status_code == 200


def tampered(args: dict[str, Any], **changes: Any) -> dict[str, Any]:
    headers = {**args["headers"], **changes.pop("headers", {})}
    return {**args, **changes, "headers": headers}


def replace_in_authorization(args: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    assert old in args["headers"]["Authorization"]
    return tampered(args, headers={"Authorization": args["headers"]["Authorization"].replace(old, new)})


BODY_BYTES = orjson.dumps(BODY)


def signed_get() -> dict[str, Any]:  # signed when the test runs: a signature is good for five minutes
    return sign("GET", "/v1/recommenders/abc", {"page-size": 2})


def signed_post() -> dict[str, Any]:
    return sign("POST", "/v1/recommenders", body=BODY_BYTES, headers={"X-Custom": "one"})


def later(timestamp: str, seconds: int) -> str:
    when = datetime.strptime(timestamp, "%Y%m%dT%H%M%SZ") + timedelta(seconds=seconds)
    return when.strftime("%Y%m%dT%H%M%SZ")


@pytest.mark.parametrize(("make", "words"), [
    (lambda: tampered(signed_get(), method="DELETE"), "does not match"),
    (lambda: tampered(signed_get(), path="/v1/recommenders/abd"), "does not match"),
    (lambda: tampered(signed_get(), query_string="page-size=3"), "does not match"),
    (lambda: tampered(signed_get(), query_string="page-size=2&token=x"), "does not match"),
    (lambda: tampered(signed_post(), data=BODY_BYTES.replace(b"movies", b"series")), "does not match"),
    (lambda: tampered(signed_post(), headers={"X-Custom": "two"}), "does not match"),
    (lambda: tampered(signed_post(), headers={"Content-Type": "application/json; charset=latin-1"}), "does not match"),
    (lambda: tampered(signed_get(), headers={"X-Amz-Date": later(signed_get()["headers"]["X-Amz-Date"], 1)}),
     "does not match"),
    (lambda: tampered(signed_get(), headers={"Host": "elsewhere.example"}), "does not match"),
    (lambda: sign("GET", "/v1/recommenders", secret=OTHER_SECRET), "does not match"),
    (lambda: replace_in_authorization(signed_get(), f"Credential={KEY_ID}/", f"Credential={OTHER_ID}/"),
     "does not match"),
    (lambda: replace_in_authorization(signed_get(), "/us-east-1/", "/eu-west-1/"), "does not match"),
    (lambda: replace_in_authorization(signed_get(), "Signature=", "Signature=0"), "does not match"),
    (lambda: replace_in_authorization(signed_get(), "Signature=", "Signature=\u00e9"), "does not match"),
    (lambda: tampered(signed_post(), headers={"X-Amz-Content-SHA256": "\u00e9"}), "SHA-256"),
    (lambda: sign("GET", "/v1/recommenders", key_id="AKIAUNKNOWN000000000"), "not one of ADMIN_AWS_KEYS"),
    (lambda: sign("GET", "/v1/recommenders", service="execute-api"), "mobiletargeting"),
    (lambda: sign("GET", "/v1/recommenders", token="session-token"), "Temporary credentials"),
    (lambda: replace_in_authorization(signed_get(), "SignedHeaders=host;x-amz-date", "SignedHeaders=host"),
     "must cover"),
    (lambda: replace_in_authorization(signed_get(), "Credential=", "Credentials="), "Authorization header"),
    (lambda: tampered(signed_get(), headers={"Authorization": "AWS4-HMAC-SHA256"}), "Authorization header"),
    (lambda: tampered(signed_get(), headers={"X-Amz-Date": "yesterday"}), "YYYYMMDDTHHMMSSZ"),
])
def test_a_tampered_or_foreign_signature_is_a_403(client: FlaskClient, make: Callable[[], dict[str, Any]],
                                                  words: str) -> None:
    assert_message_body(send(client, make()), 403, words)


def test_a_body_other_than_the_content_hash_is_a_403(client: FlaskClient) -> None:
    args = sign("POST", "/v1/recommenders", body=BODY_BYTES,
                headers={"X-Amz-Content-SHA256": hashlib.sha256(BODY_BYTES).hexdigest()})
    assert send(client, args).status_code == 201
    assert_message_body(send(client, tampered(args, data=BODY_BYTES + b" ")), 403, "SHA-256")


def test_a_strangers_body_is_not_read(client: FlaskClient) -> None:
    huge = orjson.dumps({**BODY, "Description": "x" * 100_000})  # over the 64 KiB a body may have: 413 if read
    assert_message_body(send(client, sign("POST", "/v1/recommenders", body=huge)), 413)
    assert_message_body(send(client, sign("POST", "/v1/recommenders", body=huge, key_id="AKIAUNKNOWN000000000")),
                        403, "not one of ADMIN_AWS_KEYS")


@pytest.mark.parametrize(("minutes", "status"), [(-6, 403), (-4, 201), (4, 201), (6, 403)])
def test_a_date_more_than_five_minutes_off_is_a_403(client: FlaskClient, clock: Callable[[datetime], None],
                                                    minutes: int, status: int) -> None:
    clock(datetime.now(UTC) + timedelta(minutes=minutes))
    response = send(client, sign("POST", "/v1/recommenders", body=BODY_BYTES))
    assert response.status_code == status
    if status == 403:
        assert_message_body(response, 403, "5 minutes")


def test_a_presigned_url_is_refused_with_a_sentence(client: FlaskClient) -> None:
    response = client.get("/v1/recommenders", query_string={
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256", "X-Amz-Credential": f"{KEY_ID}/20260101/us-east-1/mobiletargeting/"
        "aws4_request", "X-Amz-Date": "20260101T000000Z", "X-Amz-SignedHeaders": "host", "X-Amz-Signature": "00"})
    assert_message_body(response, 403, "Presigned URLs")


def test_admin_aws_keys_alone_turn_the_api_on(client: FlaskClient) -> None:
    assert_message_body(client.get("/v1/recommenders"), 403, "ADMIN_AWS_KEYS")  # on: not the 404 of "off"
    assert_message_body(client.get("/v1/recommenders", headers={"X-API-Key": ADMIN_KEY}), 403)
    assert send(client, sign("GET", "/v1/recommenders")).status_code == 200


def test_api_keys_keep_working_beside_aws_keys(make_admin: Callable[..., FlaskClient]) -> None:
    client = make_admin(admin_api_keys=ADMIN_KEY)
    assert client.get("/v1/recommenders", headers={"X-API-Key": ADMIN_KEY}).status_code == 200
    assert send(client, sign("GET", "/v1/recommenders")).status_code == 200
    assert_message_body(send(client, sign("GET", "/v1/recommenders", secret=OTHER_SECRET)), 403)


def test_a_signed_request_without_aws_keys_is_told_to_set_them(make_admin: Callable[..., FlaskClient]) -> None:
    client = make_admin(admin_api_keys=ADMIN_KEY, admin_aws_keys="")
    assert_message_body(send(client, sign("GET", "/v1/recommenders")), 403, "ADMIN_AWS_KEYS")


# --------------------------------------------------------------------------------------------------
# ADMIN_AWS_KEYS and ADMIN_AWS_KEYS_FILE


def settings(**values: Any) -> Settings:
    return Settings.from_mapping({"catalog_uri": "c.csv", "recommendations_uri": "r.json", **values})


def test_keys_come_from_the_setting_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "aws-keys"
    path.write_text(f"# rotated monthly\n{OTHER_ID}:{OTHER_SECRET}\n\n", encoding="utf-8")
    parsed = settings(admin_aws_keys=f" {KEY_ID}:{SECRET} ", admin_aws_keys_file=str(path))
    assert parsed.admin_aws_keys == {KEY_ID: SECRET, OTHER_ID: OTHER_SECRET}
    assert parsed.admin_api_on
    assert SECRET not in repr(parsed) and OTHER_SECRET not in repr(parsed)
    assert not settings().admin_api_on


@pytest.mark.parametrize(("value", "words"), [
    ("no-colon-here-0123456789", "entry 1 is not ACCESS_KEY_ID:SECRET"),
    (f":{SECRET}", "entry 1 is not ACCESS_KEY_ID:SECRET"),
    (f"{KEY_ID}:{SECRET},AKIA/SLASH:{SECRET}", "entry 2 is not ACCESS_KEY_ID:SECRET"),
    (f"{KEY_ID}:short-secret", "at least 16"),
    (f"{KEY_ID}:{SECRET}\u00e9", "printable ASCII"),
    (f"{KEY_ID}:{SECRET},{KEY_ID}:{OTHER_SECRET}", "entry 2 repeats"),
])
def test_malformed_aws_keys_are_refused_naming_the_variable(value: str, words: str) -> None:
    with pytest.raises(ConfigError, match=f"^ADMIN_AWS_KEYS: .*{words}") as refused:
        settings(admin_aws_keys=value)
    assert SECRET not in str(refused.value) and OTHER_SECRET not in str(refused.value)


def test_an_unreadable_keys_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ADMIN_AWS_KEYS_FILE: cannot read"):
        settings(admin_aws_keys_file=str(tmp_path / "missing"))
    bad = tmp_path / "bad"
    bad.write_text(f"{KEY_ID}:{SECRET}\n{KEY_ID}:{OTHER_SECRET}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="ADMIN_AWS_KEYS_FILE: entry 2 repeats"):
        settings(admin_aws_keys_file=str(bad))
